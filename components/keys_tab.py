"""The API keys tab: keys for the OpenAI/Anthropic endpoint, and how to use them.

A new key's secret is shown once, right after it is created (only a hash is
stored); every later view shows its first characters. Everyone manages their own
keys; admins can also list and revoke everyone's. Every handler resolves the
signed-in user on the server and the key service checks the rights again.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import gradio as gr

from components.session import TabLoader, handler
from manager.accounts.api_keys import ApiKey
from manager.accounts.auth import User
from manager.accounts.permissions import Action, allowed
from manager.services import Services

log = logging.getLogger(__name__)

COLUMNS = ["ID", "Name", "Key", "Owner", "Created", "Last used", "Status"]
EXAMPLE_MODEL = "<profile name>"


def key_rows(keys: list[ApiKey]) -> list[list[object]]:
    return [
        [k.id, k.name, f"{k.hint}…", k.owner_email, k.created_at, k.last_used_at or "never",
         "active" if k.active else f"revoked {k.revoked_at}"]
        for k in keys
    ]


def key_choices(keys: list[ApiKey], *, with_owner: bool) -> list[tuple[str, int]]:
    return [(f"{k.name} ({k.hint}…)" + (f" of {k.owner_email}" if with_owner else ""), k.id)
            for k in keys if k.active]


def base_url(request: gr.Request | None, fallback: str) -> str:
    """The address this browser used to reach the dashboard (what other machines use too)."""
    headers = getattr(request, "headers", None) or {}
    host = headers.get("x-forwarded-host") or headers.get("host")
    if not host:
        return fallback
    scheme = headers.get("x-forwarded-proto") or "http"
    return f"{scheme}://{host}"


def snippets_markdown(base: str, model: str = EXAMPLE_MODEL) -> str:
    """Copy-paste examples for the official SDKs and curl."""
    name = json.dumps(model)
    return f"""
**OpenAI SDK** (`pip install openai`): the base URL ends in `/v1`.
```python
from openai import OpenAI

client = OpenAI(base_url="{base}/v1", api_key="mlxm-...")
reply = client.chat.completions.create(
    model={name},
    messages=[{{"role": "user", "content": "Hello!"}}],
)
print(reply.choices[0].message.content)
```

**Anthropic SDK** (`pip install anthropic`): the base URL is the dashboard's address.
```python
from anthropic import Anthropic

client = Anthropic(base_url="{base}", api_key="mlxm-...")
message = client.messages.create(
    model={name},
    max_tokens=512,
    messages=[{{"role": "user", "content": "Hello!"}}],
)
print(message.content[-1].text)
```

**Environment variables** the SDKs read: `OPENAI_BASE_URL={base}/v1`,
`OPENAI_API_KEY`, `ANTHROPIC_BASE_URL={base}`, `ANTHROPIC_API_KEY`.

**curl**
```bash
curl {base}/v1/chat/completions -H "Authorization: Bearer $MLXM_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": {name}, "messages": [{{"role": "user", "content": "Hello!"}}]}}'
```

`model` is a profile name (`GET /v1/models` lists them); a stopped profile is started
on first use. Streaming, tools, images and thinking work as with the hosted APIs.
"""


def build(services: Services) -> TabLoader:
    keys = services.api_keys
    settings = services.settings
    fallback = f"http://{settings.host}:{settings.port}"
    gr.Markdown("## API keys\nOne address for every profile: point any OpenAI or Anthropic "
                "client at it with one of your keys.")
    base = gr.Textbox(label="Base URL (OpenAI clients add /v1)", interactive=False,
                      buttons=["copy"], elem_id="keys-base-url")
    with gr.Row(equal_height=True):
        name = gr.Textbox(label="Name of a new key", placeholder="laptop, scripts, ...",
                          scale=3, max_length=64, elem_id="keys-name")
        create = gr.Button("Create key", variant="primary", scale=1, elem_id="keys-create")
    secret = gr.Textbox(label="Your new key: copy it now, it will not be shown again",
                        interactive=False, buttons=["copy"], visible=False,
                        elem_id="keys-secret")
    with gr.Row(equal_height=True):
        everyone = gr.Checkbox(label="Show everyone's keys", value=False, visible=False,
                               elem_id="keys-everyone")
        refresh = gr.Button("Refresh list", size="sm", elem_id="keys-refresh")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="keys-table")
    with gr.Row(equal_height=True):
        target = gr.Dropdown(label="Key to revoke", choices=[], scale=3,
                             allow_custom_value=True, elem_id="keys-target")
        revoke = gr.Button("Revoke", variant="stop", scale=1, elem_id="keys-revoke")
    result = gr.Markdown(elem_id="keys-result")
    with gr.Accordion("How to use a key", open=True):
        snippets = gr.Markdown(snippets_markdown(fallback), elem_id="keys-snippets")

    def listing(actor: User, show_all: bool) -> tuple[list[list[object]], Any]:
        # The service refuses everyone=True to non-admins; the checkbox is only a view.
        found = keys.list_for(actor, everyone=bool(show_all))
        return key_rows(found), gr.Dropdown(choices=key_choices(found, with_owner=show_all),
                                            value=None)

    def example_model() -> str:
        profiles = services.profiles.list()
        return profiles[0].name if profiles else EXAMPLE_MODEL

    @handler(services, "keys tab load")
    def load(actor: User, request: gr.Request) -> tuple:
        url = base_url(request, fallback)
        rows, dropdown = listing(actor, False)
        return (url, rows, dropdown, gr.Checkbox(visible=allowed(actor, Action.VIEW_ALL), value=False),
                snippets_markdown(url, example_model()), gr.Textbox(value="", visible=False))

    @handler(services, "key list")
    def on_list(actor: User, show_all: bool) -> tuple:
        rows, dropdown = listing(actor, show_all)
        return rows, dropdown, gr.Textbox(value="", visible=False)

    @handler(services, "key creation")
    def on_create(actor: User, label: str, show_all: bool) -> tuple:
        new = keys.create(actor, label or "")
        rows, dropdown = listing(actor, show_all)
        message = (f"Key **{new.key.name}** created. Copy it from the box above now: only "
                   "its first characters are kept in view after this.")
        return gr.Textbox(value=new.secret, visible=True), rows, dropdown, message, ""

    @handler(services, "key revocation")
    def on_revoke(actor: User, key_id: int | str | None, show_all: bool) -> tuple:
        if key_id is None or not str(key_id).strip().isdigit():
            raise gr.Error("Pick a key to revoke first.")
        revoked = keys.revoke(actor, int(str(key_id).strip()))
        rows, dropdown = listing(actor, show_all)
        message = (f"Key **{revoked.name}** ({revoked.hint}…) of {revoked.owner_email} is "
                   "revoked: requests with it are refused from now on.")
        return rows, dropdown, message, gr.Textbox(value="", visible=False)

    create.click(on_create, [name, everyone], [secret, table, target, result, name],
                 api_name="keys_create")
    revoke.click(on_revoke, [target, everyone], [table, target, result, secret],
                 api_name="keys_revoke")
    refresh.click(on_list, everyone, [table, target, secret], api_name="keys_list")
    everyone.change(on_list, everyone, [table, target, secret], show_progress="hidden")
    return TabLoader(load, [base, table, target, everyone, snippets, secret])
