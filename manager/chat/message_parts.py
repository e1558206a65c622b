"""Attachments as request parts: checked once when a message is prepared, then turned
into parts each time a turn re-sends the history (images and frames cached, a native
video as the path mlx_vlm reads itself)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

from manager.chat.attachments import (
    AttachmentError,
    extract_frames,
    frame_parts,
    native_video_part,
    prepare_image,
    probe_video,
)
from manager.chat.events import AttachmentKind, ChatOptions, PreparedMessage, VideoMode
from manager.chat.history import Message
from manager.chat.requests import (
    attachment_kind,
    frames_instead_note,
    frames_note,
    native_note,
    uses_native_video,
)
from manager.models.capabilities import Capabilities
from manager.servers.profiles import Profile

log = logging.getLogger(__name__)

#: Prepared image / frame parts kept between turns (each turn re-sends the history).
PART_CACHE_SIZE = 32


class MessageMedia:
    """Attachment checks and parts, with a small cache; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: OrderedDict[tuple[Any, ...], list[dict[str, Any]]] = OrderedDict()

    def check(self, path: Path, kind: AttachmentKind, caps: Capabilities, profile: Profile,
              options: ChatOptions, text: str
              ) -> tuple[list[str], tuple[dict[str, Any], ...] | None]:
        """(notes, parts) of a valid attachment; raises AttachmentError otherwise."""
        if kind is AttachmentKind.IMAGE:
            return [], (prepare_image(path, options.limits).part(),)
        if uses_native_video(caps, profile, options.video_mode):
            if not text.strip():
                raise AttachmentError(
                    f"Type a question to go with {path.name}: the server does not take a "
                    "video without any text.")
            probe_video(path, options.limits)
            return [native_note(path.name)], None
        frames = extract_frames(path, options.max_frames, options.limits.frame_max_side,
                                options.limits)
        return [frames_note(len(frames), path.name)], tuple(frame_parts(frames))

    def frames_instead(self, prepared: PreparedMessage, options: ChatOptions,
                       caps: Capabilities) -> PreparedMessage:
        """The message with its native videos turned into frames (a later message of a
        chat: see requests.native_video_fits), with notes saying why."""
        if all(made is not None for made in prepared.parts):
            return prepared
        framed = replace(options, video_mode=VideoMode.FRAMES)
        old_notes = iter(prepared.notes)  # one per video, in order
        notes: list[str] = []
        parts: list[tuple[dict[str, Any], ...] | None] = []
        for path, kind, made in zip(prepared.attachments, prepared.kinds, prepared.parts,
                                    strict=True):
            if kind is AttachmentKind.VIDEO:
                note = next(old_notes, "")
                if made is None:
                    (note,), made = self.check(path, kind, caps, prepared.profile, framed,
                                               prepared.text)
                    note = frames_instead_note(note)
                notes.append(note)
            parts.append(made)
        return replace(prepared, notes=tuple(notes), parts=tuple(parts))

    @staticmethod
    def _key(path: Path, kind: AttachmentKind, options: ChatOptions) -> tuple[Any, ...]:
        try:
            stat = path.stat()
        except OSError as exc:
            raise AttachmentError(f"{path.name} is no longer on disk.") from exc
        return (str(path), stat.st_size, stat.st_mtime_ns, kind, options.limits,
                options.max_frames if kind is AttachmentKind.VIDEO else 0)

    def remember(self, path: Path, kind: AttachmentKind, options: ChatOptions,
                 parts: list[dict[str, Any]]) -> None:
        """Keep the parts made while checking, for the stored copy of the file."""
        self._keep(self._key(path, kind, options), parts)

    def _keep(self, key: tuple[Any, ...], parts: list[dict[str, Any]]) -> None:
        with self._lock:
            self._parts[key] = parts
            self._parts.move_to_end(key)
            while len(self._parts) > PART_CACHE_SIZE:
                self._parts.popitem(last=False)

    def user_content(self, message: Message, profile: Profile, caps: Capabilities,
                     options: ChatOptions) -> str | list[dict[str, Any]]:
        """A stored user message as request content (attachments first, then the text)."""
        if not message.attachments:
            return message.content
        parts: list[dict[str, Any]] = []
        for attachment in message.attachments:
            kind = (AttachmentKind.VIDEO if attachment.mime.startswith("video/")
                    else AttachmentKind.IMAGE if attachment.mime.startswith("image/")
                    else attachment_kind(attachment.path, attachment.name))
            if not caps.multimodal:
                # An earlier model of this profile could see; this one cannot.
                parts.append({"type": "text",
                              "text": f"[{attachment.name} not shown: this model reads text "
                                      "only]"})
                continue
            try:
                parts += self._parts_for(attachment.path, attachment.name, kind, caps, profile,
                                         options)
            except AttachmentError as exc:
                log.info("attachment %s of message %s left out: %s", attachment.name,
                         message.id, exc.message)
                parts.append({"type": "text", "text": f"[{attachment.name} left out: "
                                                      f"{exc.message}]"})
        if message.content:
            parts.append({"type": "text", "text": message.content})
        return parts

    def _parts_for(self, path: Path, name: str, kind: AttachmentKind, caps: Capabilities,
                   profile: Profile, options: ChatOptions) -> list[dict[str, Any]]:
        native = kind is AttachmentKind.VIDEO and uses_native_video(caps, profile,
                                                                    options.video_mode)
        if native:
            return [native_video_part(path, options.limits, name=name)]
        key = self._key(path, kind, options)
        with self._lock:
            cached = self._parts.get(key)
            if cached is not None:
                self._parts.move_to_end(key)
                return cached
        if kind is AttachmentKind.IMAGE:
            parts = [prepare_image(path, options.limits, name=name).part()]
        else:
            parts = frame_parts(extract_frames(path, options.max_frames,
                                               options.limits.frame_max_side, options.limits,
                                               name=name))
        self._keep(key, parts)
        return parts
