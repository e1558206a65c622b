"""Attachments checked by content: real images from Pillow, real videos from OpenCV."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from manager.chat.attachments import (
    AttachmentError,
    AttachmentLimits,
    extract_frames,
    frame_indices,
    frame_parts,
    native_video_part,
    prepare_image,
    probe_video,
)
from manager.errors import ValidationError
from manager.net import free_port
from tests.waits import wait_for

# Frame i of a generated video is one flat color that encodes i in two channels with
# 32 levels between codes, so codec and JPEG rounding cannot turn one index into another.
LEVEL = 32


def frame_color(index: int) -> tuple[int, int, int]:
    return (LEVEL // 2 + LEVEL * (index % 8), LEVEL // 2 + LEVEL * (index // 8), 128)


def decode_data_url(url: str) -> tuple[str, bytes]:
    header, payload = url.split(",", 1)
    assert header.startswith("data:") and header.endswith(";base64")
    return header[5:-7], base64.b64decode(payload)


def make_video(path: Path, frames: int, *, fourcc: str = "MJPG", fps: float = 10.0,
               size: tuple[int, int] = (64, 48)) -> Path:
    """A real video whose frame i is the flat color frame_color(i) (at most 64 frames)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} here"
    for index in range(frames):
        writer.write(np.full((size[1], size[0], 3), frame_color(index), np.uint8))
    writer.release()
    return path


def frame_number(url: str) -> int:
    mime, data = decode_data_url(url)
    assert mime == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    blue, green = (float(image[:, :, channel].mean()) for channel in (0, 1))
    return round((blue - LEVEL // 2) / LEVEL) + 8 * round((green - LEVEL // 2) / LEVEL)


# -- images -------------------------------------------------------------------------


def test_small_png_is_sent_as_is(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    prepared = prepare_image(path)
    mime, data = decode_data_url(prepared.data_url)
    assert (mime, data) == ("image/png", path.read_bytes())
    assert (prepared.width, prepared.height, prepared.resized) == (40, 30, False)
    assert prepared.part() == {"type": "image_url", "image_url": {"url": prepared.data_url}}


def test_type_comes_from_content_not_extension(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"  # really a JPEG
    Image.new("RGB", (20, 20), "blue").save(path, format="JPEG")
    prepared = prepare_image(path)
    assert prepared.mime == "image/jpeg"


def test_large_image_is_scaled_down_keeping_its_shape(tmp_path: Path) -> None:
    path = tmp_path / "wide.jpg"
    Image.new("RGB", (1200, 600), "green").save(path, quality=80)
    prepared = prepare_image(path, AttachmentLimits(image_max_side=300))
    assert (prepared.width, prepared.height, prepared.resized) == (300, 150, True)
    assert (prepared.original_width, prepared.original_height) == (1200, 600)
    mime, data = decode_data_url(prepared.data_url)
    with Image.open(io.BytesIO(data)) as sent:
        assert (mime, sent.format, sent.size) == ("image/jpeg", "JPEG", (300, 150))


def test_transparency_survives_scaling(tmp_path: Path) -> None:
    path = tmp_path / "logo.png"
    Image.new("RGBA", (800, 800), (0, 0, 0, 0)).save(path)
    prepared = prepare_image(path, AttachmentLimits(image_max_side=100))
    mime, data = decode_data_url(prepared.data_url)
    with Image.open(io.BytesIO(data)) as sent:
        assert (mime, sent.mode, sent.size) == ("image/png", "RGBA", (100, 100))


def test_gif_and_bmp_are_re_encoded_for_the_server(tmp_path: Path) -> None:
    for name, fmt in (("a.gif", "GIF"), ("b.bmp", "BMP")):
        path = tmp_path / name
        Image.new("RGB", (16, 16), "white").save(path, format=fmt)
        assert prepare_image(path).mime in ("image/jpeg", "image/png")


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.new("RGB", (60, 20), "red").save(path, exif=exif.tobytes())
    prepared = prepare_image(path)
    assert (prepared.width, prepared.height) == (20, 60)


@pytest.mark.parametrize(("maker", "message"), [
    (lambda p: p.write_text("just some text, not a picture"),
     "notes.png is not an image that can be read"),
    (lambda p: p.write_bytes(b""), "notes.png is empty."),
    (lambda p: p.write_bytes(_png_bytes()[:60]), "notes.png is damaged or incomplete"),
    (lambda p: p.write_bytes(_png_bytes()[:-200]), "notes.png is damaged or incomplete"),
    (lambda p: p.write_bytes(_corrupt_middle(_png_bytes())), "notes.png is damaged or incomplete"),
    (lambda p: Image.new("RGB", (8, 8)).save(p, format="TIFF"),
     "notes.png is a TIFF image that cannot be sent"),
])
def test_bad_images_are_refused_with_a_clear_message(tmp_path: Path, maker, message: str) -> None:
    path = tmp_path / "notes.png"
    maker(path)
    with pytest.raises(AttachmentError) as caught:
        prepare_image(path)
    assert message in caught.value.message
    assert isinstance(caught.value, ValidationError)


def _png_bytes() -> bytes:
    rng = np.random.default_rng(7)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (120, 120, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _corrupt_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(255 - b for b in data[middle:middle + 400]) + data[middle + 400:]


def test_too_large_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png_bytes())
    with pytest.raises(AttachmentError, match=r"big.png is too large \(\d+\.\d KB\); "
                                              r"the limit for an image is 1000 B"):
        prepare_image(path, AttachmentLimits(max_image_bytes=1000))


def test_too_many_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 5_000)).save(path)  # tiny file, 50 megapixels
    assert path.stat().st_size < 1_000_000
    with pytest.raises(AttachmentError,
                       match=r"too many pixels \(10000×5000, 50 megapixels\); the limit is 40"):
        prepare_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AttachmentError, match="gone.png could not be found"):
        prepare_image(tmp_path / "gone.png")


# -- videos -------------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "wanted", "expected"), [
    (40, 8, [2, 7, 12, 17, 22, 27, 32, 37]),
    (10, 3, [1, 5, 8]),
    (5, 8, [0, 1, 2, 3, 4]),
    (1, 4, [0]),
    (0, 4, []),
])
def test_frame_indices_are_evenly_spaced(frames: int, wanted: int, expected: list[int]) -> None:
    assert frame_indices(frames, wanted) == expected


