"""The terminal side of `mlx-manager run PROFILE`: a prompt, the answer streamed as it
arrives, thinking shown dimmed (plain text with a label when the output is not a
terminal), tool calls and their results on their own lines.

Ctrl-C stops the answer being written, not the program; Ctrl-D or /bye leaves. Where the
turns come from (the CLI's own services, or a running dashboard) is the caller's business:
`Repl` takes a function from the typed text to a stream of `ChatEvent`s.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Generator
from typing import TextIO

from manager.chat.events import ChatEvent, ChatEventKind
from manager.units import format_duration

log = logging.getLogger(__name__)

DIM = "\033[2m"
RESET = "\033[0m"
PROMPT = ">>> "
LEAVE = ("/bye", "/exit", "/quit")
HELP = ("Type a message and press Enter. The answer streams in; thinking is shown dimmed.\n"
        "  Ctrl-C      stop the answer being written\n"
        "  /bye        leave (or Ctrl-D)\n"
        "  /?          this help")
#: A tool result is shown up to this many characters (the model gets all of it).
TOOL_RESULT_CHARS = 300

Turns = Callable[[str], Generator[ChatEvent, None, None]]


class Renderer:
    """Writes a turn's events to a terminal (`tty`: ANSI dim for thinking) or a pipe."""

    def __init__(self, out: TextIO, *, tty: bool, verbose: bool = False) -> None:
        self._out = out
        self._tty = tty
        self._verbose = verbose
        self._at_line_start = True
        self._dim = False

    def show(self, event: ChatEvent) -> None:
        kind = event.kind
        if kind is ChatEventKind.THINKING_STARTED:
            self._line_break()
            self._set_dim(True)
            self._write("Thinking...\n")
        elif kind is ChatEventKind.THINKING:
            self._set_dim(True)
            self._write(event.text)
        elif kind is ChatEventKind.THINKING_ENDED:
            self._line_break()
            took = f" ({format_duration(event.seconds)})" if event.seconds else ""
            end = "done thinking" if event.finished else "thinking cut off"
            self._write(f"...{end}{took}.\n")
            self._set_dim(False)
            self._write("\n")
        elif kind is ChatEventKind.RECLASSIFIED:
            self._line_break()
            self._dim_line("(the text above was the model's thinking)")
        elif kind is ChatEventKind.ANSWER:
            self._set_dim(False)
            self._write(event.text)
        elif kind is ChatEventKind.TOOL_STARTED and event.call is not None:
            self._line_break()
            self._dim_line(f"[tool] {event.call.name}({event.call.arguments})")
        elif kind is ChatEventKind.TOOL_FINISHED and event.call is not None \
                and event.outcome is not None:
            text = " ".join(event.outcome.text.split())
            if len(text) > TOOL_RESULT_CHARS:
                text = text[:TOOL_RESULT_CHARS] + "..."
            status = "" if event.outcome.ok else f" ({event.outcome.status})"
            self._dim_line(f"[tool] {event.call.name}{status} -> {text}")
        elif kind is ChatEventKind.NOTE:
            self._line_break()
            self._dim_line(f"note: {event.text}")
        elif kind is ChatEventKind.ERROR:
            self._line_break()
            self._set_dim(False)
            self._write(f"error: {event.text}\n")
        elif kind is ChatEventKind.STATS and self._verbose and event.stats is not None:
            self._line_break()
            self._dim_line(event.stats.label())
        elif kind is ChatEventKind.DONE:
            self._set_dim(False)
            self._line_break()
        self._out.flush()

    def stopped(self) -> None:
        """The person pressed Ctrl-C during the answer."""
        self._set_dim(False)
        self._line_break()
        self._write("(stopped)\n")
        self._out.flush()

    def _dim_line(self, text: str) -> None:
        was = self._dim
        self._set_dim(True)
        self._write(text + "\n")
        self._set_dim(was)

    def _set_dim(self, on: bool) -> None:
        if on != self._dim and self._tty:
            self._out.write(DIM if on else RESET)
        self._dim = on

    def _line_break(self) -> None:
        if not self._at_line_start:
            self._write("\n")

    def _write(self, text: str) -> None:
        if text:
            self._out.write(text)
            self._at_line_start = text.endswith("\n")


class Repl:
    """Reads messages until /bye or end of input; each answer streams through `turns`."""

    def __init__(self, turns: Turns, *, stdin: TextIO, out: TextIO, tty: bool,
                 verbose: bool = False) -> None:
        self._turns = turns
        self._stdin = stdin
        self._out = out
        # Line editing and history where a person types (readline wraps input()).
        self._interactive = stdin is sys.stdin and stdin.isatty()
        self._renderer = Renderer(out, tty=tty, verbose=verbose)

    def run(self) -> None:
        if self._interactive:
            import readline  # noqa: F401 - importing it gives input() line editing

            print("Send a message (/? for help, /bye or Ctrl-D to leave).", file=self._out)
        while True:
            try:
                line = self._read()
            except KeyboardInterrupt:
                print("\nUse Ctrl-D or /bye to leave.", file=self._out)
                continue
            if line is None:
                break
            text = line.strip()
            if not text:
                continue
            if text.lower() in LEAVE:
                break
            if text in ("/?", "/help"):
                print(HELP, file=self._out)
                continue
            self.answer(text)

    def answer(self, text: str) -> None:
        events = self._turns(text)
        try:
            for event in events:
                self._renderer.show(event)
        except KeyboardInterrupt:
            # Closing the stream ends the request (the server stops generating).
            events.close()
            self._renderer.stopped()

    def _read(self) -> str | None:
        if self._interactive:
            try:
                return input(PROMPT)
            except EOFError:
                print(file=self._out)
                return None
        line = self._stdin.readline()
        return line if line else None
