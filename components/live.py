"""Live state in every open page: one waiting request per page, answered on news.

Each page has one hidden `gr.Timer`; its tick (trigger_mode "once": no second tick
while one waits) sleeps on the event loop until a counter in `services.changes` moves
past the versions the page last drew (kept in a `gr.State`), or `HOLD_S` pass. Then it
redraws only the parts whose topics moved and skips the rest. A change therefore
reaches the page as soon as it happens, while an idle page costs one short request
every `HOLD_S` instead of a render per tick. Each tick also tells the monitor that a
page is watching (HOLD_S is shorter than the monitor's watch timeout).

New figures (`LAZY_TOPICS`: the monitor's samples, every 1-2 s while a server runs) are
drawn at most every `FIGURES_EVERY_S`; state changes (a server's state, accounts,
downloads) are answered at once. Why: every Gradio event costs the browser about four
passes over the loading status of every component of the page (Gradio's
`update_loading_stati_state`), 0.1-0.3 s of main thread each on a loaded machine. A
page redrawn for every sample was busy most of the time, so a state change waited
for the page to be free to ask (1.6-3.7 s p50 for "server Ready", while the pending
badge, drawn by an idle page, took 0.16 s; docs/benchmarks.md). For the same reason a
server that is stopping is given up to `SETTLE_S` to be gone before the page is
answered: a stop usually ends within that, and one redraw then shows it gone instead of
"Stopping" first and "gone" only after the page's next round trip. A starting server is
given up to `START_SETTLE_S` to be ready, for the same reason: with the warm spare a small
model is ready within it, and "Ready" no longer waits behind the page's redraw of
"Starting" (0.5-0.7 s p50 on a quiet machine). The page that pressed Start shows
"Starting" from its own click at once. Only news that is nothing but servers on their
way waits so: a new pending user, a download step or another server's change (a crash)
ends the wait at once (`settle_allowance`).

Tabs add what fills them when a page opens and their parts (`LiveFeed.add_loader`) while
the page is built; `attach` wires the page's load and its tick. The load is one event that
reads the versions before it reads any state, draws every tab, and writes them as the
page's `Seen`; the timer starts only once that answer has landed. Why: with separate loads
and a tick running from the start, a load's drawing could land after a tick that had drawn
a newer state and recorded its versions, and the part stayed stale until its topic moved
again. Now the page never records versions newer than what it shows; whatever moved since
the load is redrawn by the first tick (possibly drawn twice, never missed).

Failures stay small: a tab whose loader fails is left as built; a part that fails to draw
is left as it was while the others are drawn; a tick that fails anyway answers only after
`HOLD_S` (its `Seen` did not move, so the next tick would fail at once again); and a page
whose state Gradio dropped under a running timer is drawn afresh.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import gradio as gr

from components.session import TabLoader, refusals, user_of
from manager.accounts.auth import User
from manager.changes import Changes, Topic, Versions
from manager.errors import ManagerError
from manager.servers.states import ServerState
from manager.services import Services

log = logging.getLogger(__name__)

#: The longest a tick waits for news before it answers "nothing new".
HOLD_S = 10.0
#: Pause between a tick's answer and the page's next tick (changes meanwhile are kept
#: by the versions, so nothing is missed; this only spaces redraws).
TICK_S = 0.1
#: Topics whose news alone waits until the page's last drawing of them is this old.
LAZY_TOPICS = frozenset({Topic.SAMPLES})
FIGURES_EVERY_S = 3.0
#: How long news waits for a stopping server to be gone, or a starting one to be ready
#: (see the module's docstring).
SETTLE_S = 0.5
START_SETTLE_S = 1.0
#: News of these topics may wait for servers on their way; any other news answers at once.
SETTLING_TOPICS = frozenset({Topic.SERVERS, Topic.SAMPLES})
#: Pages whose ticks may wait at once; more pages queue (each waiting tick holds one
#: of Gradio's worker slots, and chat streams need theirs).
MAX_WAITING_PAGES = 16
#: Pages that may load at once (a load is a few short reads per tab, each in a thread).
MAX_OPENING_PAGES = 4


@dataclass(frozen=True)
class LivePart:
    """Outputs that a tab redraws when one of `topics` moves.

    `render(user, *input_values)` returns one value per output (`gr.skip()` allowed);
    `on_timeout` parts are also redrawn when a wait ends without news (for state that
    can change outside this process, such as accounts edited with the CLI).

    `follows` are inputs that the page's other events set (the Chat tab's picked server,
    the Models tab's filter). A tick reads its inputs when it sets out, so one that waited
    through such a change draws the part for the old values, and its answer can land
    after the event's own drawing. So the values each part was drawn with are kept, and a
    tick that reads others draws the part again at once, without waiting for news.
    `with_session`: `render` also gets the page's Gradio session as `session=` (to ask
    what the page shows now, where a value the tick read can be older).
    `opened_with` are the values of `follows` that the tab's page load draws the part for
    (None: the load sets them itself, or the part follows none). A change made while the
    page was opening lands before the load's drawing, which then shows the part for these;
    the first tick draws it again for what the page has.
    """

    topics: frozenset[Topic]
    render: Callable[..., Sequence[Any]]
    outputs: list[Any]
    inputs: list[Any] = field(default_factory=list)
    on_timeout: bool = False
    follows: list[Any] = field(default_factory=list)
    opened_with: tuple[Any, ...] | None = None
    with_session: bool = False

    def __post_init__(self) -> None:
        if any(all(f is not i for i in self.inputs) for f in self.follows):
            raise ValueError("a part follows only its own inputs")
        if any(any(f is o for o in self.outputs) for f in self.follows):
            # Its own drawing would change them, and every tick would draw it again.
            raise ValueError("a part cannot follow what it draws")
        if self.opened_with is not None and len(self.opened_with) != len(self.follows):
            raise ValueError("opened_with gives one value per followed input")

    def followed(self, values: Sequence[Any]) -> tuple[Any, ...] | None:
        """The values of `follows` among this part's input values (None: follows none)."""
        if not self.follows:
            return None
        return tuple(v for c, v in zip(self.inputs, values, strict=True)
                     if any(c is f for f in self.follows))


