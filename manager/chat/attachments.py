"""Chat attachments: check images and videos by their content, then turn them into
the message parts the OpenAI-compatible servers accept.

- Images: Pillow identifies the format from the bytes (never the extension), the
  pixel count is checked from the header before decoding, the whole image is then
  decoded (so truncated or damaged files are caught), EXIF rotation is applied and a
  very large image is scaled down; the result is a base64 `image_url` data URL part.
- Videos: OpenCV opens the file and reads duration, fps and frame count, within size
  and length limits. `extract_frames` takes frames evenly spaced over the clip as
  JPEG data URLs (for vision models without native video). `native_video_part` is
  the part mlx_vlm.server reads itself: `{"type": "video_url", "video_url": {"url":
  <local path>}}` - the server opens the path with OpenCV, so it must be a file on
  the server's machine (data URLs are not accepted for video).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from manager.errors import ValidationError
from manager.units import MIB, format_bytes, format_duration

log = logging.getLogger(__name__)


# Pillow format name -> MIME type of the formats a chat may carry.
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp",
                 "GIF": "image/gif", "BMP": "image/bmp"}
# Formats every OpenAI-compatible server decodes; others are re-encoded.
_PASSTHROUGH = {"PNG", "JPEG", "WEBP"}
_JPEG_QUALITY = 90
_EXIF_ORIENTATION = 0x0112
_FRAME_JPEG_QUALITY = 85


@dataclass(frozen=True)
class AttachmentLimits:
    max_image_bytes: int = 20 * MIB
    max_image_pixels: int = 40_000_000  # 40 megapixels, checked before decoding
    image_max_side: int = 2048  # larger images are scaled down to this
    max_video_bytes: int = 200 * MIB
    max_video_seconds: float = 600.0
    max_frames: int = 8
    frame_max_side: int = 768


DEFAULT_LIMITS = AttachmentLimits()


class AttachmentError(ValidationError):
    """An attachment that cannot be sent; the message names the file and the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="attachment")


class NotUploaded(AttachmentError):
    """A file named by a request that did not arrive through this dashboard's upload."""


@dataclass(frozen=True)
class PreparedImage:
    name: str
    mime: str
    width: int
    height: int
    original_width: int
    original_height: int
    encoded_bytes: int
    data_url: str

    @property
    def resized(self) -> bool:
        return (self.width, self.height) != (self.original_width, self.original_height)

    def part(self) -> dict[str, Any]:
        """The OpenAI chat content part."""
        return image_part(self.data_url)


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    name: str
    size_bytes: int
    width: int
    height: int
    fps: float | None
    frame_count: int
    duration_seconds: float | None


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


# -- where attachments may come from ------------------------------------------------


def uploaded_file(path: Path | str, roots: Iterable[Path | str]) -> Path:
    """The real path of `path` if it lies inside one of `roots` (the upload folders) once
    symlinks are resolved; raises NotUploaded otherwise.

    Nothing is opened here, only names are resolved, so a request naming the database
    or a device is refused before anything touches it. URLs are never uploads.
    """
    text = str(path)
    label = PurePath(text).name or "The file"
    if not text or "://" in text or text.startswith("data:") or "\0" in text:
        raise NotUploaded(_not_uploaded(label))
    real = Path(os.path.realpath(text))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real != real_root and real.is_relative_to(real_root):
            return real
    log.warning("refused a file that was not uploaded here: %s (resolves to %s)", text, real)
    raise NotUploaded(_not_uploaded(label))


def _not_uploaded(label: str) -> str:
    return (f"{label} was not uploaded through this dashboard, so it cannot be used. "
            "Attach it again with the upload button or by dropping it on the message box.")


# -- images -------------------------------------------------------------------------