@pytest.mark.parametrize(("fourcc", "suffix"), [("MJPG", "avi"), ("mp4v", "mp4")])
def test_extract_frames_evenly_spaced_and_distinct(tmp_path: Path, fourcc: str,
                                                   suffix: str) -> None:
    path = make_video(tmp_path / f"clip.{suffix}", 40, fourcc=fourcc, size=(160, 120))
    info = probe_video(path)
    assert (info.frame_count, info.fps, info.duration_seconds) == (40, 10.0, 4.0)
    assert (info.width, info.height) == (160, 120)
    for wanted in (1, 4, 8):
        urls = extract_frames(path, max_frames=wanted, max_side=80)
        numbers = [frame_number(url) for url in urls]
        assert numbers == frame_indices(40, wanted)
        assert len(set(numbers)) == wanted
        steps = {b - a for a, b in zip(numbers, numbers[1:], strict=False)}
        assert max(steps, default=0) - min(steps, default=0) <= 1  # evenly spaced
    for url in extract_frames(path, max_frames=2, max_side=80):
        _, data = decode_data_url(url)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape[:2] == (60, 80)  # scaled to fit max_side, shape kept


def test_short_clip_gives_every_frame_once(tmp_path: Path) -> None:
    path = make_video(tmp_path / "short.avi", 5)
    urls = extract_frames(path, max_frames=8, max_side=64)
    assert [frame_number(url) for url in urls] == [0, 1, 2, 3, 4]
    assert frame_parts(urls)[0] == {"type": "image_url", "image_url": {"url": urls[0]}}


