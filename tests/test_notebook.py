"""The dashboard inline in a Jupyter notebook (issue 15): a real notebook executed by
nbclient on a real ipykernel calls `notebook.show()`; its output is an iframe whose
address opens the signed-in dashboard (not the sign-in page) exactly once."""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbclient import NotebookClient

from manager.api.login import CODE_PATH, CODE_USED
from manager.cli.instance import read_control
from manager.net import free_port, port_is_free
from tests.conftest import PASSWORD
from tests.waits import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]  # a kernel running the dashboard, Chromium

ROOT = Path(__file__).resolve().parents[1]
ADA = "ada@example.com"
IFRAME_SRC = re.compile(r'<iframe[^>]*\ssrc="([^"]+)"')


def cells(port: int, data_dir: Path) -> list[str]:
    return [
        # This kernel starts the dashboard; with no account yet, the first is created.
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom app import notebook\n"
        f"view = notebook.show({ADA!r}, {PASSWORD!r}, port={port}, "
        f"data_dir={str(data_dir)!r})\nview",
        # A dashboard already answers on the port: attach to it over HTTP.
        f"again = notebook.show({ADA!r}, {PASSWORD!r}, port={port})\nagain",
        "view.dashboard.stop()\nprint('stopped', again.dashboard)",
    ]


class Run:
    """Executes the notebook's cells in a thread (nbclient drives its own event loop;
    the browser fixture keeps one running on the main thread), pausing before the last
    cell while the test looks at the dashboard the kernel serves."""

    def __init__(self, nb: Any) -> None:
        self.nb = nb
        self.shown = threading.Event()
        self.checked = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = NotebookClient(self.nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT)}})
        try:
            with client.setup_kernel():
                for index in range(len(self.nb.cells) - 1):
                    client.execute_cell(self.nb.cells[index], index)
                self.shown.set()
                self.checked.wait(timeout=300)
                last = len(self.nb.cells) - 1
                client.execute_cell(self.nb.cells[last], last)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc
        finally:
            self.shown.set()


def cell_html(cell: Any) -> str:
    (result,) = [o for o in cell.outputs if o.output_type == "execute_result"]
    return str(result.data["text/html"])


def iframe_src(cell: Any) -> str:
    found = IFRAME_SRC.search(cell_html(cell))
    assert found, cell.outputs
    return html.unescape(found.group(1))


@contextmanager
def serve_page(body: str) -> Iterator[str]:
    """A real page on localhost (a page the browser did not fetch from a local address
    may not frame one: Chromium's local network access checks)."""
    page = f"<!doctype html><html><body>{body}</body></html>".encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/notebook.html"
    finally:
        server.shutdown()
        server.server_close()


def test_one_call_shows_the_signed_in_dashboard_in_a_cell(
        tmp_path: Path, hf_home: Path, browser) -> None:  # noqa: ANN001 - Playwright
    port = free_port()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)
                                         for source in cells(port, tmp_path / "data")])
    run = Run(nb)
    run.thread.start()
    try:
        assert run.shown.wait(timeout=600)
        if run.error is not None:
            raise run.error
        started, attached = iframe_src(nb.cells[0]), iframe_src(nb.cells[1])
        for src in (started, attached):
            assert src.startswith(f"http://localhost:{port}{CODE_PATH}?code=")
        assert started != attached
        # As with `serve`, CLI commands find this dashboard to act through.
        control = read_control(tmp_path / "data")
        assert control is not None and control.url == f"http://127.0.0.1:{port}"

        # What the iframe does: open the link, keep the cookie, land on the dashboard.
        with httpx.Client(follow_redirects=True, timeout=60) as http:
            landed = http.get(started)
            assert (landed.status_code, str(landed.url)) == (200, f"http://localhost:{port}/")
            assert "gradio_config" in landed.text and "Sign in to manage" not in landed.text
            assert http.get(f"http://localhost:{port}/config").status_code == 200
        # A link is good once: opened again it is the sign-in page saying why.
        with httpx.Client(follow_redirects=True, timeout=60) as other:
            again = other.get(started)
            assert again.status_code == 401 and html.escape(CODE_USED) in again.text

        # The cell's own HTML in a browser, served from another localhost port (where
        # Jupyter would be): the frame keeps its cookie and shows the signed-in dashboard.
        with serve_page(cell_html(nb.cells[1])) as notebook_url:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            try:
                page = context.new_page()
                page.goto(notebook_url)
                frame = page.frame_locator("iframe")
                frame.locator("#mm-header", has_text=ADA).wait_for(timeout=120_000)
            finally:
                context.close()
    finally:
        run.checked.set()
        run.thread.join(timeout=120)
    if run.error is not None:
        raise run.error
    assert [o.text for o in nb.cells[2].outputs if o.output_type == "stream"] == [
        "stopped None\n"]
    wait_for(lambda: port_is_free("127.0.0.1", port), 30, "the notebook's dashboard to stop")
    assert read_control(tmp_path / "data") is None