def prepare_image(
    path: Path | str, limits: AttachmentLimits = DEFAULT_LIMITS, *, name: str | None = None
) -> PreparedImage:
    """Validate an image file by content and return it ready to send (maybe scaled down)."""
    path = Path(path)
    label = name or path.name
    _checked_size(path, label, limits.max_image_bytes, "an image")
    try:
        with Image.open(path) as image:
            fmt = image.format or ""
            if fmt not in IMAGE_FORMATS:
                raise AttachmentError(
                    f"{label} is a {fmt or 'kind of'} image that cannot be sent; "
                    "use PNG, JPEG, WebP, GIF or BMP."
                )
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise AttachmentError(
                    f"{label} has too many pixels ({width}×{height}, "
                    f"{width * height / 1e6:.0f} megapixels); the limit is "
                    f"{limits.max_image_pixels / 1e6:.0f} megapixels."
                )
            image.load()  # decode everything now: truncated or damaged data fails here
            rotated = image.getexif().get(_EXIF_ORIENTATION, 1) not in (None, 1)
            oriented = ImageOps.exif_transpose(image) if rotated else image
            scaled = _scaled_down(oriented, limits.image_max_side)
            changed = rotated or scaled is not oriented
            if not changed and fmt in _PASSTHROUGH:
                data, mime = path.read_bytes(), IMAGE_FORMATS[fmt]
            else:
                data, mime = _encode(scaled)
            final_width, final_height = scaled.size
    except UnidentifiedImageError as exc:
        raise AttachmentError(
            f"{label} is not an image that can be read (PNG, JPEG, WebP, GIF or BMP). "
            "Is it really an image?"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise AttachmentError(f"{label} has too many pixels to open safely.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        log.info("image %s could not be decoded: %s", label, exc)
        raise AttachmentError(
            f"{label} is damaged or incomplete and cannot be read as an image."
        ) from exc
    return PreparedImage(
        name=label, mime=mime, width=final_width, height=final_height,
        original_width=width, original_height=height, encoded_bytes=len(data),
        data_url=_data_url(mime, data),
    )


def _scaled_down(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if _has_alpha(image) else "RGB")
    return image.resize(size, Image.Resampling.LANCZOS)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )


def _encode(image: Image.Image) -> tuple[bytes, str]:
    """PNG when transparency must survive, JPEG otherwise (smaller for photos)."""
    buffer = io.BytesIO()
    if _has_alpha(image):
        image.convert("RGBA").save(buffer, format="PNG", optimize=True)
        return buffer.getvalue(), "image/png"
    image.convert("RGB").save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue(), "image/jpeg"


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _checked_size(path: Path, label: str, limit: int, kind: str) -> int:
    if not path.is_file():
        raise AttachmentError(f"{label} could not be found; please attach it again.")
    size = path.stat().st_size
    if size == 0:
        raise AttachmentError(f"{label} is empty.")
    if size > limit:
        raise AttachmentError(
            f"{label} is too large ({format_bytes(size)}); the limit for {kind} is "
            f"{format_bytes(limit)}."
        )
    return size


# -- videos -------------------------------------------------------------------------


def probe_video(
    path: Path | str, limits: AttachmentLimits = DEFAULT_LIMITS, *, name: str | None = None
) -> VideoInfo:
    """Open a video with OpenCV and check it against the limits; raises AttachmentError."""
    path = Path(path)
    label = name or path.name
    size = _checked_size(path, label, limits.max_video_bytes, "a video")
    if _looks_like_image(path):
        # ffmpeg happily opens a still image as a one-frame "video".
        raise AttachmentError(f"{label} is an image, not a video: attach it as an image.")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise AttachmentError(f"{label} is not a video that can be read (is it really a video?).")
        ok, first = capture.read()
        if not ok or first is None:
            raise AttachmentError(f"{label} is damaged or contains no video frames.")
        height, width = first.shape[:2]
        fps_value = capture.get(cv2.CAP_PROP_FPS)
        fps = fps_value if math.isfinite(fps_value) and 0 < fps_value < 1000 else None
        frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        max_frames = int(limits.max_video_seconds * (fps or 60)) + 1
        if frame_count <= 0 or frame_count > 10 * max_frames:
            # The container does not say (or says nonsense): count, but only up to the limit.
            frame_count = _count_frames(capture, max_frames + 1)
    finally:
        capture.release()
    duration = frame_count / fps if fps else None
    too_long = (duration is not None and duration > limits.max_video_seconds) or (
        frame_count > max_frames)
    if too_long:
        shown = format_duration(duration) if duration is not None else f"{frame_count} frames"
        raise AttachmentError(
            f"{label} is too long ({shown}); the limit is "
            f"{format_duration(limits.max_video_seconds)}."
        )
    return VideoInfo(path=path, name=label, size_bytes=size, width=width, height=height,
                     fps=fps, frame_count=frame_count, duration_seconds=duration)


def _looks_like_image(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            return image.format is not None and image.format != "MPO"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        log.debug("%s is not an image (%s): probing it as a video", path.name, type(exc).__name__)
        return False


def _count_frames(capture: cv2.VideoCapture, stop_after: int) -> int:
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    count = 0
    while count < stop_after and capture.grab():
        count += 1
    return count


def frame_indices(frame_count: int, wanted: int) -> list[int]:
    """`wanted` frame numbers evenly spaced over the clip: the middle of equal slices."""
    if frame_count <= 0 or wanted <= 0:
        return []
    wanted = min(wanted, frame_count)
    return [int((2 * i + 1) * frame_count // (2 * wanted)) for i in range(wanted)]


def extract_frames(
    path: Path | str,
    max_frames: int = DEFAULT_LIMITS.max_frames,
    max_side: int = DEFAULT_LIMITS.frame_max_side,
    limits: AttachmentLimits = DEFAULT_LIMITS,
    *,
    name: str | None = None,
) -> list[str]:
    """Up to `max_frames` frames evenly spaced over the clip, each scaled to fit
    `max_side` and encoded as a JPEG data URL. Fewer frames only for shorter clips."""
    if max_frames < 1:
        raise AttachmentError("At least one frame must be taken from a video.")
    info = probe_video(path, limits, name=name)
    capture = cv2.VideoCapture(str(info.path))
    urls: list[str] = []
    try:
        for index in frame_indices(info.frame_count, max_frames):
            frame = _read_frame(capture, index)
            if frame is None:
                log.warning("%s: frame %d of %d could not be read", info.name, index,
                            info.frame_count)
                continue
            urls.append(_data_url("image/jpeg", _jpeg(_fit(frame, max_side))))
    finally:
        capture.release()
    if not urls:
        raise AttachmentError(f"No frames could be read from {info.name}; the file may be damaged.")
    return urls


def frame_parts(urls: list[str]) -> list[dict[str, Any]]:
    """Frames as OpenAI `image_url` parts, in clip order."""
    return [image_part(url) for url in urls]


def native_video_part(
    path: Path | str, limits: AttachmentLimits = DEFAULT_LIMITS, *, name: str | None = None
) -> dict[str, Any]:
    """The part mlx_vlm.server reads for models with native video support.

    The server opens the path itself, so it must be a local file it can read, and
    the message needs some text as well (a video alone is rejected with 400).
    """
    info = probe_video(path, limits, name=name)
    return {"type": "video_url", "video_url": {"url": str(info.path.resolve())}}


def _read_frame(capture: cv2.VideoCapture, index: int) -> np.ndarray | None:
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = capture.read()
    return frame if ok and frame is not None else None


def _fit(frame: np.ndarray, max_side: int) -> np.ndarray:
    height, width = frame.shape[:2]
    if max(height, width) <= max_side:
        return frame
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _jpeg(frame: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, _FRAME_JPEG_QUALITY])
    if not ok:
        raise AttachmentError("A video frame could not be encoded as JPEG.")
    return encoded.tobytes()
