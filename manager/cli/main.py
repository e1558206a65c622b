"""The `mlx-manager` command line: flags for the dashboard and local admin subcommands.

Subcommands act on the data dir directly, with the machine owner's rights: they are the
way back in when the only admin forgot their password (there is no email recovery).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from manager.cli import backup as cli_backup
from manager.cli import lifecycle as cli_lifecycle
from manager.cli import models as cli_models
from manager.cli import servers as cli_servers
from manager.cli import service as cli_service
from manager.cli import toolcheck as cli_toolcheck
from manager.cli.remote import find_dashboard
from manager.errors import Conflict, ManagerError, ValidationError
from manager.settings import (
    DATA_DIR_ENV,
    DEFAULT_HOST,
    DEFAULT_PORT,
    SSH_CONFIG_ENV,
    Settings,
    normalize_origins,
)

if TYPE_CHECKING:  # built by the commands that need it: `--help` and the others load none
    from manager.accounts.auth import User
    from manager.services import Services

log = logging.getLogger(__name__)


def _data_dir_flag(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--data-dir",
        default=default,
        help=f"where the database, logs and uploads live (env {DATA_DIR_ENV}; default ./data)",
    )


def _origin(text: str) -> str:
    try:
        return normalize_origins([text])[0]
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _serve_flags(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--host", default=default,
                        help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 = LAN)")
    parser.add_argument("--port", type=int, default=default,
                        help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true", default=default,
                        help="also ask Gradio for a temporary public share link")
    parser.add_argument("--cors-origin", action="append", dest="cors_origins", default=default,
                        metavar="ORIGIN", type=_origin,
                        help="a browser origin (https://host:port) allowed to call the "
                             "dashboard and /v1 from its pages; repeat for more (default none)")
    parser.add_argument("--registrations-per-hour", type=int, default=default, metavar="N",
                        help="account registrations accepted per client address per hour "
                             "(default 5)")
    parser.add_argument("--warm-spare", action=argparse.BooleanOptionalAction, default=default,
                        help="keep a spare interpreter with mlx_lm/mlx_vlm imported, so "
                             "server starts skip the imports (env MLX_MANAGER_WARM_SPARE; "
                             "default: the Admin tab's choice, else on)")
    parser.add_argument("--server-nice", type=int, default=default, metavar="N",
                        help="run model servers N nice steps below the dashboard's CPU "
                             "priority, 0-19 (env MLX_MANAGER_SERVER_NICE; default 5; 0: "
                             "the same priority)")
    parser.add_argument("--keep-servers", action="store_true", default=default,
                        help="leave the model servers running when the dashboard stops, "
                             "for the next start to adopt (default: Ctrl-C stops them)")
    parser.add_argument("--ssh-config", default=default, metavar="FILE",
                        help="ssh client config for the hosts of distributed profiles "
                             f"(env {SSH_CONFIG_ENV}; default ssh's own, ~/.ssh/config)")
    parser.add_argument("--log-level", default=default,
                        choices=["debug", "info", "warning", "error"],
                        help="default info (what a person cares about); debug adds every "
                             "request and the sampler's ticks")


ActionAdder = Callable[[str, str], argparse.ArgumentParser]


def command_group(sub: argparse._SubParsersAction, name: str, help_text: str,
                  dest: str) -> ActionAdder:
    """A subcommand with actions (`users add`, `profiles rm`, ...); returns the function that
    adds one action. `--data-dir` is accepted at every level of the command."""
    group = sub.add_parser(name, help=help_text)
    _data_dir_flag(group, argparse.SUPPRESS)
    actions = group.add_subparsers(dest=dest, metavar="ACTION", required=True)

    def action(action_name: str, action_help: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(action_name, help=action_help)
        _data_dir_flag(parser, argparse.SUPPRESS)
        return parser

    return action


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-manager",
        description="MLX Model Manager: a browser dashboard for local MLX models.",
    )
    _data_dir_flag(parser, None)
    _serve_flags(parser, None)
    # Flags given after a subcommand land in the same namespace; SUPPRESS keeps the
    # top-level value when they are not repeated there.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the dashboard (the default)")
    _data_dir_flag(serve, argparse.SUPPRESS)
    _serve_flags(serve, argparse.SUPPRESS)

    action = command_group(sub, "users", "manage accounts on this machine", "users_command")
    action("list", "list accounts with role and status")
    add = action("add", "create an active account")
    add.add_argument("email")
    add.add_argument("--admin", action="store_true", help="make the account an administrator")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input instead of a prompt")
    reset = action("reset-password", "set a new password; ends its sessions")
    reset.add_argument("email")
    reset.add_argument("--password-stdin", action="store_true",
                       help="read the password from standard input instead of a prompt")

    key_action = command_group(sub, "keys", "API keys for the OpenAI/Anthropic endpoint",
                               "keys_command")
    create_key = key_action("create", "print a new key for an account")
    create_key.add_argument("email")
    create_key.add_argument("--name", default="", help="a label to tell keys apart")
    cli_servers.add_commands(sub, command_group, _data_dir_flag)
    cli_service.add_commands(sub, command_group)
    cli_backup.add_commands(sub, _data_dir_flag)
    cli_models.add_commands(sub, _data_dir_flag)
    cli_lifecycle.add_commands(sub, _data_dir_flag)
    cli_toolcheck.add_commands(sub, _data_dir_flag)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        data_dir=getattr(args, "data_dir", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        share=getattr(args, "share", None),
        cors_origins=getattr(args, "cors_origins", None),
        registrations_per_hour=getattr(args, "registrations_per_hour", None),
        warm_spare=getattr(args, "warm_spare", None),
        server_nice=getattr(args, "server_nice", None),
        keep_servers=getattr(args, "keep_servers", None),
        ssh_config=getattr(args, "ssh_config", None),
    )


def read_password(from_stdin: bool, stdin: TextIO, err: TextIO) -> str:
    if from_stdin:
        return stdin.readline().rstrip("\r\n")
    try:
        first = getpass.getpass("New password: ")
        second = getpass.getpass("Repeat it: ")
    except (EOFError, KeyboardInterrupt) as exc:  # Ctrl-D, Ctrl-C, or no terminal
        print(file=err)  # the prompt's line ends
        raise ManagerError("No password was given: nothing was changed.") from exc
    if first != second:
        raise ManagerError("The two passwords differ.")
    return first


def run_command(
    args: argparse.Namespace,
    settings: Settings,
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Run a non-serving subcommand; returns the process exit code."""
    try:
        # These work on files, never through the services (restore replaces the database).
        if args.command == "service":
            return cli_service.run(args, settings, out)
        if args.command in ("backup", "restore"):
            return cli_backup.run(args, settings, out)
        if args.command in ("ls", "pull", "rm"):
            return cli_models.run(args, settings, out)
        # These act through a running dashboard (it owns the servers), else directly.
        if args.command in ("start", "stop", "run"):
            return cli_lifecycle.run(args, settings, stdin, out, err)
        if args.command in ("status", "ps"):
            try:
                dashboard = find_dashboard(settings.data_dir)
            except Conflict as exc:  # a restore or a check holds it: what was recorded
                log.debug("ps reads the records: %s", exc.message)
                dashboard = None
            if dashboard is not None:
                try:
                    return cli_servers.status_through(dashboard, out)
                finally:
                    dashboard.close()
        if args.command == "check-tools":  # holds the data dir, then builds its services
            return cli_toolcheck.run(args, settings, out, err)
        from manager.services import Services

        # Commands never adopt, start or sample the servers a dashboard runs.
        services = Services.create(settings, run_servers=False)
        if args.command in ("profiles", "status", "ps"):
            return cli_servers.run(args, services, out)
        if args.command == "users":
            return _users(args, services, stdin, out, err)
        if args.command == "keys":
            return _keys(args, services, out)
    except ManagerError as exc:
        print(f"error: {exc.message}", file=err)
        return 1
    print(f"error: unknown command {args.command!r}", file=err)
    return 2


