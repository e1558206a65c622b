"""Idle dashboard CPU: no tab open, then one signed-in tab open, nothing running.

The dashboard runs as its own process (`python app.py`); its CPU time (psutil, user +
system) is read over a window with no browser, then over a window with one headless
Chromium tab open on the dashboard. With --baseline DIR the same is measured for the
code in DIR (e.g. /work/main before a change) in the same run, alternating.
Goals (issue 12): <= 0.5 % of a core with no tab, <= 3 % with one tab.

Run: .venv/bin/python -m bench.idle_cpu [--seconds 60] [--baseline /path/to/checkout]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench._dashboard import (
    CHROMIUM,
    CHROMIUM_ARGS,
    cpu_percent,
    dashboard_process,
    signed_in_page,
)

GOAL_NO_TAB = 0.5
GOAL_ONE_TAB = 3.0
SETTLE_S = 5.0


def measure(code_dir: Path, seconds: float, browser: object) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, dashboard_process(Path(tmp), code_dir) as dash:
        cookie = dash.cookie("admin@example.com")
        time.sleep(SETTLE_S)
        no_tab = cpu_percent(dash, seconds)
        with signed_in_page(browser, dash, cookie):
            time.sleep(SETTLE_S)
            one_tab = cpu_percent(dash, seconds)
    return no_tab, one_tab


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout to measure the same way (e.g. main)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    here = Path(__file__).resolve().parent.parent
    runs = [("this checkout", here)]
    if args.baseline is not None:
        runs.insert(0, ("baseline", args.baseline.resolve()))
    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for label, code_dir in runs:
                results[label] = measure(code_dir, args.seconds, browser)
        finally:
            browser.close()
    print(f"Dashboard CPU, % of one core, over {args.seconds:g} s each (psutil cpu_times):")
    for label, (no_tab, one_tab) in results.items():
        print(f"  {label:14} no tab {no_tab:6.2f} %   one tab {one_tab:6.2f} %")
    no_tab, one_tab = results["this checkout"]
    if "baseline" in results:
        base_none, base_one = results["baseline"]
        print(f"  ratio to baseline: no tab {no_tab / base_none:.3f}, "
              f"one tab {one_tab / base_one:.3f}")
    ok = no_tab <= GOAL_NO_TAB and one_tab <= GOAL_ONE_TAB
    print(f"goals: no tab <= {GOAL_NO_TAB} %, one tab <= {GOAL_ONE_TAB} %: "
          f"{'OK' if ok else 'ABOVE GOAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
