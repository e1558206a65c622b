"""Copy a model folder to another host of a distributed profile, with progress.

The folder goes as a tar stream into `ssh HOST tar -xf -` (tar is on every Mac and Linux;
rsync's progress flags differ between them), following symlinks so a Hugging Face cache
snapshot (links into blobs/) arrives as plain files. It is unpacked into a temporary
folder beside the destination and renamed into place only when complete, so an
interrupted copy never leaves a half model at the path a rank loads.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

from manager.errors import ManagerError
from manager.servers.distributed import ssh
from manager.servers.distributed.spec import RankHost

log = logging.getLogger(__name__)

#: Bytes sent so far, bytes in all (file contents; tar headers are not counted).
Progress = Callable[[int, int], None]
CHUNK = 1024 * 1024


def model_files(source: Path) -> list[Path]:
    """The files of a model folder (symlinks resolved), skipping hidden ones."""
    if not (source / "config.json").is_file():
        raise ManagerError(f"{source} is not a model folder (no config.json): nothing to copy.")
    return sorted(p for p in source.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(source).parts))


def unpack_script(dest: str) -> str:
    """Unpack stdin's tar into a temp dir beside `dest`, then move it into place."""
    if not dest.startswith(("/", "~/")) or "\n" in dest:
        raise ManagerError(f"{dest!r}: give the model's destination as an absolute path.")
    target = '"$HOME"/' + shlex.quote(dest[2:]) if dest.startswith("~/") else shlex.quote(dest)
    return (f"d={target}; if [ -e \"$d\" ]; then echo \"exists: $d\" >&2; exit 17; fi; "
            't="$d.partial-$$"; mkdir -p "$t" && tar -xf - -C "$t" && mv "$t" "$d" '
            '|| { rm -rf "$t"; exit 1; }')


class _Counting:
    """A write-only file object counting what passes through (tar writes its stream)."""

    def __init__(self, out: IO[bytes], total: int, progress: Progress) -> None:
        self._out = out
        self._total = total
        self._progress = progress
        self._sent = 0
        self._reported = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._sent += len(data)
        if self._sent - self._reported >= CHUNK:
            self._reported = self._sent
            self._progress(min(self._sent, self._total), self._total)
        return len(data)


def copy_model(source: Path, host: RankHost, dest: str, options: ssh.SshOptions,
               progress: Progress) -> None:
    """Copy the model folder `source` to `dest` on `host` (which must not exist there).
    Raises SshError when ssh fails, ManagerError when the copy fails (with the reason)."""
    files = model_files(source)
    total = sum(p.stat().st_size for p in files)
    argv = ssh.ssh_argv(host.ssh_target, unpack_script(dest), options)
    progress(0, total)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    if proc.stdin is None or proc.stderr is None:  # never: both are PIPEs
        raise ManagerError("The ssh client gave no pipes to copy through.")
    broken = False
    try:
        counting = cast(IO[bytes], _Counting(proc.stdin, total, progress))  # write() is all
        with tarfile.open(fileobj=counting, mode="w|", dereference=True) as tar:
            for path in files:
                tar.add(path, arcname=os.fspath(path.relative_to(source)), recursive=False)
    except BrokenPipeError:
        broken = True  # the remote side stopped reading: its stderr says why
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            broken = True
    stderr = proc.stderr.read().decode(errors="replace")
    code = proc.wait()
    if code == ssh.SSH_FAILED:
        raise ssh.explain_failure(host.ssh_target, stderr)
    if code == 17:
        raise ManagerError(f"{dest} already exists on {host.label}: the preflight found no "
                           "model there, so it is something else. Move it away or pick "
                           "another path.")
    if code != 0 or broken:
        tail = stderr.strip().splitlines()[-1:] or [f"exit {code}"]
        log.warning("copy of %s to %s:%s failed: %s", source, host.label, dest, stderr[-500:])
        raise ManagerError(f"Copying the model to {host.label}:{dest} failed ({tail[0]}). "
                           "Check the free disk space there and try again.")
    progress(total, total)
    log.info("copied %s (%d bytes) to %s:%s", source, total, host.label, dest)
