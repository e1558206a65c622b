"""The Profiles tab: create, edit, duplicate and delete server profiles.

Any active user may create and duplicate profiles; editing and deleting is for admins
and the profile's creator (checked in manager.servers.profiles). A rejected value is shown
on its own field (the field's info line turns into the message) and in the status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from components import preflight_panel
from components.session import TabLoader, handler, warn
from manager.accounts.auth import User
from manager.accounts.permissions import Action, allowed
from manager.errors import ValidationError
from manager.servers.distributed.spec import (
    DEFAULT_BASE_PORT,
    DistributedSpec,
    LinkBackend,
    Parallel,
    parse_hosts,
)
from manager.servers.profiles import SERVER_MAX_TOKENS, Backend, Profile, ProfileSpec
from manager.services import Services

log = logging.getLogger(__name__)

NEW = "new"
AUTO = "auto"
THINKING_CHOICES = [("model default", "default"), ("on", "on"), ("off", "off")]
COLUMNS = ["Name", "Model", "Backend", "Address", "Auto-start", "Tool use", "Description"]
LOCAL_ONLY = "This machine only; an administrator can open a server to the LAN."


@dataclass(frozen=True)
class FieldDef:
    key: str  # ProfileSpec field name (ValidationError.field)
    info: str  # the help line, replaced by the error message when it is rejected


FIELDS = (
    FieldDef("name", "Unique; shown in the Servers and Chat tabs."),
    FieldDef("description", "What this profile is for (optional)."),
    FieldDef("model", "A downloaded model (repo id) or a folder path."),
    FieldDef("backend", "auto: mlx_vlm for vision models, mlx_lm for text models."),
    FieldDef("host", "127.0.0.1 = this machine only; 0.0.0.0 = the LAN."),
    FieldDef("port", "The next free port is suggested."),
    FieldDef("context_length", "Tokens; empty = the model's own. Chat trims history to it."),
    FieldDef("max_tokens", "Longest answer; empty = the server's default ("
             + ", ".join(f"{n:,} for {b.value}" for b, n in SERVER_MAX_TOKENS.items()) + ")."),
    FieldDef("temperature", "0 to 2; empty = the server's default."),
    FieldDef("top_p", "0 to 1; empty = the server's default."),
    FieldDef("thinking", "Only for models with a thinking mode."),
    FieldDef("system_prompt", "Added to every chat and API request without a system message."),
    FieldDef("auto_start", "Start this server whenever the dashboard starts."),
    FieldDef("auto_restart", "Restart after a crash; gives up after 3 quick failures."),
    FieldDef("idle_timeout_minutes", "Stop the server after this many idle minutes; empty = never."),
    FieldDef("distributed", "Empty = this machine alone. One host per line, rank 0 (this "
             "machine) first: `ssh_target address [model_path] [python=PATH]`, e.g. "
             "`local 192.168.1.10` then `mac2 192.168.1.11 /Users/me/models/qwen`."),
    FieldDef("distributed_backend", "ring: TCP over any network; jaccl: RDMA over "
             "Thunderbolt 5 (macOS 26.2+, add rdma=... to each line)."),
    FieldDef("distributed_parallel", "tensor: every host holds a slice of each layer "
             "(mlx_lm's default); pipeline: each host holds some layers."),
    FieldDef("distributed_base_port", f"Rank i listens on base port + i (empty = "
             f"{DEFAULT_BASE_PORT})."),
)
FIELD_KEYS = tuple(f.key for f in FIELDS)


def _num(value: Any, kind: type) -> Any:
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{value!r} is not a number.") from None


def spec_from_form(values: dict[str, Any]) -> ProfileSpec:
    """Form values (strings, floats, None) -> a ProfileSpec; bad numbers name their field."""
    def number(key: str, kind: type) -> Any:
        try:
            return _num(values.get(key), kind)
        except ValidationError as exc:
            raise ValidationError(exc.message, key) from None

    backend = values.get("backend") or AUTO
    thinking = values.get("thinking") or "default"
    return ProfileSpec(
        name=values.get("name") or "", model=values.get("model") or "",
        description=values.get("description") or "",
        backend=None if backend == AUTO else Backend(backend),
        host=values.get("host") or "127.0.0.1", port=number("port", int),
        context_length=number("context_length", int), max_tokens=number("max_tokens", int),
        temperature=number("temperature", float), top_p=number("top_p", float),
        thinking=None if thinking == "default" else thinking == "on",
        system_prompt=values.get("system_prompt") or "",
        auto_start=bool(values.get("auto_start")), auto_restart=bool(values.get("auto_restart")),
        idle_timeout_minutes=number("idle_timeout_minutes", int),
        distributed=distributed_from_form(values),
    )


def distributed_from_form(values: dict[str, Any]) -> DistributedSpec | None:
    """The Distributed section: None when the hosts box is empty."""
    text = values.get("distributed") or ""
    if not text.strip():
        return None
    return DistributedSpec.checked(
        parse_hosts(text), values.get("distributed_backend") or LinkBackend.RING.value,
        values.get("distributed_parallel") or Parallel.TENSOR.value,
        values.get("distributed_base_port"))


def _distributed_values(profile: Profile | None) -> list[Any]:
    dist = profile.distributed if profile is not None else None
    if dist is None:
        return ["", LinkBackend.RING.value, Parallel.TENSOR.value, None]
    return [dist.hosts_text(), dist.backend.value, dist.parallel.value, dist.base_port]


def form_values(profile: Profile | None, suggested_port: int | None = None) -> list[Any]:
    """Field values in FIELDS order for a profile, or a blank form."""
    if profile is None:
        return ["", "", None, AUTO, "127.0.0.1", suggested_port, None, None, None, None,
                "default", "", False, False, None, *_distributed_values(None)]
    thinking = "default" if profile.thinking is None else ("on" if profile.thinking else "off")
    return [profile.name, profile.description, profile.model, profile.backend.value,
            profile.host, profile.port, profile.context_length, profile.max_tokens,
            profile.temperature, profile.top_p, thinking, profile.system_prompt,
            profile.auto_start, profile.auto_restart, profile.idle_timeout_minutes,
            *_distributed_values(profile)]


def profile_rows(profiles: list[Profile],
                 checks: dict[int, dict[str, Any]] | None = None) -> list[list[Any]]:
    """One row per profile; "Tool use" is the measured score of its model (Tool use tab)
    with the date, or "not checked"."""
    checks = checks or {}

    def tool_use(p: Profile) -> str:
        check = checks.get(p.id)
        return (f"{check['label']} ({check['checked_at'][:10]})" if check
                else "not checked")

    def address(p: Profile) -> str:
        dist = p.distributed
        return f"{p.host}:{p.port}" + (f" ({dist.size} hosts, {dist.backend.value})"
                                       if dist else "")

    return [[p.name, p.model, p.backend.value, address(p),
             "yes" if p.auto_start else "no", tool_use(p),
             p.description.split("\n", 1)[0][:80]] for p in profiles]


def first_step_hint(existing: list[Profile], downloaded: list[str]) -> str:
    """What the tab says when there is no profile yet ("" once there is one)."""
    if existing:
        return ""
    if not downloaded:
        return ("No profiles yet, and no downloaded models to make one from: download a "
                "model on the Models tab first, or press “Try a tool-use model” above.")
    return ("No profiles yet. A profile says which model a server runs and how: pick a "
            "downloaded model under **Model**, give it a name and press **Save**.")


def pick_choices(profiles: list[Profile]) -> list[tuple[str, str]]:
    return [("➕ New profile", NEW)] + [(p.name, str(p.id)) for p in profiles]


def build(services: Services) -> TabLoader:
    profiles = services.profiles
    gr.Markdown("## Profiles")
    with gr.Row(equal_height=True):
        # Choices arrive per page load; the server re-checks every id anyway.
        pick = gr.Dropdown(label="Profile", choices=[("➕ New profile", NEW)], value=NEW,
                           filterable=True, scale=4, elem_id="profile-pick",
                           allow_custom_value=True)
        new_button = gr.Button("New profile", scale=0, elem_id="profile-new")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="profiles-table", wrap=True)
    info = {f.key: f.info for f in FIELDS}
    with gr.Group():
        with gr.Row():
            name = gr.Textbox(label="Name", info=info["name"], elem_id="profile-name")
            model = gr.Dropdown(label="Model", choices=[], allow_custom_value=True,
                                filterable=True, info=info["model"], elem_id="profile-model")
        description = gr.Textbox(label="Description", lines=3, info=info["description"],
                                 elem_id="profile-description")
        with gr.Row():
            backend = gr.Radio([AUTO, Backend.MLX_LM.value, Backend.MLX_VLM.value], value=AUTO,
                               label="Backend", info=info["backend"], elem_id="profile-backend")
            host = gr.Textbox(label="Host", value="127.0.0.1", info=info["host"],
                              elem_id="profile-host")
            port = gr.Number(label="Port", precision=0, info=info["port"], elem_id="profile-port")
        with gr.Row():
            context = gr.Number(label="Context length", precision=0, info=info["context_length"],
                                elem_id="profile-context")
            max_tokens = gr.Number(label="Max tokens", precision=0, info=info["max_tokens"],
                                   elem_id="profile-max-tokens")
            temperature = gr.Number(label="Temperature", info=info["temperature"],
                                    elem_id="profile-temperature")
            top_p = gr.Number(label="Top-p", info=info["top_p"], elem_id="profile-top-p")
        thinking = gr.Radio(THINKING_CHOICES, value="default", label="Thinking",
                            info=info["thinking"], elem_id="profile-thinking")
        system_prompt = gr.Textbox(label="Default system prompt", lines=3,
                                   info=info["system_prompt"], elem_id="profile-system-prompt")
        with gr.Row():
            auto_start = gr.Checkbox(label="Auto-start", info=info["auto_start"],
                                     elem_id="profile-auto-start")
            auto_restart = gr.Checkbox(label="Auto-restart", info=info["auto_restart"],
                                       elem_id="profile-auto-restart")
            idle = gr.Number(label="Idle timeout (minutes)", precision=0,
                             info=info["idle_timeout_minutes"], elem_id="profile-idle")
        with gr.Accordion("Distributed (several machines)", open=False,
                          elem_id="profile-distributed-section"):
            dist_hosts = gr.Textbox(label="Hosts", lines=3, info=info["distributed"],
                                    placeholder="local 192.168.1.10\nmac2 192.168.1.11",
                                    elem_id="profile-distributed-hosts")
            with gr.Row():
                dist_backend = gr.Radio([b.value for b in LinkBackend],
                                        value=LinkBackend.RING.value, label="Link backend",
                                        info=info["distributed_backend"],
                                        elem_id="profile-distributed-backend")
                dist_parallel = gr.Radio([p.value for p in Parallel],
                                         value=Parallel.TENSOR.value, label="Parallel",
                                         info=info["distributed_parallel"],
                                         elem_id="profile-distributed-parallel")
                dist_port = gr.Number(label="Base port", precision=0,
                                      info=info["distributed_base_port"],
                                      elem_id="profile-distributed-port")
    fields = [name, description, model, backend, host, port, context, max_tokens, temperature,
              top_p, thinking, system_prompt, auto_start, auto_restart, idle, dist_hosts,
              dist_backend, dist_parallel, dist_port]
    with gr.Row():
        save = gr.Button("Save", variant="primary", elem_id="profile-save")
        duplicate = gr.Button("Duplicate", elem_id="profile-duplicate")
        delete = gr.Button("Delete…", variant="stop", elem_id="profile-delete")
    with gr.Row(visible=False) as confirm_row:
        gr.Markdown("**Delete this profile for good?**")
        confirm = gr.Button("Yes, delete", variant="stop", elem_id="profile-confirm-delete")
        keep = gr.Button("Keep it", elem_id="profile-keep")
    status = gr.Markdown(elem_id="profile-status")
    preflight_panel.build(services, pick)

    def field_infos(error: ValidationError | None = None) -> list[Any]:
        """Each field's help line, the rejected one replaced by the message."""
        updates = []
        for definition, component in zip(FIELDS, fields, strict=True):
            if error is not None and error.field == definition.key:
                updates.append(type(component)(info=f"⚠ {error.message}",
                                               elem_classes=["mm-field-error"]))
            else:
                updates.append(type(component)(info=definition.info, elem_classes=[]))
        return updates

    def listing(selected: str) -> tuple:
        rows = profiles.list()
        return (gr.Dropdown(choices=pick_choices(rows), value=selected),
                profile_rows(rows, services.tool_check.metadata(rows)))

    def show(selected: str | None, user: User, message: str = "") -> tuple:
        """Pick + table + status + every field, for the selected profile (or a new one)."""
        selected = selected or NEW
        # The picker takes typed text too: a name works, anything else is NotFound.
        profile = None if selected == NEW else profiles.find(str(selected))
        selected = NEW if profile is None else str(profile.id)
        values = form_values(profile, profiles.suggest_port() if profile is None else None)
        if profile is not None and not allowed(user, Action.PROFILE_EDIT, profile.owners) \
                and not message:
            message = ("You can use this profile but not change it; **Duplicate** makes "
                       "your own copy.")
        updates: list[gr.components.Component] = []
        for definition, component, value in zip(FIELDS, fields, values, strict=True):
            if component is model:
                # Downloaded models, read when the form is shown (a folder path also works).
                updates.append(gr.Dropdown(value=value, choices=profiles.cached_repo_ids(),
                                           info=definition.info, elem_classes=[]))
            elif component is host and not allowed(user, Action.BIND_NETWORK):
                updates.append(gr.Textbox(value=value, interactive=False, info=LOCAL_ONLY,
                                          elem_classes=[]))
            else:
                updates.append(type(component)(value=value, info=definition.info,
                                               elem_classes=[]))
        return (*listing(selected), message, *updates)

    @handler(services, "profiles tab load")
    def load(user: User) -> tuple:
        return show(NEW, user, first_step_hint(profiles.list(), profiles.cached_repo_ids()))

    @handler(services, "picking a profile")
    def on_pick(user: User, selected: str | None) -> tuple:
        return show(selected, user)

    @handler(services, "saving a profile")
    def on_save(user: User, selected: str | None, name: str, description: str, model: str,
                backend: str, host: str, port: float | None, context: float | None,
                max_tokens: float | None, temperature: float | None, top_p: float | None,
                thinking: str, system_prompt: str, auto_start: bool, auto_restart: bool,
                idle: float | None, dist_hosts: str, dist_backend: str, dist_parallel: str,
                dist_port: float | None) -> tuple:
        values = (name, description, model, backend, host, port, context, max_tokens,
                  temperature, top_p, thinking, system_prompt, auto_start, auto_restart, idle,
                  dist_hosts, dist_backend, dist_parallel, dist_port)
        try:
            spec = spec_from_form(dict(zip(FIELD_KEYS, values, strict=True)))
            if not selected or selected == NEW:
                profile = profiles.create(user, spec)
                message = f"Created **{profile.name}** on port {profile.port}."
            else:
                profile = profiles.update(user, profiles.find(str(selected)).id, spec)
                message = f"Saved **{profile.name}**."
                snap = services.supervisor.snapshot(profile.id)
                if snap is not None and snap.state.value in ("starting", "ready"):
                    message += " Restart its server to apply the changes."
        except ValidationError as exc:
            # Shown on its field; the form stays as typed.
            warn(exc, f"saving profile field {exc.field} by {user.email}")
            return (gr.skip(), gr.skip(), f"⚠ {exc.message}", *field_infos(exc))
        return show(str(profile.id), user, message)

    @handler(services, "duplicating a profile")
    def on_duplicate(user: User, selected: str | None) -> tuple:
        if not selected or selected == NEW:
            raise gr.Error("Pick a profile to duplicate first.")
        copy = profiles.duplicate(user, profiles.find(str(selected)).id)
        return show(str(copy.id), user, f"Created **{copy.name}**, a copy you can change.")

    @handler(services, "deleting a profile")
    def on_delete(user: User, selected: str | None) -> tuple:
        if not selected or selected == NEW:
            raise gr.Error("Pick a profile to delete first.")
        profile = profiles.find(str(selected))
        profiles.delete(user, profile.id)
        services.supervisor.forget(profile.id)
        return (*show(NEW, user, f"Deleted **{profile.name}**."), gr.Row(visible=False))

    @handler(services, "asking to delete a profile")
    def ask_delete(_user: User, selected: str | None) -> Any:
        if not selected or selected == NEW:
            raise gr.Error("Pick a profile to delete first.")
        return gr.Row(visible=True)

    form_outputs = [pick, table, status, *fields]
    pick.input(on_pick, pick, form_outputs, api_name="profile_pick")
    new_button.click(on_pick, gr.State(NEW), form_outputs)
    save.click(on_save, [pick, *fields], form_outputs, api_name="profile_save")
    duplicate.click(on_duplicate, pick, form_outputs, api_name="profile_duplicate")
    delete.click(ask_delete, pick, confirm_row)
    keep.click(lambda: gr.Row(visible=False), None, confirm_row)
    confirm.click(on_delete, pick, [*form_outputs, confirm_row], api_name="profile_delete")
    return TabLoader(load, form_outputs)
