"""Why the toolbox keeps one MCP session per server open: cost of a tool call through
a persistent session (the toolbox) against opening a session per call (spawn the
stdio server, handshake, call, shut down). Prints times and the ratio.

    .venv/bin/python -m bench.mcp_tools
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from manager.chat.mcp_config import PROJECT_ROOT
from manager.chat.tools import McpToolbox
from manager.store import Store

CALLS = 30
FRESH_CALLS = 5


async def _fresh_session_call(errlog_path: Path) -> float:
    params = StdioServerParameters(command=sys.executable, args=["-m", "manager.chat.mcp_builtin"],
                                   cwd=str(PROJECT_ROOT))
    started = time.perf_counter()
    with errlog_path.open("a") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            result = await client.call_tool("get_weather", {"city": "Paris"})
    if result.is_error:
        raise RuntimeError(result.content)
    return time.perf_counter() - started


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        toolbox = McpToolbox(Store(root / "bench.db"), logs_dir=root / "logs")
        try:
            started = time.perf_counter()
            toolbox.toolset()  # first use: starts the built-in server
            first = time.perf_counter() - started
            persistent = []
            for _ in range(CALLS):
                started = time.perf_counter()
                result = toolbox.call("get_weather", {"city": "Paris"})
                persistent.append(time.perf_counter() - started)
                if not result.ok:
                    raise RuntimeError(result.text)
        finally:
            toolbox.close()
        fresh = [asyncio.run(_fresh_session_call(root / "fresh.log")) for _ in range(FRESH_CALLS)]
    kept = statistics.median(persistent)
    opened = statistics.median(fresh)
    print(f"first use (start built-in server + handshake + list): {first * 1000:.0f} ms")
    print(f"call through the persistent session (median of {CALLS}): {kept * 1000:.2f} ms")
    print(f"call with a session opened per call (median of {FRESH_CALLS}): {opened * 1000:.0f} ms")
    print(f"ratio session-per-call / persistent: {opened / kept:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
