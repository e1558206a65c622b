"""`mlx-manager ls`, `pull REPO`, `rm MODEL`: the models on this machine from a terminal.

`ls` reads (the HF cache and the extra folders, like the Models tab). `pull` runs the
same download jobs the Models tab shows (the `downloads` table, partial files kept in
the cache): Ctrl-C pauses, and pulling again resumes from the bytes on disk. While a
dashboard runs on the data dir, `pull` and `rm` ask it (it owns the download jobs and
knows which models its servers use; remote.py): the job is its own, listed in its
Models tab as it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from manager.cli.remote import find_dashboard
from manager.errors import NotFound
from manager.models.download_types import DownloadStatus, DownloadView
from manager.settings import Settings
from manager.units import format_bytes, format_duration

if TYPE_CHECKING:  # the commands import what they use: `--help` needs none of it
    from manager.cli.remote import Dashboard
    from manager.models.downloads import DownloadManager
    from manager.models.library import Library, LocalModel
    from manager.services import Services

BAR_WIDTH = 30


def add_commands(sub: argparse._SubParsersAction,
                 data_dir_flag: Callable[..., None]) -> None:
    ls = sub.add_parser("ls", help="the models on this machine, with sizes and badges")
    data_dir_flag(ls, argparse.SUPPRESS)
    pull = sub.add_parser("pull", help="download a model from Hugging Face (resumable)")
    pull.add_argument("repo", help="a repo id, e.g. mlx-community/Qwen3-0.6B-4bit")
    data_dir_flag(pull, argparse.SUPPRESS)
    rm = sub.add_parser("rm", help="delete a downloaded model's files")
    rm.add_argument("model", help="its name as `ls` shows it, or its folder")
    data_dir_flag(rm, argparse.SUPPRESS)


def run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.command in ("pull", "rm"):
        dashboard = find_dashboard(settings.data_dir)
        if dashboard is not None:
            try:
                if args.command == "pull":
                    return _pull_through(dashboard, args.repo.strip(), out)
                return _rm_through(dashboard, args.model, out)
            finally:
                dashboard.close()
    from manager.services import Services

    services = Services.create(settings, run_servers=False)
    try:
        if args.command == "ls":
            return _ls(services, out)
        if args.command == "pull":
            return _pull(services, args.repo.strip(), out)
        return _rm(services, args.model, out)
    finally:
        services.close()


def badges(model: LocalModel) -> str:
    caps = model.caps
    quant = caps.quantization_label
    found = [caps.architecture or "", quant if quant != "n/a" else ""]
    found += [name for name, on in (("vision", caps.multimodal), ("video", caps.video),
                                    ("tools", caps.tool_use), ("thinking", caps.thinking))
              if on]
    if not model.complete:
        found.append("incomplete")
    return " ".join(b for b in found if b)


def _ls(services: Services, out: TextIO) -> int:
    models = services.library.scan()
    if not models:
        print("No models on this machine yet. Get one with `mlx-manager pull REPO`.",
              file=out)
        return 0
    rows = [["NAME", "SIZE", "BADGES"]] + [
        [m.name, format_bytes(m.size_bytes) if m.size_bytes is not None else "n/a",
         badges(m)] for m in models]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
              file=out)
    return 0


def begin_pull(downloads: DownloadManager, repo: str) -> tuple[DownloadView, int | None]:
    """The repo's download job: a paused or failed one resumed (with the bytes it
    resumes from), a running one as it is, else a new one."""
    downloads.start_workers()  # loads the download list (and runs it while this runs)
    known = [v for v in downloads.snapshot() if v.repo_id == repo]
    running = next((v for v in known if v.status.active), None)
    if running is not None:
        return running, None
    stopped = next((v for v in known if v.status.resumable), None)
    if stopped is not None:
        return downloads.resume(None, stopped.id), stopped.bytes_done
    return downloads.start(None, repo), None


def _pull(services: Services, repo: str, out: TextIO) -> int:
    downloads = services.downloads
    view, resumed_from = begin_pull(downloads, repo)
    if resumed_from is not None:
        print(f"Resuming {repo} from {format_bytes(resumed_from)}.", file=out)
    bar = ProgressBar(out)
    try:
        while view.status.active:
            view = downloads.wait(view.id, timeout=3600, until=moved_from(view.bytes_done))
            bar.show(view)
    except KeyboardInterrupt:
        downloads.pause(None, view.id)
        view = downloads.wait(view.id, timeout=60)
        return _paused(bar, view.bytes_done)
    return _finished(bar, repo, view.status, view.bytes_total, view.error)


def _pull_through(dashboard: Dashboard, repo: str, out: TextIO) -> int:
    answer = dashboard.call("POST", "/downloads", {"repo": repo})
    view = _view(answer["download"])
    if answer.get("resumed_from") is not None:
        print(f"Resuming {repo} from {format_bytes(answer['resumed_from'])}.", file=out)
    print(f"Downloading through {dashboard.label}; its Models tab shows it too.", file=out)
    bar = ProgressBar(out)
    try:
        while view.status.active:
            view = _view(dashboard.call("POST", "/downloads/wait", {
                "id": view.id, "seen": view.bytes_done, "wait": 30})["download"])
            bar.show(view)
    except KeyboardInterrupt:
        paused = _view(dashboard.call("POST", "/downloads/pause", {"id": view.id})["download"])
        return _paused(bar, paused.bytes_done)
    return _finished(bar, repo, view.status, view.bytes_total, view.error)


def _view(data: dict[str, Any]) -> DownloadView:
    return DownloadView(data["id"], data["repo_id"], DownloadStatus(data["status"]),
                        data["bytes_done"], data["bytes_total"], data.get("speed_bps"),
                        data.get("eta_seconds"), data.get("error"))


def _paused(bar: ProgressBar, bytes_done: int) -> int:
    bar.end(f"Paused at {format_bytes(bytes_done)}: run the same command to resume.")
    return 130


def _finished(bar: ProgressBar, repo: str, status: DownloadStatus, total: int | None,
              error: str | None) -> int:
    if status is DownloadStatus.DONE:
        bar.end(f"{repo}: downloaded ({format_bytes(total or 0)}).")
        return 0
    bar.end(f"{repo}: {status.value}. {error or ''}".strip())
    return 1


def moved_from(seen: int) -> Callable[[DownloadView], bool]:
    def moved(view: DownloadView) -> bool:
        return view.bytes_done != seen or not view.status.active
    return moved


def find_model(library: Library, name: str) -> LocalModel:
    """A model on this machine by its `ls` name or its folder."""
    model = next((m for m in library.scan() if name in (m.name, str(m.path))), None)
    if model is None:
        raise NotFound(f"No model called {name} on this machine (see `mlx-manager ls`).")
    return model


def _rm(services: Services, name: str, out: TextIO) -> int:
    model = find_model(services.library, name)
    services.library.delete(None, str(model.path))
    print(f"Deleted {model.name} ({format_bytes(model.size_bytes or 0)} freed).", file=out)
    return 0


def _rm_through(dashboard: Dashboard, name: str, out: TextIO) -> int:
    model = dashboard.call("POST", "/models/delete", {"model": name})["model"]
    print(f"Deleted {model['name']} ({format_bytes(model['size_bytes'] or 0)} freed; "
          f"through {dashboard.label}).", file=out)
    return 0


class ProgressBar:
    """One line redrawn in place on a terminal; elsewhere a line per 10 %."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._last_tenth = -1

    def show(self, view: DownloadView) -> None:
        fraction = view.fraction or 0.0
        filled = int(fraction * BAR_WIDTH)
        speed = f"{format_bytes(int(view.speed_bps))}/s" if view.speed_bps else "n/a"
        eta = format_duration(view.eta_seconds) if view.eta_seconds is not None else "n/a"
        total = format_bytes(view.bytes_total) if view.bytes_total else "?"
        line = (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%} "
                f"{format_bytes(view.bytes_done)}/{total} {speed} ETA {eta}")
        if self._tty:
            print(f"\r{line}\033[K", end="", file=self._out, flush=True)
            return
        tenth = int(fraction * 10)
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            print(line, file=self._out, flush=True)

    def end(self, message: str) -> None:
        if self._tty:
            print(file=self._out)
        print(message, file=self._out)
