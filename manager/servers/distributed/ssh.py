"""ssh to the hosts of a distributed profile: argv building, remote commands, rank spawning.

Always non-interactive (BatchMode: a key or agent, never a password prompt) so a missing
key fails at once with a message instead of hanging the dashboard. The remote side runs a
POSIX shell command line (bash on Linux, zsh on macOS both read it the same way).

A remote rank runs `exec`ed by the login shell sshd started for it. sshd puts every
session in its own session and process group, so the rank's pid is its process group id:
`remote_argv` makes the shell print it (`MARKER pid=N pgid=N dir=D`) before the exec, and
`kill_argv` ends that whole group later. The rank's small files (ring hostfile, jaccl
device list) are written under ~/.mlx-manager/ranks/<rank id>/ on that host together with
a `pid` file, which is how a later preflight finds a stale rank.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from manager.errors import ManagerError
from manager.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
COMMAND_TIMEOUT_S = 60.0
#: Where remote ranks keep their files and pid, relative to the remote $HOME.
RANKS_DIR = ".mlx-manager/ranks"
#: The first line a remote rank's shell prints: `MARKER pid=123 pgid=123 dir=/path`.
MARKER = "mlx-manager-rank"
_MARKER_RE = re.compile(rf"^{MARKER} pid=(\d+) pgid=(\d+) dir=(\S+)$")
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
# ssh's own failures exit 255; the remote command's exit code otherwise.
SSH_FAILED = 255


class SshError(ManagerError):
    """ssh could not run the command on `target`; `kind` says why (for tests and the UI):
    unreachable, refused, auth, host_key, timeout, or failed (the remote command itself)."""

    def __init__(self, message: str, target: str, kind: str) -> None:
        super().__init__(message)
        self.target = target
        self.kind = kind


@dataclass(frozen=True)
class SshOptions:
    """How this dashboard runs ssh: an ssh config file (`ssh -F`), else ssh's own."""

    config: Path | None = None
    connect_timeout_s: int = CONNECT_TIMEOUT_S
    #: Where remote ranks keep their files and pid, relative to that host's $HOME.
    ranks_dir: str = RANKS_DIR

    @classmethod
    def from_settings(cls, settings: Settings) -> SshOptions:
        """This dashboard's options. Its remote ranks live in a ranks dir of its own (named
        after its data dir), so another dashboard's ranks on a shared host are not its
        stale ranks, and it never stops them."""
        digest = hashlib.sha256(str(settings.data_dir).encode()).hexdigest()[:12]
        return cls(config=settings.ssh_config, ranks_dir=f"{RANKS_DIR}/{digest}")


def ssh_argv(target: str, remote_command: str, options: SshOptions) -> list[str]:
    """`ssh [-F config] -o BatchMode=yes ... -- target remote_command`."""
    if not target or target.startswith("-") or any(c.isspace() for c in target):
        raise ManagerError(f"{target!r} is not an ssh target: use a host name, user@host or "
                           "an alias from your ssh config.")
    argv = ["ssh"]
    if options.config is not None:
        argv += ["-F", str(options.config)]
    # BatchMode: nobody can answer a password or host key question, so ssh fails at once.
    # ServerAlive: a rank's session notices a dead link within ~45 s instead of hanging.
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={options.connect_timeout_s}",
             "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
             "-T", "--", target, remote_command]
    return argv