def _account(services: Services, email: str) -> User:
    """The account of `email`, or a ManagerError saying there is none."""
    owner = services.auth.get_by_email(email)
    if owner is None:
        raise ManagerError(f"No account with the email {email}.")
    return owner


def _keys(args: argparse.Namespace, services: Services, out: TextIO) -> int:
    new = services.api_keys.create(_account(services, args.email), args.name)
    # The key goes to stdout alone so scripts can capture it; it is not stored in clear.
    print(new.secret, file=out)
    return 0


def _users(args: argparse.Namespace, services: Services, stdin: TextIO, out: TextIO,
           err: TextIO) -> int:
    auth = services.auth
    if args.users_command == "list":
        users = auth.all_users()
        if not users:
            print("No accounts yet. The first person to register becomes the admin.", file=out)
            return 0
        print(_table([["EMAIL", "ROLE", "STATUS", "CREATED", "LAST LOGIN"]] + [
            [u.email, u.role.value, u.status.value, u.created_at, u.last_login_at or "-"]
            for u in users
        ]), file=out)
        return 0
    # Whether the account can be added or changed is said before the password is asked.
    if args.users_command != "add":
        _account(services, args.email)
    elif auth.get_by_email(args.email) is not None:
        raise Conflict("An account with that email already exists.")
    password = read_password(args.password_stdin, stdin, err)
    if args.users_command == "add":
        user = auth.add_user(args.email, password, admin=args.admin)
        print(f"Created {user.email} ({user.role.value}, {user.status.value}).", file=out)
        return 0
    user = auth.reset_password_local(args.email, password)
    print(f"New password set for {user.email}; their open sessions were ended.", file=out)
    return 0


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
