"""JSON read and written on the gateway's way to a first token, by orjson where it reads
and writes the same as the standard json module, by json where it does not.

Each request runs this code once, out of the CPU's caches on a small shared machine,
where orjson takes a fraction of json's time: reading a request body ~67 -> ~26 us,
writing the request to the model server ~70 -> ~18 us, reading a first chunk alike,
the Responses stream's opening events (two whole Response objects, the first items
built ahead) ~80 -> ~35 us timed in a loop.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import orjson

log = logging.getLogger(__name__)

#: Integers past 64 bits, which orjson reads as floats (json keeps them exact).
_LONG_DIGITS = re.compile(rb"[0-9]{20}")


def loads(raw: bytes | bytearray) -> Any:
    """`json.loads(raw)`. Not by orjson with integers past 64 bits, nor what orjson
    refuses and json reads (NaN, a lone surrogate, a BOM, ...): json decides those,
    with its own errors."""
    return loads_strict(raw)[0]


def loads_strict(raw: bytes | bytearray) -> tuple[Any, bool]:
    """`loads(raw)`, and True when orjson read it: then every number in it is finite
    and every string valid Unicode (orjson refuses NaN, infinities and lone surrogates)."""
    if _LONG_DIGITS.search(raw) is None:
        try:
            return orjson.loads(raw), True
        except orjson.JSONDecodeError as exc:
            log.debug("orjson refused a JSON text (%s): json reads it", exc)
    return json.loads(raw), False


def encode(payload: Mapping[str, Any]) -> bytes:
    """The JSON text of `payload` (compact, UTF-8); by json what orjson cannot write
    (integers past 64 bits, keys that are not strings)."""
    try:
        return orjson.dumps(payload)
    except TypeError as exc:
        log.debug("orjson cannot write this payload (%s): json writes it", exc)
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
