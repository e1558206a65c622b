"""Which field of the client's own request a translated content part came from.

The Anthropic, Ollama and Responses routes turn the images they are sent into OpenAI
image parts before the gateway checks them (images.MediaGate). Such a part carries the
client's field under CLIENT_FIELD, so that a refusal names the field the client sent
(`messages[0].content[1].source.data`, `images[0]`, `input[0].content[1].image_url`), not
the OpenAI part's. A checked image is a new part: the key is never sent on to a model
server (nor stored with a Responses request's items).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CLIENT_FIELD = "mm_client_field"


def client_field(part: Any, field: str) -> str:
    """The client's field of `part` when a translator named it, else `field`."""
    named = part.get(CLIENT_FIELD) if isinstance(part, Mapping) else None
    return named if isinstance(named, str) else field
