"""A page load whose answer lands after the live feed's tick (components/live.py): the real
dashboard's events, run through Gradio's own `process_api` with one page's session state;
the test decides when each answer lands in the page, as the network would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from gradio.blocks import BlockFunction
from gradio.state_holder import SessionState

from components import live
from components.dashboard import build_dashboard
from manager.servers.profiles import ProfileSpec
from manager.services import Services


def _run(work: Coroutine[Any, Any, Any]) -> Any:
    """`work` on its own loop thread (as test_live_feed's helpers: no loop of the test's)."""
    found: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: found.update(out=asyncio.run(work)))
    thread.start()
    thread.join()
    return found["out"]


class _Page:
    """One open page as Gradio's front end runs it: the props it shows, per component, and
    its session's state (server-side, as gr.State is); an answer changes what it shows only
    when it `lands`."""

    def __init__(self, demo: gr.Blocks, email: str) -> None:
        self.demo = demo
        self.session = SessionState(demo)
        self.request = gr.Request(username=email, session_hash="page")
        self.props = {i: dict(demo.blocks[i].get_config()) for i in demo.blocks}
        self.timer = next(b for b in demo.blocks.values() if isinstance(b, gr.Timer)
                          and any(t[1] == "tick" and f.fn.__name__ == "tick"
                                  for f in demo.fns.values() for t in f.targets
                                  if t[0] == b._id))

    def events(self, name: str) -> list[BlockFunction]:
        return [f for f in self.demo.fns.values() if any(t[1] == name for t in f.targets)]

    def send(self, fn: BlockFunction) -> list[Any]:
        """The answer of one event (its handler runs now; the page does not show it yet)."""
        inputs = [self.props[c._id].get("value") for c in fn.inputs]
        return _run(self.demo.process_api(fn, inputs, self.session, self.request))["data"]

    def land(self, fn: BlockFunction, answer: list[Any]) -> None:
        for block, value in zip(fn.outputs, answer, strict=True):
            if isinstance(value, dict) and value.get("__type__") == "update":
                self.props[block._id].update({k: v for k, v in value.items()
                                              if k != "__type__"})
            elif not block.stateful:
                self.props[block._id]["value"] = value

    def tick(self) -> None:
        """The live timer's tick, if the timer runs, landing at once."""
        if self.props[self.timer._id].get("active", True):
            for fn in self.events("tick"):
                if fn.fn.__name__ == "tick":
                    self.land(fn, self.send(fn))


def test_a_page_load_landing_after_the_first_tick_does_not_leave_the_page_stale(
        services: Services, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Bug: the page's loads read the servers, a server failed, the first live tick drew
    and recorded the versions after that, and the loads' older drawing landed last. The
    page had 'seen' the failure and the Servers tab never showed it (nothing moved
    again): issue 12 wants every change in every open page within 1 s."""
    monkeypatch.setattr(live, "HOLD_S", 0.0)  # a tick without news answers at once
    services.auth.register("admin@example.com", "correct horse battery")
    (tmp_path / "config.json").write_text("{}")  # a model folder, as far as profiles check
    profile = services.profiles.create(None, ProfileSpec(name="tiny", model=str(tmp_path)))
    page = _Page(build_dashboard(services), "admin@example.com")
    tiles, header = (next(b for b in page.demo.blocks.values() if b.elem_id == elem_id)
                     for elem_id in ("server-tiles", "mm-header"))

    assert page.props[page.timer._id]["active"] is False  # until the load's answer lands
    loads = [(fn, page.send(fn)) for fn in page.events("load")]  # read before the failure
    before = services.changes.versions()
    services.supervisor.fail_to_start(profile.id, "The port is busy.")
    services.auth.register("bob@example.com", "correct horse battery")  # pending
    assert services.changes.versions() != before
    page.tick()  # the first tick (if the timer already runs) lands before the loads
    for fn, answer in loads:
        page.land(fn, answer)
    assert "data-state='failed'" not in page.props[tiles._id]["value"]  # the loads' drawing

    page.tick()  # no news since the failure: the page must still get to show it
    assert "data-state='failed'" in page.props[tiles._id]["value"], \
        "the Servers tab still shows the drawing from before the failure"
    assert "pending-badge" in page.props[header._id]["value"]


def _model(folder: Path, architecture: str) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(f'{{"model_type": "{architecture}"}}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)


def test_a_filter_set_before_the_page_load_landed_is_drawn_by_the_first_tick(
        services: Services, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Bug: on a slow page open, the user set a filter on the Models tab, its event drew
    the filtered list, and the load's answer (the list for no filter) landed after it.
    The filter box still said "llama" over an unfiltered list until the user touched a
    filter again, because the page load recorded nothing about what it drew the list for."""
    monkeypatch.setattr(live, "HOLD_S", 0.0)
    admin = services.auth.register("admin@example.com", "correct horse battery")
    _model(tmp_path / "models" / "acme" / "qwen-small", "qwen3")
    _model(tmp_path / "models" / "acme" / "llama-small", "llama")
    services.library.add_folder(admin, str(tmp_path / "models"))
    page = _Page(build_dashboard(services), "admin@example.com")
    listed, arch = (next(b for b in page.demo.blocks.values() if b.elem_id == elem_id)
                    for elem_id in ("models-list", "models-arch"))

    # The page is opening (its load still on its way) when the user types a filter; the
    # filter's event is done first (answers land in the order they are done).
    page.props[arch._id]["value"] = "llama"
    [on_arch] = [f for f in page.events("change") if any(
        t == (arch._id, "change") for t in f.targets)]
    page.land(on_arch, page.send(on_arch))
    assert "qwen-small" not in page.props[listed._id]["value"]
    assert "llama-small" in page.props[listed._id]["value"]
    for fn in page.events("load"):
        page.land(fn, page.send(fn))
    assert "qwen-small" in page.props[listed._id]["value"]  # the load's list, no filter

    page.tick()
    shown = page.props[listed._id]["value"]
    assert "llama-small" in shown
    assert "qwen-small" not in shown, "the list still ignores the Architecture filter"

