"""Two choices in manager/chat.py, measured against their alternative in the same run:

1. Every turn re-sends the history, images included. Prepared image parts are kept
   (a small cache keyed by file, size and mtime): building the request for a chat
   with several photos, cold (decode, scale, re-encode each) against warm.
2. A streaming answer is saved in place at most once a second, not on every chunk:
   the cost of one `update_message` and the share of a 600 tokens/s stream it would
   take if every chunk were saved.

    .venv/bin/python -m bench.chat
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from manager.chat.engine import SAVE_EVERY_S, ChatEngine
from manager.chat.events import ChatOptions
from manager.chat.history import NewMessage
from manager.models.capabilities import Capabilities
from manager.servers.profiles import Backend, Profile
from manager.services import Services
from manager.settings import Settings

PHOTOS = 6
PHOTO_SIZE = (3000, 2000)  # scaled down to 2048 on the long side before sending
ROUNDS = 5
UPDATES = 300
STREAM_TOKENS_PER_S = 600


def _photo(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (PHOTO_SIZE[1] // 8, PHOTO_SIZE[0] // 8, 3), dtype=np.uint8)
    # Upscaled noise: photo-like detail at a realistic size and file weight.
    Image.fromarray(pixels).resize(PHOTO_SIZE).save(path, quality=90)
    return path


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        services = Services.create(Settings(data_dir=root / "data"), run_servers=False)
        try:
            owner = services.auth.register("bench@example.com", "correct horse battery")
            chat = services.chats.create(owner, "bench")
            for index in range(PHOTOS):
                photo = _photo(root / f"photo{index}.jpg", index)
                services.chats.add_message(owner, chat.id, NewMessage("user", f"Photo {index}"),
                                           (photo,))
                services.chats.add_message(owner, chat.id, NewMessage("assistant", "Nice."))
            messages = services.chats.get(owner, chat.id).messages
            profile = Profile(id=1, name="bench", model="m", backend=Backend.MLX_VLM,
                              host="127.0.0.1", port=1)
            caps = Capabilities(multimodal=True)
            options = ChatOptions()

            cold, warm = [], []
            for _ in range(ROUNDS):
                engine = ChatEngine(chats=services.chats, inference=services.inference,  # empty cache
                                    tools=services.tools, supervisor=services.supervisor,
                                    profiles=services.profiles)
                started = time.perf_counter()
                engine.openai_messages(messages, profile, caps, options)
                cold.append(time.perf_counter() - started)
                started = time.perf_counter()
                engine.openai_messages(messages, profile, caps, options)
                warm.append(time.perf_counter() - started)

            answer = services.chats.add_message(owner, chat.id, NewMessage("assistant", ""))
            text = ""
            updates = []
            for index in range(UPDATES):
                text += f" token{index}"
                started = time.perf_counter()
                services.chats.update_message(owner, answer.id, NewMessage("assistant", text))
                updates.append(time.perf_counter() - started)
        finally:
            services.close()

    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    print(f"history of {PHOTOS} photos {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} -> request messages")
    print(f"  cold (prepare every image): {cold_s * 1000:8.1f} ms")
    print(f"  warm (prepared parts kept): {warm_s * 1000:8.1f} ms")
    print(f"  ratio cold / warm: {cold_s / warm_s:.0f}x")
    update_s = statistics.median(updates)
    every_chunk = update_s * STREAM_TOKENS_PER_S
    throttled = update_s / SAVE_EVERY_S
    print(f"saving a growing answer: one update_message {update_s * 1000:.2f} ms")
    print(f"  every chunk at {STREAM_TOKENS_PER_S} tokens/s: {every_chunk * 100:.0f}% of the "
          f"stream's time in SQLite; once per {SAVE_EVERY_S:g} s: {throttled * 100:.2f}%")
    print(f"  ratio: {every_chunk / throttled:.0f}x less time saving")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
