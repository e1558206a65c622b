"""Media in gateway requests reach model servers only as data the gateway checked.

mlx_vlm fetches http(s) image URLs and reads local paths it is given (RECIPES 6), so
a request could make it read files on this machine or reach services on its network.
Here every image becomes a `data:` URL the gateway decoded and recognised itself:

- `data:` URLs: strict base64, a known image format, at most `max_bytes`.
- `http(s)` URLs: only when an admin turned remote images on; the host is resolved
  and every address must be public (no loopback, private, link-local...), the
  connection goes to the checked address, each redirect is checked the same way, and
  the body is read with a size cap and a deadline. The image is then sent as data.
- Local paths, `file://` and any other scheme: never.

Audio and video parts are accepted only as inline base64 data for the same reason.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

from manager.api.client_fields import client_field
from manager.api.schema import invalid
from manager.net import tls_context

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 10.0
MAX_REDIRECTS = 3
_CHUNK = 64 * 1024
_VIDEO_TYPES = ("video_url", "input_video", "video")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Why an address may not be fetched from, or None when it may.
AddressCheck = Callable[[IPAddress], str | None]


def _text(part: Any, text_only: str | None, field: str) -> Any:
    """`part`, unless it is not text for a server that reads text only (MediaGate)."""
    kind = part.get("type") if isinstance(part, Mapping) else None
    if text_only is not None and kind != "text":
        raise invalid(field, f"{text_only} runs a text-only model (mlx_lm), which reads text "
                             f"parts only, not {str(kind)[:40]!r}: pick a vision profile "
                             "(mlx_vlm) for images, audio or video")
    return part


def image_type(data: bytes) -> str | None:
    """The MIME type of an image by its first bytes, None if not an image we know."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why the gateway will not connect to `ip`; None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "not a public address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


def _decode_base64(payload: str, field: str, max_bytes: int) -> bytes:
    # 4 characters carry 3 bytes: refuse before decoding what would be too big.
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise _too_big(field, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, "is not valid base64") from None
    if len(data) > max_bytes:
        raise _too_big(field, max_bytes)
    return data


def _too_big(field: str, max_bytes: int) -> Exception:
    return invalid(field, f"is larger than the {max_bytes // (1024 * 1024)} MB this "
                   "gateway accepts for one image")


def _data_url_payload(url: str, field: str, kind: str) -> tuple[str, str]:
    """(media type, base64 payload) of a `data:<type>;base64,<payload>` URL."""
    header, comma, payload = url.partition(",")
    media = header[5:].split(";")[0].strip().lower()
    if not comma or ";base64" not in header.lower():
        raise invalid(field, f"must be a base64 data: URL (data:{kind}/...;base64,...)")
    return media, payload.strip()


