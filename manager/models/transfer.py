"""One file's bytes from the hub, appended to its partial file as they arrive.

huggingface_hub's `http_get` reads `DOWNLOAD_CHUNK_SIZE` (10 MiB) before it reports or
writes anything, and a stop raised from its progress hook loses that read: a small
file jumped from 0 to 100 %, and Pause threw away up to 10 MiB. Here every network
read (at most ~64 KB) is written first, then reported through `on_bytes`, which may
raise to stop the transfer: nothing received is lost, and a resume asks (`Range`) for
exactly the bytes not on disk.

Transient network errors are retried from the bytes on disk, `RETRIES` times without
progress (as `http_get` does); hub errors go through huggingface_hub's own
`hf_raise_for_status`, so gated or missing repos raise its usual exceptions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import BinaryIO

import httpx2
from huggingface_hub import constants
from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

log = logging.getLogger(__name__)

RETRIES = 5
RETRY_WAIT_S = 1.0
_TRANSIENT = (httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError)


def fetch_rest(url: str, fh: BinaryIO, *, size: int, headers: Mapping[str, str],
               on_bytes: Callable[[int], None], retries: int = RETRIES,
               retry_wait_s: float = RETRY_WAIT_S) -> None:
    """Append the rest of the file at `url` to `fh` (opened "ab": its size is what is
    already there). `on_bytes(n)` is called after each write (n < 0: bytes dropped
    because the server ignored the Range); whatever it raises stops the transfer."""
    left = retries
    while fh.tell() < size:
        before = fh.tell()
        try:
            _get_rest(url, fh, before, headers, on_bytes)
        except _TRANSIENT as exc:
            if fh.tell() > before:
                left = retries  # it moved: a fresh set of retries, as http_get does
            if left <= 0:
                log.warning("download of %s failed after %s retries: %s", url, retries, exc)
                raise
            left -= 1
            log.info("connection to %s lost at %s bytes (%s); retrying", url, fh.tell(), exc)
            time.sleep(retry_wait_s)
            on_bytes(0)  # a pause or cancel asked for meanwhile stops here
            continue
        break
    if fh.tell() != size:
        raise OSError(f"Consistency check failed: the file should have {size} bytes but has "
                      f"{fh.tell()} ({url}).")


def _get_rest(url: str, fh: BinaryIO, start: int, headers: Mapping[str, str],
              on_bytes: Callable[[int], None]) -> None:
    request_headers = dict(headers)
    if start:
        request_headers["Range"] = f"bytes={start}-"
    with http_stream_backoff("GET", url, headers=request_headers,
                             timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                             retry_on_exceptions=(), retry_on_status_codes=(408, 429)
                             ) as response:
        hf_raise_for_status(response)
        if start and response.status_code == 200:
            # The server ignored the Range and sends the whole file: start it again.
            log.warning("%s ignored the Range request; fetching the whole file", url)
            fh.seek(0)
            fh.truncate()
            on_bytes(-start)
        for chunk in response.iter_bytes():
            if chunk:
                fh.write(chunk)
                on_bytes(len(chunk))
