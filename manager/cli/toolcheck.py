"""`mlx-manager check-tools PROFILE [--json] [--min-score N]`: the tool-use check from a
terminal or a script.

It runs the same check as the dashboard's Tool use tab (manager.chat.toolcheck), on the
data dir directly: it holds the data dir like a dashboard does (so no dashboard starts
and adopts the server mid-check), starts the profile's server if it is not running and
stops what it started. With `--min-score N` the exit code is 1 when fewer than N
scenarios pass, so it can gate a script.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from manager.cli.instance import DataDirBusy, hold_data_dir
from manager.errors import ManagerError
from manager.settings import Settings

if TYPE_CHECKING:  # imported by the command: the others and `--help` need none of it
    from manager.chat.toolcheck import CheckRun, Progress

#: Exit code when the score is below --min-score (errors exit 1 too; scripts only need
#: "non-zero"). Kept apart from 2, argparse's usage error.
BELOW_MIN_SCORE = 1


def add_commands(sub: argparse._SubParsersAction,
                 data_dir_flag: Callable[..., None]) -> None:
    parser = sub.add_parser(
        "check-tools", help="check how well a profile's model uses tools (weather, calculator)",
        description="Run the tool-use scenarios against a profile's model and print the "
                    "score; the result is stored and shown in the dashboard.")
    data_dir_flag(parser, argparse.SUPPRESS)
    parser.add_argument("profile", help="the profile's name (or id)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: score, total and each scenario's name, passed, reason")
    parser.add_argument("--min-score", type=int, metavar="N",
                        help="exit with code 1 when fewer than N scenarios pass")


def _report(run: CheckRun, out: TextIO) -> None:
    width = max(len(r.scenario) for r in run.results) if run.results else 0
    for result in run.results:
        mark = {"passed": "PASS", "failed": "FAIL"}.get(result.status.value, "SKIP")
        print(f"{mark}  {result.scenario.ljust(width)}  {result.reason}", file=out)
    print(f"{run.profile_name}: {run.label} (model revision {run.model_revision})", file=out)


def run(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    if args.min_score is not None and args.min_score < 0:
        raise ManagerError("--min-score must be 0 or more.")
    from manager.services import Services

    def progress(step: Progress) -> None:
        print(f"[{step.done}/{step.total}] {step.result.scenario}: "
              f"{step.result.status.value}", file=err, flush=True)

    try:
        with hold_data_dir(settings.data_dir, "mlx-manager check-tools"):
            services = Services.create(settings, run_servers=False)
            try:
                profile = services.profiles.find(args.profile)
                finished = services.tool_check.run(None, profile.id, on_progress=progress)
            finally:
                services.close()
    except DataDirBusy as exc:
        raise ManagerError(
            f"{exc.message} A running dashboard can run the same check: its Tool use tab, "
            "Check tool use.") from exc
    if args.json:
        print(json.dumps(finished.summary(), indent=2), file=out)
    else:
        _report(finished, out)
    if args.min_score is not None and finished.score < args.min_score:
        print(f"error: {finished.score} of {finished.total} scenarios passed, below the "
              f"minimum of {args.min_score}.", file=err)
        return BELOW_MIN_SCORE
    return 0