#: A server's state by profile id (stopped ones may be left out).
States = Mapping[int, ServerState]


@dataclass(frozen=True)
class Seen:
    """What a page last drew: the versions, when (event loop time) it last drew the
    lazy topics' news, the servers' states (profile id, state) as it drew them, and for
    each part the values of its `follows` it was drawn with (None for a part, or for all:
    drawn by the page load, which also set those values, so they are whatever the page
    has at its next tick)."""

    versions: Versions
    lazy_at: float
    servers: tuple[tuple[int, ServerState], ...] = ()
    drawn_with: tuple[tuple[Any, ...] | None, ...] | None = None


_ON_THE_WAY = frozenset({ServerState.STARTING, ServerState.STOPPING})


def settle_allowance(drawn: States, now: States) -> float:
    """How long news of servers may wait for them to arrive, while every server that is
    not as the page drew it is starting or stopping: SETTLE_S if one is stopping (a stop
    usually takes 0.1-0.3 s), else START_SETTLE_S. 0 as soon as one of them is in any
    other state (ready, failed, stopped: news to show now), or none changed."""
    changed = [now.get(pid, ServerState.STOPPED) for pid in {*drawn, *now}
               if now.get(pid, ServerState.STOPPED) is not drawn.get(pid, ServerState.STOPPED)]
    if not changed or any(state not in _ON_THE_WAY for state in changed):
        return 0.0
    return SETTLE_S if ServerState.STOPPING in changed else START_SETTLE_S


async def wait_for_news(changes: Changes, since: Versions | None, timeout: float,
                        lazy: frozenset[Topic] = frozenset(),
                        lazy_from: float = float("-inf")) -> Versions:
    """The versions once one moved past `since`, or after `timeout` s; the event loop
    stays free meanwhile (the bump wakes it from whatever thread made the change).
    News of `lazy` topics alone answers only from loop time `lazy_from` on."""
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    deadline = loop.time() + timeout

    def hear(_topic: Topic) -> None:
        loop.call_soon_threadsafe(woken.set)

    unsubscribe = changes.subscribe(hear)
    try:
        while True:
            woken.clear()  # before reading: a bump after the read sets it again
            now = changes.versions()
            moved = now.moved(since)
            if moved - lazy or (moved and loop.time() >= lazy_from):
                return now
            wake_at = min(deadline, lazy_from) if moved else deadline
            if loop.time() >= wake_at:
                log.debug("no news for %g s", timeout)
                return now
            try:
                await asyncio.wait_for(woken.wait(), wake_at - loop.time())
            except TimeoutError:
                continue  # the deadline, or lazy news now due: the loop decides
    finally:
        unsubscribe()