def test_video_too_long_is_refused(tmp_path: Path) -> None:
    path = make_video(tmp_path / "long.avi", 40)  # 4 s at 10 fps
    with pytest.raises(AttachmentError,
                       match=r"long.avi is too long \(4 s\); the limit is 2 s"):
        probe_video(path, AttachmentLimits(max_video_seconds=2))
    with pytest.raises(AttachmentError, match="too long"):
        extract_frames(path, 4, 64, AttachmentLimits(max_video_seconds=2))


def test_video_too_large_is_refused(tmp_path: Path) -> None:
    path = make_video(tmp_path / "heavy.avi", 40)
    with pytest.raises(AttachmentError, match="heavy.avi is too large .* limit for a video"):
        probe_video(path, AttachmentLimits(max_video_bytes=2000))


@pytest.mark.parametrize(("maker", "message"), [
    (lambda p: p.write_bytes(b"not a video at all " * 200), "is not a video that can be read"),
    (lambda p: Image.new("RGB", (32, 32), "red").save(p, format="PNG"),
     "is an image, not a video: attach it as an image"),
    (lambda p: p.write_bytes(make_video(p.with_suffix(".src.avi"), 40).read_bytes()[:300]),
     "is not a video that can be read"),
])
def test_bad_videos_are_refused(tmp_path: Path, maker, message: str) -> None:
    path = tmp_path / "movie.mp4"
    maker(path)
    with pytest.raises(AttachmentError, match=message):
        probe_video(path)


def test_native_video_part_names_the_local_file(tmp_path: Path) -> None:
    path = make_video(tmp_path / "native.avi", 12)
    part = native_video_part(path)
    assert part == {"type": "video_url", "video_url": {"url": str(path.resolve())}}


# -- the parts reach a real mlx_vlm server ---------------------------------------------


@dataclass
class VisionServer:
    url: str
    model: str
    log: Path


@pytest.fixture(scope="module")
def vision_server(tiny_models: dict[str, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[VisionServer]:
    tmp = tmp_path_factory.mktemp("vlm")
    (tmp / "hf" / "hub").mkdir(parents=True)
    model, port, log = str(tiny_models["vision"]), free_port(), tmp / "server.log"
    env = dict(os.environ, HF_HOME=str(tmp / "hf"), HF_HUB_OFFLINE="1")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlx_vlm.server", "--model", model, "--host", "127.0.0.1",
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        def loaded() -> bool:
            assert process.poll() is None, log.read_text()[-2000:]
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return health.status_code == 200 and health.json().get("loaded_model") == model

        wait_for(loaded, 90, "the mlx_vlm server to load the model",
                 ignoring=(httpx.TransportError,))
        yield VisionServer(f"http://127.0.0.1:{port}", model, log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def _ask(server: VisionServer, parts: list[dict]) -> dict:
    content = [{"type": "text", "text": "What is this?"}, *parts]
    response = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
        "model": server.model, "max_tokens": 1,
        "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_images_frames_and_native_video_reach_mlx_vlm(vision_server: VisionServer,
                                                      tmp_path: Path) -> None:
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 64), "red").save(image)
    video = make_video(tmp_path / "clip.avi", 20)
    text_only = _ask(vision_server, [])["usage"]["prompt_tokens"]
    one_image = _ask(vision_server, [prepare_image(image).part()])["usage"]["prompt_tokens"]
    frames = _ask(vision_server, frame_parts(extract_frames(video, 4, 64)))
    native = _ask(vision_server, [native_video_part(video)])
    # Each image adds its vision tokens to the prompt: the parts got in.
    assert one_image > text_only
    assert frames["usage"]["prompt_tokens"] - text_only == 4 * (one_image - text_only)
    assert native["usage"]["prompt_tokens"] > text_only
    log = vision_server.log.read_text()
    assert "images=4 audio=0 videos=0" in log  # the frames, as four images
    assert "images=0 audio=0 videos=1" in log  # the video itself, read by the server
