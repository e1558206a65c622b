"""The Models tab: find MLX models on Hugging Face, download them, manage local ones.

A sticky search/filter bar sits over a scrollable list of tiles. Downloads show as
tiles at the top (their model's ordinary tile is hidden meanwhile). The page's live
feed (components/live.py) redraws the strip when a download moves, from the download
manager's in-memory snapshot; the list is re-rendered only when the set of downloads
changes (and then from state already held, or a warm library scan), never with hub
calls. Every action resolves the user on the server.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from components.live import LivePart
from components.session import TabLoader, handler
from components.views import (
    download_tile_html,
    local_tile_html,
    remote_tile_html,
    tile_list_html,
)
from manager.accounts.auth import User
from manager.accounts.permissions import Action, Owned, allowed
from manager.changes import Topic
from manager.errors import ValidationError
from manager.models.capabilities import fit, memory_budget_bytes
from manager.models.download_types import DownloadView
from manager.models.filters import ModelFilter
from manager.models.hub import (
    KNOWN_AUTHORS,
    PAGE_SIZE,
    RemoteDetails,
    RemoteModel,
    SearchQuery,
    SearchSession,
)
from manager.services import Services
from manager.units import format_bytes

log = logging.getLogger(__name__)

LOCAL = "On my machine"
REMOTE = "Hugging Face"
ANY_AUTHOR = "any author"
BITS_CHOICES = [("any", "any"), ("2-bit", "2"), ("3-bit", "3"), ("4-bit", "4"),
                ("5-bit", "5"), ("6-bit", "6"), ("8-bit", "8"), ("16/32-bit (unquantized)", "16")]
FIT_CHOICES = [("any", "any"), ("fits (green)", "fits"), ("fits or tight", "fits_or_tight")]
SORT_CHOICES = [("most downloads", "downloads"), ("most likes", "likes"), ("recently updated", "recent")]

# One delegated listener: tile buttons become a "click" event carrying action + target.
TILE_JS = """
element.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-action]');
  if (!button || button.disabled || button.dataset.action === 'noop') return;
  trigger('click', {action: button.dataset.action, target: button.dataset.target});
});
"""


@dataclass(frozen=True)
class RemoteItem:
    model: RemoteModel
    details: RemoteDetails | None


def build_filter(text: str, arch: str, multimodal: bool, video: bool, tools: bool,
                 thinking: bool, bits: str | None, min_gb: float | None, max_gb: float | None,
                 fits: str | None) -> ModelFilter:
    # The number boxes show an empty value as 0, so 0 means "no bound" on either side.
    min_gb = min_gb or None
    max_gb = max_gb or None
    if min_gb is not None and max_gb is not None and min_gb > max_gb:
        raise ValidationError("The size range is empty: min is above max.", field="size")
    return ModelFilter(
        text=(text or "").strip(), architecture=(arch or "").strip(), multimodal=bool(multimodal),
        video=bool(video), tool_use=bool(tools), thinking=bool(thinking),
        bits=int(bits) if bits and bits != "any" else None,
        min_gb=float(min_gb) if min_gb not in (None, "") else None,
        max_gb=float(max_gb) if max_gb not in (None, "") else None,
        fits=fits or "any",
    )


def author_of(value: str | None) -> str:
    """The author a search is limited to ("" = any), from the Author box as typed."""
    typed = (value or "").strip()
    return "" if typed == ANY_AUTHOR else typed


def empty_list_text(which: str, downloading: int, nothing_local: bool = False) -> str:
    """What an empty list says: never "no models match" while the only match is the
    download shown above it; with no local model at all, where to get one."""
    if which == REMOTE:
        if downloading:
            return ("The matching model is downloading (above)." if downloading == 1 else
                    f"{downloading} matching models are downloading (above).")
        return "No models match. Search, or loosen the filters."
    if downloading:
        return "Nothing else here yet: the download above lands in this list when it is done."
    if nothing_local:
        return (f"No models on this machine yet. Set Show to “{REMOTE}” and search, or "
                "press “Try a tool-use model” above.")
    return "No local models match. Download one from the Hugging Face view."


def hidden_repos(views: Sequence[DownloadView]) -> set[str]:
    return {v.repo_id for v in views}


def build(services: Services) -> TabLoader:
    hub, library, downloads = services.hub, services.library, services.downloads

    # ---- layout -------------------------------------------------------------------------
    with gr.Column(elem_id="models-panel"):
        with gr.Group(elem_id="models-filterbar"):
            with gr.Row():
                view = gr.Radio([LOCAL, REMOTE], value=LOCAL, label="Show", scale=2,
                                elem_id="models-view")
                text = gr.Textbox(label="Search", placeholder="name, or org/name of a repo",
                                  scale=3, elem_id="models-search")
                # A suggestion list: any typed author (org or user) is searched too.
                author = gr.Dropdown([*KNOWN_AUTHORS, ANY_AUTHOR], value=KNOWN_AUTHORS[0],
                                     label="Author (Hugging Face)", scale=2,
                                     allow_custom_value=True, filterable=True,
                                     info="Pick one, or type any author.",
                                     elem_id="models-author")
                sort = gr.Dropdown(SORT_CHOICES, value="downloads", label="Sort", scale=2,
                                   elem_id="models-sort")
                mlx_only = gr.Checkbox(value=True, label="MLX only", scale=1,
                                       elem_id="models-mlx-only")
                search = gr.Button("Search", variant="primary", scale=1,
                                   elem_id="models-search-button")
            with gr.Row():
                arch = gr.Textbox(label="Architecture", placeholder="e.g. qwen3", scale=2,
                                  elem_id="models-arch")
                multimodal = gr.Checkbox(label="Vision", elem_id="models-f-vision")
                video = gr.Checkbox(label="Video", elem_id="models-f-video")
                tools = gr.Checkbox(label="Tool use", elem_id="models-f-tools")
                thinking = gr.Checkbox(label="Thinking", elem_id="models-f-thinking")
                bits = gr.Dropdown(BITS_CHOICES, value="any", label="Quantization",
                                   elem_id="models-f-bits")
                min_gb = gr.Number(label="Min GB", value=None, minimum=0,
                                   elem_id="models-f-min")
                max_gb = gr.Number(label="Max GB", value=None, minimum=0, info="0 = no limit",
                                   elem_id="models-f-max")
                fits = gr.Dropdown(FIT_CHOICES, value="any", label="Fits in memory",
                                   elem_id="models-f-fits")
        status = gr.Markdown(elem_id="models-status")
        downloads_html = gr.HTML(tile_list_html([], ""), js_on_load=TILE_JS,
                                 elem_id="models-downloads")
        list_html = gr.HTML(tile_list_html([], "Loading…"), js_on_load=TILE_JS,
                            elem_id="models-list")
        load_more = gr.Button("Load more", visible=False, elem_id="models-load-more")
        with gr.Row(visible=False, elem_id="models-confirm") as confirm_row:
            confirm_text = gr.Markdown()
            confirm = gr.Button("Yes, delete", variant="stop", elem_id="models-confirm-delete")
            keep = gr.Button("Keep it", elem_id="models-keep")
        with gr.Accordion("Extra model folders (admin)", open=False, visible=False,
                          elem_id="models-folders") as folders_box:
            gr.Markdown("Folders holding models outside the Hugging Face cache, such as "
                        "LM Studio's `~/.lmstudio/models` (org/name folders with config.json).")
            folders_md = gr.Markdown(elem_id="models-folders-list")
            with gr.Row():
                folder_path = gr.Textbox(label="Folder path", scale=3,
                                         elem_id="models-folder-path")
                add_folder = gr.Button("Add folder", scale=1, elem_id="models-folder-add")
            with gr.Row():
                folder_pick = gr.Dropdown(label="Folder", choices=[], scale=3,
                                          elem_id="models-folder-pick")
                remove_folder = gr.Button("Remove from list", scale=1,
                                          elem_id="models-folder-remove")
        # API-only twin of the tile buttons (gradio_client cannot send click data).
        with gr.Row(visible=False):
            api_action = gr.Textbox(elem_id="models-api-action")
            api_target = gr.Textbox(elem_id="models-api-target")
            api_button = gr.Button(elem_id="models-api-button")

    session = gr.State(None)  # SearchSession of this browser
    remote = gr.State([])  # list[RemoteItem] shown in the Hugging Face view
    shown = gr.State(None)  # which downloads the list was last rendered against
    pending_delete = gr.State("")

    filt_state = gr.State(ModelFilter())
    filter_boxes: list[gr.Textbox | gr.Checkbox | gr.Dropdown | gr.Number] = [
        arch, multimodal, video, tools, thinking, bits, min_gb, max_gb, fits]

    # ---- rendering (pure formatting + warm library scan) ------------------------------------
    def can_control(user: User, download: DownloadView) -> bool:
        return allowed(user, Action.DOWNLOAD_CONTROL, Owned.by(download.created_by))

    def downloads_part(user: User, views: list[DownloadView]) -> str:
        tiles = [download_tile_html(v, can_control=can_control(user, v)) for v in views]
        return tile_list_html(tiles, "") if tiles else ""

    def list_part(user: User, which: str, filt: ModelFilter, items: list[RemoteItem],
                  views: list[DownloadView]) -> str:
        hidden = hidden_repos(views)
        budget = memory_budget_bytes()
        local = library.scan()
        if which == REMOTE:
            on_machine = {m.name for m in local if m.complete}
            tiles = []
            downloading = 0
            for item in items:
                if item.model.repo_id in hidden:
                    downloading += 1
                    continue
                caps = item.details.caps if item.details else None
                model_fit = fit(caps, None, budget) if caps else None
                if caps is not None and item.details is not None and not filt.matches(
                        item.model.repo_id, caps, model_fit, item.details.total_bytes):
                    continue
                tiles.append(remote_tile_html(item.model, item.details, model_fit,
                                              on_machine=item.model.repo_id in on_machine))
            return tile_list_html(tiles, empty_list_text(REMOTE, downloading))
        tiles = []
        measured = services.tool_check.results.latest_by_model(results=False)
        for model in local:
            if model.name in hidden:
                continue
            model_fit = fit(model.caps, None, budget)
            if not filt.matches(model.name, model.caps, model_fit, model.size_bytes):
                continue
            may_delete = allowed(user, Action.MODEL_DELETE, library.owners(model))
            tiles.append(local_tile_html(
                model, model_fit, can_delete=may_delete,
                measured=measured.get(model.name) or measured.get(str(model.path))))
        return tile_list_html(tiles, empty_list_text(
            LOCAL, len(hidden) if all(m.name in hidden for m in local) else 0,
            nothing_local=not local))

    def signature(which: str, filt: ModelFilter, items: list[RemoteItem],
                  views: list[DownloadView]) -> tuple:
        """What the list was drawn for: the view, filter and hits, and each download's
        status (a download that starts, ends or stops moves a tile)."""
        return (which, filt, tuple(item.model.repo_id for item in items),
                tuple(sorted((v.id, v.status.value) for v in views)))

    def render(user: User, which: str, filt: ModelFilter,
               items: list[RemoteItem]) -> dict[Any, Any]:
        """The downloads strip, the list of tiles and what the list was drawn for."""
        views = downloads.snapshot()
        return {downloads_html: downloads_part(user, views),
                list_html: list_part(user, which, filt, items, views),
                shown: signature(which, filt, items, views)}

    def more_visible(which: str, sess: object) -> gr.Button:
        exhausted = getattr(sess, "exhausted", True)
        return gr.Button(visible=which == REMOTE and not exhausted)

    # ---- search and filters -----------------------------------------------------------------
    @handler(services, "search")
    def run_search(user: User, which: str, text_v: str, author_v: str, sort_v: str,
                   mlx_v: bool, filt: ModelFilter) -> dict[Any, Any]:
        filt = replace(filt or ModelFilter(), text=(text_v or "").strip())
        items: list[RemoteItem] = []
        sess = None
        if which == REMOTE:
            typed = filt.text
            if typed.count("/") == 1 and " " not in typed:
                # A typed org/name: that repo, or a clear reason why it cannot be shown.
                model = hub.lookup(typed)
                items = [RemoteItem(model, hub.details(model))]
            else:
                sess = hub.search(SearchQuery(
                    text=typed, author=author_of(author_v),
                    mlx_only=bool(mlx_v), sort=sort_v or "downloads"))
                items = _fetch_page(sess)
        return {**render(user, which, filt, items), session: sess, remote: items,
                load_more: more_visible(which, sess), filt_state: filt, status: ""}

    def _fetch_page(sess: SearchSession) -> list[RemoteItem]:
        page = sess.next_page(PAGE_SIZE)
        return [RemoteItem(m, d) for m, d in zip(page, hub.details_many(page), strict=True)]

    @handler(services, "loading more models")
    def more(user: User, which: str, sess: SearchSession | None, items: list[RemoteItem],
             filt: ModelFilter) -> dict[Any, Any]:
        if sess is None:
            raise gr.Error("Search first.")
        items = [*items, *_fetch_page(sess)]
        return {**render(user, which, filt, items), remote: items,
                load_more: more_visible(which, sess)}

    @handler(services, "filters")
    def on_filters(user: User, which: str, items: list[RemoteItem], filt: ModelFilter,
                   arch_v: str, mm: bool, vid: bool, tl: bool, th: bool, bits_v: str | None,
                   mn: float | None, mx: float | None, fits_v: str | None
                   ) -> dict[Any, Any]:
        new = build_filter((filt or ModelFilter()).text, arch_v, mm, vid, tl, th, bits_v,
                           mn, mx, fits_v)
        return {**render(user, which, new, items), filt_state: new}

    # ---- actions ---------------------------------------------------------------------------
    def act(user: User, action: str, target: str) -> str:
        if action == "download":
            started = downloads.start(user, target)
            return f"Downloading {started.repo_id}."
        if action in ("pause", "resume", "cancel"):
            if not target.isdigit():
                raise ValidationError("Which download? The id is missing.")
            control = {"pause": downloads.pause, "resume": downloads.resume,
                       "cancel": downloads.cancel}[action]
            changed = control(user, int(target))
            return f"{changed.repo_id}: {action} requested."
        if action == "delete":
            deleted = library.delete(user, target)
            return f"Deleted {deleted.name}."
        raise ValidationError(f"Unknown action {action!r}.")

    @handler(services, "models tile action")
    def on_tile(user: User, which: str, items: list[RemoteItem], filt: ModelFilter,
                evt: gr.EventData) -> dict[Any, Any]:
        data = getattr(evt, "_data", None) or {}
        action, target = str(data.get("action", "")), str(data.get("target", ""))
        if action == "delete":
            # Deleting is final: it takes a second, explicit click.
            model = library.find(target)
            question = (f"**Delete {model.name}** ({format_bytes(model.size_bytes)}) from "
                        "this machine? Its files are removed for good.")
            return {**render(user, which, filt, items), confirm_row: gr.Row(visible=True),
                    confirm_text: question, pending_delete: target, status: ""}
        message = act(user, action, target)
        return {**render(user, which, filt, items), confirm_row: gr.Row(visible=False),
                confirm_text: "", pending_delete: "", status: message}

    @handler(services, "models action")
    def on_api(user: User, action: str, target: str) -> str:
        return act(user, (action or "").strip(), (target or "").strip())

    @handler(services, "model delete")
    def on_confirm(user: User, which: str, items: list[RemoteItem], filt: ModelFilter,
                   target: str) -> dict[Any, Any]:
        if not target:
            raise gr.Error("Nothing to delete.")
        message = act(user, "delete", target)
        return {**render(user, which, filt, items), confirm_row: gr.Row(visible=False),
                pending_delete: "", status: message}

    # ---- live: snapshot only ---------------------------------------------------------------
    def tick(user: User, which: str, items: list[RemoteItem], filt: ModelFilter,
             last: tuple | None) -> tuple:
        views = downloads.snapshot()
        filt = filt or ModelFilter()
        sig = signature(which, filt, items, views)
        dl = downloads_part(user, views)
        if sig == last:
            return dl, gr.skip(), sig, gr.skip()
        # A download started, finished or stopped: the list changes (tile hidden / landed),
        # and a line such as "resume requested." is no longer news (the tile says it).
        # Or the list was drawn for another view or filter (see LivePart.follows).
        return dl, list_part(user, which, filt, items, views), sig, ""

    # ---- admin: extra folders -------------------------------------------------------------
    def folders_view() -> tuple:
        listed = library.folders()
        lines = "\n".join(f"- `{f.path}`" for f in listed) or "_No extra folders._"
        return lines, gr.Dropdown(choices=[(str(f.path), f.id) for f in listed], value=None)

    @handler(services, "adding a model folder")
    def on_add_folder(user: User, path: str) -> tuple:
        folder = library.add_folder(user, path)
        return (*folders_view(), "", f"Added {folder.path}.")

    @handler(services, "removing a model folder")
    def on_remove_folder(user: User, folder_id: int | None) -> tuple:
        if folder_id is None:
            raise gr.Error("Pick a folder first.")
        library.remove_folder(user, int(folder_id))
        return (*folders_view(), "Folder removed from the list (its files are untouched).")

    # ---- wiring ---------------------------------------------------------------------------
    search_inputs = [view, text, author, sort, mlx_only, filt_state]
    search_outputs = [downloads_html, list_html, shown, session, remote, load_more, filt_state,
                      status]
    search.click(run_search, search_inputs, search_outputs, api_name="models_search")
    text.submit(run_search, search_inputs, search_outputs)
    view.change(run_search, search_inputs, search_outputs, show_progress="minimal")
    load_more.click(more, [view, session, remote, filt_state],
                    [downloads_html, list_html, shown, remote, load_more],
                    api_name="models_load_more")
    for box in filter_boxes:
        box.change(on_filters, [view, remote, filt_state, *filter_boxes],
                   [downloads_html, list_html, shown, filt_state], show_progress="hidden")
    tile_outputs = [downloads_html, list_html, shown, confirm_row, confirm_text,
                    pending_delete, status]
    for area in (downloads_html, list_html):
        area.click(on_tile, [view, remote, filt_state], tile_outputs, show_progress="hidden")
    api_button.click(on_api, [api_action, api_target], status, api_name="models_action")
    confirm.click(on_confirm, [view, remote, filt_state, pending_delete],
                  [downloads_html, list_html, shown, confirm_row, pending_delete, status])
    keep.click(lambda: (gr.Row(visible=False), ""), None, [confirm_row, pending_delete])
    add_folder.click(on_add_folder, folder_path,
                     [folders_md, folder_pick, folder_path, status], api_name="models_add_folder")
    remove_folder.click(on_remove_folder, folder_pick, [folders_md, folder_pick, status],
                        api_name="models_remove_folder")

    # What the page shows when it opens: the view, hits and filter the load draws for.
    opened_with: tuple[str, list[RemoteItem], ModelFilter] = (LOCAL, [], ModelFilter())

    @handler(services, "models tab load")
    def load(user: User) -> dict[Any, Any]:
        may_manage = allowed(user, Action.MANAGE_FOLDERS)
        folder_lines, picker = folders_view() if may_manage else ("", gr.Dropdown())
        which, items, filt = opened_with
        return {**render(user, which, filt, items),
                folders_box: gr.Accordion(visible=may_manage), folders_md: folder_lines,
                folder_pick: picker}

    return TabLoader(load, [downloads_html, list_html, shown, folders_box, folders_md,
                            folder_pick],
                     live=(LivePart(frozenset({Topic.DOWNLOADS}), tick,
                                    [downloads_html, list_html, shown, status],
                                    inputs=[view, remote, filt_state, shown],
                                    follows=[view, remote, filt_state],
                                    opened_with=opened_with),))