def explain_failure(target: str, stderr: str) -> SshError:
    """ssh's stderr (exit 255) -> an error saying what to do."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else "no message"
    lowered = text.lower()
    if "could not resolve hostname" in lowered or "name or service not known" in lowered:
        return SshError(f"{target}: the host name is unknown ({last}). Check the ssh target, "
                        "or add a Host entry with its HostName (IP address) to your ssh "
                        "config.", target, "unreachable")
    if "connection refused" in lowered:
        return SshError(f"{target}: nothing answers ssh there (connection refused). On a Mac "
                        "turn on System Settings > General > Sharing > Remote Login; check "
                        "the port in your ssh config.", target, "refused")
    if any(s in lowered for s in ("timed out", "no route to host", "network is unreachable",
                                  "host is down")):
        return SshError(f"{target}: the host cannot be reached ({last}). Check that it is on, "
                        "on the same network (or Thunderbolt bridge), and that its address "
                        "in your ssh config is right.", target, "unreachable")
    if "remote host identification has changed" in lowered:
        return SshError(f"{target}: its host key changed since you last connected. If you "
                        f"reinstalled that machine, remove the old key with `ssh-keygen -R "
                        f"<its host name>`, then connect once with `ssh {target}`.", target,
                        "host_key")
    if "host key verification failed" in lowered or "no host key is known" in lowered:
        return SshError(f"{target}: its host key is not known here. Connect once from a "
                        f"terminal with `ssh {target}` and accept the key, then run the "
                        "preflight again.", target, "host_key")
    if "permission denied" in lowered or "too many authentication failures" in lowered:
        return SshError(f"{target}: ssh refused the login ({last}). The dashboard logs in "
                        f"with a key, never a password: run `ssh-copy-id {target}` once "
                        "(or add your public key to ~/.ssh/authorized_keys there).", target,
                        "auth")
    return SshError(f"{target}: ssh failed ({last}).", target, "failed")


def run_remote(target: str, remote_command: str, options: SshOptions, *,
               input_text: str | None = None,
               timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run `remote_command` on `target` and return what it printed. Raises SshError when
    ssh itself fails (with what to do) or the command takes longer than `timeout_s`; a
    non-zero exit of the command itself is returned, not raised."""
    argv = ssh_argv(target, remote_command, options)
    try:
        done = subprocess.run(argv, input=input_text, capture_output=True, text=True,
                              timeout=timeout_s, check=False,
                              stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        log.warning("ssh to %s: no answer within %.0f s", target, timeout_s)
        raise SshError(f"{target}: no answer within {timeout_s:.0f} s. Check that the host "
                       "is awake and not overloaded, then try again.", target,
                       "timeout") from None
    except OSError as exc:
        log.warning("ssh to %s could not start: %s", target, exc)
        raise SshError(f"The ssh client could not run ({exc}): install OpenSSH's client.",
                       target, "failed") from exc
    if done.returncode == SSH_FAILED:
        error = explain_failure(target, done.stderr)
        log.info("ssh to %s failed (%s): %s", target, error.kind, done.stderr.strip()[-300:])
        raise error
    return done


# --- remote ranks ----------------------------------------------------------------------


def _env_assignments(env: Mapping[str, str]) -> str:
    for name in env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ManagerError(f"{name!r} is not an environment variable name.")
    return " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())


def rank_script(rank_id: str, argv: Sequence[str], env: Mapping[str, str],
                files: Mapping[str, str], ranks_dir: str = RANKS_DIR) -> str:
    """The shell command line a remote rank runs: make its dir, write its files, print
    the marker (pid = pgid: sshd made this shell a session leader), then exec the rank
    with the files' paths and `env` exported."""
    if not _ID_RE.match(rank_id):
        raise ManagerError(f"{rank_id!r} cannot name a rank (letters, digits, . _ - only).")
    if not argv:
        raise ManagerError("A rank needs a command to run.")
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_./-]*", ranks_dir) or ".." in ranks_dir:
        raise ManagerError(f"{ranks_dir!r} cannot hold ranks: use a plain relative path.")
    directory = f'"$HOME"/{ranks_dir}/{rank_id}'
    # A stop that came before this shell wrote its pid left `<id>.stop` beside the dir
    # (stop_unlocated_rank): the pid is written first, the note read second, so either
    # the stop finds the pid or this shell finds the note, and then goes no further.
    stopped = f"../{rank_id}.stop"
    steps = [f"mkdir -p {directory}", f"cd {directory}", "echo $$ > pid",
             f'{{ test ! -e {stopped} || {{ rm -rf "$PWD" {stopped}; false; }}; }}']
    exported = dict(env)
    for name, content in files.items():
        filename = f"{name.lower()}.json"
        steps.append(f"printf %s {shlex.quote(content)} > {filename}")
        exported[name] = f"$PWD/{filename}"  # expanded by the shell below, unquoted on purpose
    steps.append(f'echo "{MARKER} pid=$$ pgid=$(ps -o pgid= -p $$ | tr -d \' \') dir=$PWD"')
    plain = {k: v for k, v in exported.items() if k not in files}
    paths = " ".join(f'{name}="{exported[name]}"' for name in files)
    assignments = " ".join(a for a in (_env_assignments(plain), paths) if a)
    steps.append(f"exec env {assignments} {shlex.join(argv)}" if assignments
                 else f"exec {shlex.join(argv)}")
    return " && ".join(steps)