class LiveFeed:
    """The parts of one page that follow the domain's changes."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._parts: list[LivePart] = []
        self._loaders: list[TabLoader] = []

    def add(self, part: LivePart) -> None:
        self._parts.append(part)

    def add_loader(self, loader: TabLoader) -> None:
        """What fills a tab when a page opens (drawn by the page's load), and its parts."""
        self._loaders.append(loader)
        for part in loader.live:
            self.add(part)

    def states(self) -> dict[int, ServerState]:
        """Every known server's state, by profile id."""
        return {snap.profile_id: snap.state for snap in self._services.supervisor.snapshots()}

    async def settled(self, since: Versions | None, now: Versions, drawn: States
                      ) -> tuple[Versions, States]:
        """`now` and the servers' states, or both once the servers on their way since the
        page drew `drawn` arrived (at most `settle_allowance` after the news); other news
        meanwhile (another topic, another server's change) ends the wait at once."""
        changes = self._services.changes
        if Topic.SERVERS not in now.moved(since):
            return now, drawn
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            states = await anyio.to_thread.run_sync(self.states)
            left = began + settle_allowance(drawn, states) - loop.time()
            if left <= 0:
                return now, states
            later = await wait_for_news(changes, now, left)
            news, now = later.moved(now), later
            if news - SETTLING_TOPICS:
                return now, await anyio.to_thread.run_sync(self.states)

    def split(self, values: Sequence[Any]) -> list[Sequence[Any]]:
        """The tick's input values, part by part."""
        out: list[Sequence[Any]] = []
        offset = 0
        for part in self._parts:
            out.append(values[offset:offset + len(part.inputs)])
            offset += len(part.inputs)
        return out

    def drawn_with(self, values: Sequence[Any]) -> tuple[tuple[Any, ...] | None, ...]:
        """Each part's `follows` values among the page's input values."""
        return tuple(part.followed(mine)
                     for part, mine in zip(self._parts, self.split(values), strict=True))

    def behind(self, last: Seen | None, values: Sequence[Any]) -> frozenset[int]:
        """The parts drawn for other values of their `follows` than the page has now."""
        if last is None or last.drawn_with is None:
            return frozenset()
        drawn = last.drawn_with
        return frozenset(
            i for i, (part, mine) in enumerate(zip(self._parts, self.split(values),
                                                    strict=True))
            if (now := part.followed(mine)) is not None
            and (i >= len(drawn) or (drawn[i] is not None and drawn[i] != now)))

    def redraw(self, user: User, since: Versions | None, now: Versions, timed_out: bool,
               values: Sequence[Any], behind: frozenset[int] = frozenset(),
               left: frozenset[int] = frozenset(), session: str | None = None) -> list[Any]:
        """Every part's outputs: drawn when its topics moved or it is `behind` the
        page's inputs, else (and for the parts `left` as they are) skipped."""
        moved = now.moved(since)
        out: list[Any] = []
        for i, (part, mine) in enumerate(zip(self._parts, self.split(values), strict=True)):
            if i not in left and (i in behind or part.topics & moved
                                  or (timed_out and part.on_timeout)):
                try:
                    extra = {"session": session} if part.with_session else {}
                    drawn = list(part.render(user, *mine, **extra))
                except ManagerError:
                    raise  # a refusal: the page is told (components.session.refusals)
                except Exception:
                    # That part stays as it was, until its topics move again; the others
                    # are drawn, and the page's feed goes on.
                    log.exception("%s failed to redraw", _name(part.render))
                    out.extend(gr.skip() for _ in part.outputs)
                    continue
                if len(drawn) != len(part.outputs):
                    raise ValueError(f"{part.render.__name__} drew {len(drawn)} values for "
                                     f"{len(part.outputs)} outputs")
                out.extend(drawn)
            else:
                out.extend(gr.skip() for _ in part.outputs)
        return out

    async def answer(self, user: User, last: Seen | None, values: Sequence[Any],
                     session: str | None = None) -> list[Any]:
        """The page's next `Seen` and its parts, once there is news since `last`.

        News that comes while the parts are drawn (a user registering just as the pages
        redraw a server's Ready) is drawn with them, once: else it waited for the page to
        render this answer and ask again, a whole round trip (0.5-0.85 s at load 4,
        docs/benchmarks.md). Servers that just set out are left to the next tick, which
        lets them arrive (`settled`).

        Without a `Seen` the page's state is gone while its timer runs: Gradio drops
        the state of a page whose connection closed an hour ago (a laptop asleep), and
        the page's timer ticks again when it wakes. (After a dashboard restart Gradio
        reloads the page instead.) The page is drawn afresh and starts over from there
        (`_afresh`; answering nothing left it stale, its timer asking every TICK_S).
        The timer only starts with the page load's answer, so no such tick runs before
        the load; and both record the versions they read before drawing, so whichever
        lands last leaves the page consistent."""
        changes = self._services.changes
        if last is None:
            return await self._afresh(user, values, session)
        since, lazy_at, drawn = last.versions, last.lazy_at, dict(last.servers)
        behind = self.behind(last, values)
        if behind:  # drawn for what the page no longer shows: no waiting for news
            now = changes.versions()
        else:
            now = await wait_for_news(changes, since, HOLD_S, LAZY_TOPICS,
                                      lazy_at + FIGURES_EVERY_S)
        now, servers = await self.settled(since, now, drawn)
        # Also in a second pass: on_timeout parts too.
        timed_out = not behind and not now.moved(since)
        for catching_up in (False, True):
            parts = await anyio.to_thread.run_sync(
                self.redraw, user, since, now, timed_out, values, behind, frozenset(), session)
            later = changes.versions()
            news = later.moved(now) - LAZY_TOPICS
            if catching_up or not news:
                break
            states = await anyio.to_thread.run_sync(self.states) \
                if Topic.SERVERS in news else servers
            if not news - SETTLING_TOPICS and settle_allowance(servers, states) > 0:
                break  # only servers on their way: the next tick lets them arrive
            log.debug("news came while drawing (%s): drawn too",
                      ", ".join(sorted(t.value for t in news)))
            now, servers = later, states
        if now.moved(since) & LAZY_TOPICS:
            lazy_at = asyncio.get_running_loop().time()
        # Each part is now drawn for these values: it was not behind, or was drawn now.
        return [Seen(now, lazy_at, tuple(sorted(servers.items())), self.drawn_with(values)),
                *parts]

    async def _afresh(self, user: User, values: Sequence[Any], session: str | None = None
                      ) -> list[Any]:
        """Every part drawn, with the page's new `Seen` first (see `answer`); but not a
        part that follows a gr.State: Gradio reset it with the page's state, while the
        page's own controls (a filter box) still show what the user chose, and a drawing
        for the reset value would contradict them. That part keeps what it shows."""
        now = self._services.changes.versions()  # before anything is read
        lazy_at = asyncio.get_running_loop().time()
        left = frozenset(i for i, part in enumerate(self._parts)
                         if any(isinstance(c, gr.State) for c in part.follows))
        servers = await anyio.to_thread.run_sync(self.states)
        parts = await anyio.to_thread.run_sync(self.redraw, user, None, now, True, values,
                                               frozenset(), left, session)
        drawn_with = tuple(None if i in left else drawn
                           for i, drawn in enumerate(self.drawn_with(values)))
        return [Seen(now, lazy_at, tuple(sorted(servers.items())), drawn_with), *parts]

    async def load(self, request: gr.Request) -> tuple[Seen, dict[Any, Any]]:
        """What a page shows when it opens: every loader's drawing (side by side, as the
        separate loads were), and the page's first `Seen`. Its versions are read before
        any loader reads state, so they are never newer than what the page shows: the
        ticks after it redraw whatever moved since, even if a loader saw it already."""
        versions = self._services.changes.versions()
        lazy_at = asyncio.get_running_loop().time()
        servers, *answers = await asyncio.gather(
            anyio.to_thread.run_sync(self.states),
            *(anyio.to_thread.run_sync(loader.fn, request) for loader in self._loaders),
            return_exceptions=True)
        if isinstance(servers, BaseException):
            log.error("the servers' states could not be read while a page opened",
                      exc_info=servers)
            servers = {}  # the first tick's settling reads them again
        refused = [a for a in answers if isinstance(a, gr.Error)]
        if refused and len(refused) == len(answers):
            raise refused[0]  # the session ended: the page says so (as each load did)
        shown: dict[Any, Any] = {}
        for loader, answer in zip(self._loaders, answers, strict=True):
            try:
                if isinstance(answer, BaseException):
                    raise answer
                if not isinstance(answer, dict):  # one value per output, in order
                    answer = dict(zip(loader.outputs, answer if len(loader.outputs) > 1
                                      else (answer,), strict=True))
            except Exception as exc:  # noqa: BLE001 - told in the page and the log
                # One tab's failure leaves that tab as built (or as its `if_failed`
                # says); the rest of the page and its live feed work as usual.
                self._failed_to_load(loader, exc)
                # It may read state, as loaders do: not on the event loop.
                shown.update(await anyio.to_thread.run_sync(_if_failed, loader))
                continue
            shown.update(answer)
        return Seen(versions, lazy_at, tuple(sorted(servers.items())),
                    tuple(part.opened_with for part in self._parts)), shown

    @staticmethod
    def _failed_to_load(loader: TabLoader, error: BaseException) -> None:
        """Told in the page (a toast) and, when it is not a refusal, in the log."""
        if isinstance(error, gr.Error):
            gr.Warning(str(error.message))
            return
        log.error("%s failed while a page opened", _name(loader.fn), exc_info=error)
        gr.Warning("Part of this page could not be filled; reload it to try again. "
                   "The dashboard's log says why.")

    def attach(self, page: gr.Blocks) -> gr.Timer:
        """Wire the page's load and tick (inside the page's Blocks, after every loader and
        part was added)."""
        services = self._services
        seen = gr.State(None)  # the Seen of this page
        # Started by the load's answer: no tick may record versions before the page shows
        # the load's drawing (see the module's docstring).
        timer = gr.Timer(TICK_S, active=False)
        inputs = [seen, *(c for part in self._parts for c in part.inputs)]
        outputs = [seen, *(c for part in self._parts for c in part.outputs)]
        loaded = [c for loader in self._loaders for c in loader.outputs]
        if len({id(c) for c in loaded}) != len(loaded):
            raise ValueError("a component is filled by two loaders")

        async def load(request: gr.Request) -> dict[Any, Any]:
            first, shown = await self.load(request)
            return {seen: first, timer: gr.Timer(active=True), **shown}

        page.load(load, None, [seen, timer, *loaded], concurrency_limit=MAX_OPENING_PAGES,
                  concurrency_id="page-load", api_visibility="private")

        async def tick(last: Seen | None, *rest: Any) -> list[Any]:
            *values, request = rest
            try:
                user = await anyio.to_thread.run_sync(user_of, services, request)
            except gr.Error:
                # The session ended: say so once per wait, not on every tick.
                await asyncio.sleep(HOLD_S)
                raise
            services.monitor.touch()
            try:
                with refusals(f"live update for {user.email}"):
                    return await self.answer(user, last, values,
                                             getattr(request, "session_hash", None))
            except Exception:
                # Not again at once: the page's Seen did not move, so the next tick
                # (TICK_S later) would fail the same way.
                await asyncio.sleep(HOLD_S)
                raise

        params = [inspect.Parameter(f"value_{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD)
                  for i in range(len(inputs))]
        params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        annotation=gr.Request))
        # Gradio passes the request where the signature (and hints) name gr.Request.
        tick.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        tick.__annotations__ = {"request": gr.Request}
        timer.tick(tick, inputs, outputs, show_progress="hidden", trigger_mode="once",
                   concurrency_limit=MAX_WAITING_PAGES, concurrency_id="live",
                   api_visibility="private")
        return timer


def _if_failed(loader: TabLoader) -> dict[Any, Any]:
    """What a tab whose load failed shows instead (nothing if that fails too)."""
    if loader.if_failed is None:
        return {}
    try:
        return loader.if_failed()
    except Exception:  # noqa: BLE001 - the tab stays as built; the log says why
        log.exception("%s failed as well", _name(loader.if_failed))
        return {}


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", fn))