class MediaGate:
    """Turns the media parts of an OpenAI chat request into checked inline data."""

    def __init__(self, *, max_bytes: int, allow_remote: bool,
                 timeout_s: float = FETCH_TIMEOUT_S,
                 refusal: AddressCheck = address_refusal) -> None:
        self._max_bytes = max_bytes
        self._allow_remote = allow_remote
        self._timeout_s = timeout_s
        self._refusal = refusal

    @property
    def fetches_remote(self) -> bool:
        """May checking a request fetch an image over the network (blocking)?"""
        return self._allow_remote

    def messages(self, messages: list[Any], *, text_only: str | None = None) -> list[Any]:
        """The messages with every media part checked (and remote images fetched).
        `text_only`: the name of a server whose model reads text only: a part that is not
        text is a 400 (its mlx_lm would refuse it with a 404, "Only 'text' content")."""
        out: list[Any] = []
        for i, message in enumerate(messages):
            content = message.get("content") if isinstance(message, Mapping) else None
            if not isinstance(content, list):
                out.append(message)
                continue
            parts = []
            for j, part in enumerate(content):
                field = f"messages[{i}].content[{j}]"
                parts.append(self.part(_text(part, text_only, client_field(part, field)), field))
            out.append({**message, "content": parts})
        return out

    def part(self, part: Any, field: str) -> Any:
        if not isinstance(part, Mapping):
            return part
        kind = part.get("type")
        if kind in ("image_url", "input_image"):
            value = part.get("image_url")
            url = value.get("url") if isinstance(value, Mapping) else value
            named = client_field(part, f"{field}.image_url")
            if not isinstance(url, str):
                raise invalid(named, "must be an object with a url string")
            image: dict[str, Any] = {"url": self.image(url.strip(), named)}
            if isinstance(value, Mapping) and isinstance(value.get("detail"), str):
                image["detail"] = value["detail"]
            return {"type": "image_url", "image_url": image}
        if kind == "input_audio":
            audio = part.get("input_audio")
            where = f"{field}.input_audio.data"
            if not isinstance(audio, Mapping):
                raise invalid(where, "must be base64 audio data")
            data = audio.get("data")
            if not isinstance(data, str):
                raise invalid(where, "must be base64 audio data")
            media = "audio/wav"
            if data.startswith("data:"):
                declared, data = _data_url_payload(data, where, "audio")
                media = declared if declared.startswith("audio/") else media
            decoded = _decode_base64(data.strip(), where, self._max_bytes)
            # Always as a data: URL: mlx_vlm reads plain base64 that looks like a path
            # ("/tmp/abcd" is valid base64) as a file name.
            return {**part, "input_audio": {
                **audio, "data": f"data:{media};base64,{base64.b64encode(decoded).decode()}"}}
        if kind in _VIDEO_TYPES:
            value = part.get("video") or part.get("video_url")
            url = value.get("url") if isinstance(value, Mapping) else value
            if not isinstance(url, str) or not url.startswith("data:"):
                raise invalid(field, "videos are accepted only inline, as a base64 data: "
                              "URL; this gateway never reads paths or fetches video URLs")
            _, payload = _data_url_payload(url, field, "video")
            _decode_base64(payload, field, self._max_bytes)
            return part
        return part

    def image(self, url: str, field: str) -> str:
        """A `data:` URL of a checked image, from a data URL or (if allowed) a fetch."""
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            _, payload = _data_url_payload(url, field, "image")
            data = _decode_base64(payload, field, self._max_bytes)
        elif scheme in ("http", "https"):
            if not self._allow_remote:
                raise invalid(field, "image URLs are not fetched on this dashboard (an admin "
                              "can turn remote images on); send the image inline as a "
                              "base64 data: URL")
            data = self.fetch(url, field)
        else:
            raise invalid(field, "local files and file:// URLs are never read; send the "
                          "image inline as a base64 data: URL")
        media = image_type(data)
        if media is None:
            raise invalid(field, "is not an image in a known format (PNG, JPEG, GIF, WebP, "
                          "BMP or TIFF)")
        return f"data:{media};base64,{base64.b64encode(data).decode()}"

    # -- remote images ----------------------------------------------------------------

    def fetch(self, url: str, field: str) -> bytes:
        """The body of `url`, following at most MAX_REDIRECTS redirects, each checked."""
        deadline = time.monotonic() + self._timeout_s
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                raise invalid(field, f"redirects to {url[:200]!r}, which is not an http(s) URL")
            if parts.username or parts.password:
                raise invalid(field, "image URLs with credentials are not fetched")
            try:
                port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            except ValueError:
                raise invalid(field, "has an invalid port") from None
            address = self._address(parts.hostname, port, field)
            status, location, data = self._get(parts, address, port, deadline, field)
            if status in (301, 302, 303, 307, 308):
                if not location:
                    raise invalid(field, f"the image server answered {status} without a "
                                  "Location")
                url = urljoin(url, location)
                continue
            if status != 200:
                raise invalid(field, f"the image server answered HTTP {status}")
            return data
        raise invalid(field, f"more than {MAX_REDIRECTS} redirects")

    def _address(self, host: str, port: int, field: str) -> str:
        """The address to connect to: every address the host resolves to must pass."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            log.info("image host %r did not resolve: %s", host, exc)
            raise invalid(field, f"the host {host!r} could not be resolved") from None
        addresses = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            reason = self._refusal(ip)
            if reason is not None:
                log.warning("refused an image URL: %s resolves to %s (%s)", host, ip, reason)
                raise invalid(field, f"the host {host!r} resolves to {ip}, {reason}; the "
                              "gateway fetches images only from public addresses")
            addresses.append(str(ip))
        if not addresses:
            raise invalid(field, f"the host {host!r} has no address")
        return addresses[0]

    def _get(self, parts: Any, address: str, port: int, deadline: float, field: str
             ) -> tuple[int, str | None, bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise invalid(field, f"fetching the image took over {self._timeout_s:g} s")
        conn = _pinned_connection(parts.scheme.lower(), parts.hostname, port, address,
                                  remaining)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target, headers={"Accept": "image/*",
                                                 "User-Agent": "mlx-manager-gateway"})
            response = conn.getresponse()
            if response.status != 200:
                return response.status, response.getheader("Location"), b""
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > self._max_bytes:
                raise _too_big(field, self._max_bytes)
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise invalid(field, f"fetching the image took over {self._timeout_s:g} s")
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > self._max_bytes:
                    raise _too_big(field, self._max_bytes)
                chunks.append(chunk)
            return 200, None, b"".join(chunks)
        except (OSError, http.client.HTTPException) as exc:
            log.info("could not fetch image %s://%s: %s", parts.scheme, parts.hostname, exc)
            raise invalid(field, f"the image could not be fetched ({exc})") from None
        finally:
            conn.close()


def _pinned_connection(scheme: str, host: str, port: int, address: str, timeout: float
                       ) -> http.client.HTTPConnection:
    """A connection to `address` (already checked) that still names `host` in its
    Host header and, for https, in SNI and certificate checks: a second DNS lookup
    can never send it elsewhere."""
    if scheme == "https":
        return _PinnedHTTPS(host, port, address, timeout)
    return _PinnedHTTP(host, port, address, timeout)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        # The process's one context (certifi's CAs, as every other client): the
        # python.org build on macOS has no CA store of its own until a script is run.
        self._tls = tls_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