def remote_argv(target: str, argv: Sequence[str], env: Mapping[str, str],
                files: Mapping[str, str], rank_id: str, options: SshOptions) -> list[str]:
    """The local argv that starts one rank on `target` over ssh. Its stdout's first line is
    the marker (`parse_marker`); the rank's own output follows on stdout/stderr. Ending the
    local ssh process does not end the rank: use `kill_argv` with the marker's pgid."""
    return ssh_argv(target, rank_script(rank_id, argv, env, files, options.ranks_dir),
                    options)


@dataclass(frozen=True)
class RemoteRank:
    """Where a remote rank runs: its pid, process group and directory on that host."""

    pid: int
    pgid: int
    directory: str


def parse_marker(line: str) -> RemoteRank | None:
    """The marker line a rank's shell prints first, or None for any other line."""
    found = _MARKER_RE.match(line.strip())
    if found is None:
        return None
    return RemoteRank(pid=int(found.group(1)), pgid=int(found.group(2)),
                      directory=found.group(3))


def kill_script(pgid: int, signal_name: str = "TERM") -> str:
    """Signal a rank's process group; prints `gone` when no process of it is left."""
    if pgid <= 1 or signal_name not in ("TERM", "KILL", "INT"):
        raise ManagerError(f"Refusing to signal process group {pgid} with {signal_name}.")
    return (f"kill -{signal_name} -- -{pgid} 2>/dev/null; "
            f"if kill -0 -- -{pgid} 2>/dev/null; then echo alive; else echo gone; fi")


def kill_argv(target: str, pgid: int, options: SshOptions, signal_name: str = "TERM",
              ) -> list[str]:
    """The local argv that signals a remote rank's process group over ssh."""
    return ssh_argv(target, kill_script(pgid, signal_name), options)


def stop_unlocated_rank(target: str, rank_id: str, options: SshOptions,
                        timeout_s: float = 10.0) -> bool:
    """Stop a rank whose marker never reached us (a stop in its first moments): its shell
    wrote its pid, which is its process group, to its dir before anything else. A shell
    that has not got that far yet finds the `<id>.stop` note left here and ends before it
    starts the rank (notes older than a day are cleared). True when nothing of it is left
    (or it never started there)."""
    if not _ID_RE.match(rank_id):
        raise ManagerError(f"{rank_id!r} cannot name a rank (letters, digits, . _ - only).")
    wait_ticks = max(1, int(timeout_s * 10))
    script = (
        f'r="$HOME"/{options.ranks_dir}; d="$r"/{rank_id}; mkdir -p "$r"; '
        'find "$r" -maxdepth 1 -name "*.stop" -mtime +1 -exec rm -f {} + 2>/dev/null; '
        f'touch "$r"/{rank_id}.stop; '
        'g=$(cat "$d/pid" 2>/dev/null); '
        'case "$g" in ""|*[!0-9]*|0|1) g="" ;; esac; '
        'if [ -n "$g" ]; then kill -TERM -- -$g 2>/dev/null; n=0; '
        f'while kill -0 -- -$g 2>/dev/null && [ $n -lt {wait_ticks} ]; '
        'do sleep 0.1; n=$((n+1)); done; kill -KILL -- -$g 2>/dev/null; '
        f'rm -f "$r"/{rank_id}.stop; fi; '  # found and ended: no shell left to read it
        'rm -rf "$d"; if [ -n "$g" ] && kill -0 -- -$g 2>/dev/null; '
        'then echo alive; else echo gone; fi')
    done = run_remote(target, script, options, timeout_s=timeout_s + 30)
    return done.stdout.strip().endswith("gone")


def stop_remote_rank(target: str, rank: RemoteRank, options: SshOptions,
                     timeout_s: float = 10.0) -> bool:
    """TERM the rank's process group, wait up to `timeout_s` on the host, then KILL; removes
    its dir. True when nothing of it is left."""
    wait_ticks = max(1, int(timeout_s * 10))
    script = (
        f"{kill_script(rank.pgid, 'TERM')} >/dev/null; n=0; "
        f"while kill -0 -- -{rank.pgid} 2>/dev/null && [ $n -lt {wait_ticks} ]; "
        f"do sleep 0.1; n=$((n+1)); done; "
        f"{kill_script(rank.pgid, 'KILL')}; rm -rf {shlex.quote(rank.directory)}")
    done = run_remote(target, script, options, timeout_s=timeout_s + 30)
    return done.stdout.strip().endswith("gone")

