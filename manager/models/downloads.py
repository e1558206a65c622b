"""Background downloads into the standard Hugging Face cache: pause, resume, cancel.

Why not one `snapshot_download` call: huggingface_hub 2.x writes each file to a
process-unique temporary name and deletes it when a transfer stops, so a stopped
download could never continue. Here each file goes to `blobs/<etag>.incomplete`,
which survives a pause, a lost connection or a dashboard restart; each network read
is written before it is counted, so a pause keeps every byte and resuming sends a
`Range` request for exactly the rest (transfer.py). The snapshot folder and
`refs/main` are written only when every file is complete, so other tools (mlx_lm,
`scan_cache_dir`) never see a half model.

State lives in SQLite (table `downloads`) so the list survives page reloads and
restarts; unfinished downloads are queued again by `start_workers()`. Live progress
is kept in memory behind one lock and read by `snapshot()` (what UI timers call).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from huggingface_hub import hf_hub_url
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import build_hf_headers

from manager.accounts.auth import User
from manager.accounts.permissions import Action, Owned, require
from manager.clock import utc_now
from manager.errors import Conflict, ManagerError, NotFound, ValidationError
from manager.models.download_types import (
    DownloadStatus,
    DownloadView,
    Job,
    Stopped,
    network_message,
)
from manager.models.hf_cache import PARTIAL_SUFFIX, CacheFolder, default_free_space
from manager.models.hub import NETWORK_ERRORS, DownloadPlan, HubClient, PlannedFile
from manager.models.transfer import RETRY_WAIT_S, fetch_rest
from manager.store import Store, inserted_id
from manager.units import format_bytes

log = logging.getLogger(__name__)

FILE_WORKERS = 8  # files of one download fetched at once, as snapshot_download does
_SPEED_WINDOW_S = 5.0
_SAMPLE_EVERY_S = 0.2


class DownloadManager:
    """Runs downloads in worker threads (at most `max_concurrent` at once)."""

    def __init__(
        self,
        store: Store,
        hub: HubClient,
        *,
        cache_dir: Path,
        max_concurrent: int = 2,
        file_workers: int = FILE_WORKERS,
        free_space: Callable[[Path], int] = default_free_space,
        on_finished: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
        retry_wait_s: float = RETRY_WAIT_S,
    ) -> None:
        if retry_wait_s < 0:
            raise ValueError(f"retry_wait_s must be 0 or more, not {retry_wait_s}")
        self.store = store
        self.hub = hub
        self.cache_dir = Path(cache_dir)
        self.max_concurrent = max(1, max_concurrent)
        self.file_workers = max(1, file_workers)
        self.cache = CacheFolder(self.cache_dir, free_space)
        self.on_finished = on_finished
        #: Called (lock held: keep it quick) on every status change and progress step.
        self.on_change = on_change or (lambda: None)
        self.clock = clock
        #: Seconds between the retries of a lost connection (transfer.RETRIES of them
        #: without progress before the download fails, resumable).
        self.retry_wait_s = retry_wait_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[int, Job] = {}
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------
    def start_workers(self) -> None:
        """Load unfinished downloads from SQLite, queue the ones that were running."""
        with self._lock:
            if self._workers or self._closed:
                return
            with self.store.reading() as db:
                rows = list(db.query(
                    "SELECT * FROM downloads WHERE status NOT IN (?, ?) ORDER BY id",
                    [DownloadStatus.DONE.value, DownloadStatus.CANCELLED.value]))
            requeue = []
            for row in rows:
                status = DownloadStatus(row["status"])
                if status.active:
                    status = DownloadStatus.QUEUED
                    requeue.append(row["id"])
                self._jobs[row["id"]] = Job(row["id"], row["repo_id"], status, row["revision"],
                                             row["bytes_total"], row["created_by"], row["error"],
                                             base_bytes=row["bytes_done"] or 0)
            for index in range(self.max_concurrent):
                worker = threading.Thread(target=self._work, name=f"download-{index}",
                                          daemon=True)
                worker.start()
                self._workers.append(worker)
        for job_id in requeue:
            log.info("resuming download %s after a restart", job_id)
            self._queue.put(job_id)

    def _ensure_workers(self) -> None:
        # A CLI-built Services does not start workers; a download asked for still runs.
        with self._lock:
            started = bool(self._workers)
        if not started:
            self.start_workers()

    def close(self, timeout: float = 10.0) -> None:
        """Stop transfers (they stay queued in SQLite and resume on the next start)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for job in self._jobs.values():
                if job.status is DownloadStatus.RUNNING:
                    job.stop = "shutdown"
            workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("download worker %s did not stop in time", worker.name)

    # -- actions ----------------------------------------------------------------------
    def start(self, actor: User | None, repo_id: str) -> DownloadView:
        """Plan (hub calls), check disk space, then queue. Raises ManagerError subclasses.
        The download belongs to `actor` (None: the manager itself, e.g. the CLI)."""
        require(actor, Action.MODEL_DOWNLOAD)
        user_id = actor.id if actor is not None else None
        repo_id = repo_id.strip()
        self._ensure_workers()
        with self._lock:
            self._check_open()
            busy = self._unfinished_for(repo_id)
        if busy is not None:
            raise Conflict(f"{repo_id} is already in the download list ({busy.status.value}).")
        plan = self.hub.plan(repo_id)
        self.cache.check_disk(plan)
        now = utc_now()
        with self._lock:
            if (busy := self._unfinished_for(repo_id)) is not None:
                raise Conflict(f"{repo_id} is already in the download list "
                               f"({busy.status.value}).")
            with self.store.connect() as db:
                cursor = db.execute(
                    "INSERT INTO downloads (repo_id, revision, status, bytes_done, bytes_total, "
                    "created_by, created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?, ?, ?)",
                    [repo_id, plan.revision, DownloadStatus.QUEUED.value, plan.total_bytes,
                     user_id, now, now])
                job_id = inserted_id(cursor)
            job = Job(job_id, repo_id, DownloadStatus.QUEUED, plan.revision, plan.total_bytes,
                       user_id)
            job.base_bytes = self.cache.bytes_on_disk(plan)
            self._jobs[job_id] = job
            view = self._view(job)
            self._changed.notify_all()
        log.info("download %s of %s queued (%s)", job_id, repo_id, format_bytes(plan.total_bytes))
        self._queue.put(job_id)
        return view

    def pause(self, actor: User | None, job_id: int) -> DownloadView:
        with self._lock:
            job = self._controlled(actor, job_id)
            if job.status is DownloadStatus.RUNNING:
                job.stop = "pause"
            elif job.status is DownloadStatus.QUEUED:
                self._set_status(job, DownloadStatus.PAUSED)
            else:
                raise ValidationError(f"Only a running download can be paused "
                                      f"({job.repo_id} is {job.status.value}).")
            return self._view(job)

    def resume(self, actor: User | None, job_id: int) -> DownloadView:
        self._ensure_workers()
        with self._lock:
            self._check_open()
            job = self._controlled(actor, job_id)
            if not job.status.resumable:
                raise ValidationError(f"{job.repo_id} is {job.status.value}; only a paused or "
                                      "failed download can be resumed.")
            job.error = None
            self._set_status(job, DownloadStatus.QUEUED)
            view = self._view(job)
        self._queue.put(job_id)
        return view

    def cancel(self, actor: User | None, job_id: int) -> DownloadView:
        """Stop and remove the partial files. A running transfer cleans up in its thread."""
        with self._lock:
            job = self._controlled(actor, job_id)
            if job.status.finished:
                raise ValidationError(f"{job.repo_id} is already {job.status.value}.")
            if job.status is DownloadStatus.RUNNING:
                job.stop = "cancel"
                return self._view(job)
            self._set_status(job, DownloadStatus.CANCELLED)
            view = self._view(job)
        self.cache.discard_partials(job.repo_id)
        return view

    # -- reading ------------------------------------------------------------------------
    def snapshot(self) -> list[DownloadView]:
        """Unfinished downloads (queued, running, paused, failed), newest first. No I/O."""
        with self._lock:
            return [self._view(j) for j in sorted(self._jobs.values(), key=lambda j: -j.id)
                    if not j.status.finished]

    def get(self, job_id: int) -> DownloadView:
        with self._lock:
            return self._view(self._job(job_id))

    def downloaded_by(self, repo_id: str) -> set[int]:
        """Users who downloaded this repo through the dashboard (they may delete it)."""
        with self.store.reading() as db:
            rows = db.query("SELECT DISTINCT created_by FROM downloads WHERE repo_id = ? AND "
                            "status = ? AND created_by IS NOT NULL",
                            [repo_id, DownloadStatus.DONE.value])
            return {int(r["created_by"]) for r in rows}

    def wait(self, job_id: int, timeout: float = 60.0,
             until: Callable[[DownloadView], bool] | None = None) -> DownloadView:
        """Block until the download leaves QUEUED/RUNNING (or `until` holds); for tests/CLI."""
        check = until or (lambda v: not v.status.active)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                view = self._view(self._job(job_id))
                if check(view):
                    return view
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"download {job_id} still {view.status.value}")
                self._changed.wait(timeout=min(left, 0.5))

    # -- worker -----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                job = self._jobs.get(job_id)
                if job is None or job.status is not DownloadStatus.QUEUED or self._closed:
                    continue
                job.stop = None
                job.file_bytes.clear()
                job.samples.clear()
                self._set_status(job, DownloadStatus.RUNNING)
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            plan = self.hub.plan(job.repo_id, revision=job.revision)
            with self._lock:
                job.revision = plan.revision
                job.bytes_total = plan.total_bytes
                job.base_bytes = self.cache.bytes_on_disk(plan, partials=False)
            self.cache.check_disk(plan)
            self._fetch_all(job, plan)
            self.cache.link_snapshot(plan)
        except Stopped as stop:
            self._stopped(job, stop.reason)
            return
        except ManagerError as exc:
            self._fail(job, exc.message, exc)
            return
        except GatedRepoError as exc:
            self._fail(job, f"{job.repo_id} is gated and the token has no access: ask for "
                       "access on Hugging Face, then Resume.", exc)
            return
        except RepositoryNotFoundError as exc:
            self._fail(job, f"{job.repo_id} is no longer on Hugging Face.", exc)
            return
        except HfHubHTTPError as exc:
            self._fail(job, f"Hugging Face answered with an error ({str(exc).splitlines()[0]}). "
                       "Partial files are kept: press Resume to try again.", exc)
            return
        except NETWORK_ERRORS as exc:
            self._fail(job, network_message(exc, job.done), exc)
            return
        except Exception as exc:  # noqa: BLE001 - a worker must never die silently
            log.exception("download %s of %s failed unexpectedly", job.id, job.repo_id)
            self._fail(job, f"Download failed: {exc}. Partial files are kept: press Resume "
                       "to try again.", exc)
            return
        with self._lock:
            job.base_bytes = plan.total_bytes
            job.file_bytes.clear()
            job.error = None
            job.stop = None
            self._set_status(job, DownloadStatus.DONE)
        log.info("download %s of %s finished", job.id, job.repo_id)
        if self.on_finished is not None:
            self.on_finished(job.repo_id)

    def _fetch_all(self, job: Job, plan: DownloadPlan) -> None:
        pending = [f for f in plan.files if not self.cache.blob(plan, f).exists()]
        if not pending:
            return
        with ThreadPoolExecutor(max_workers=min(self.file_workers, len(pending)),
                                thread_name_prefix=f"download-{job.id}-file") as pool:
            futures = [pool.submit(self._fetch_file, job, plan, f) for f in pending]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            first_error = next((f.exception() for f in done if f.exception()), None)
            if first_error is not None:
                with self._lock:
                    # Stop the sibling transfers; keep a pause/cancel asked for meanwhile.
                    job.stop = job.stop or "abort"
        errors = [e for f in futures if (e := f.exception()) is not None]
        if not errors:
            return
        # A pause/cancel of the user wins over the "abort" echoes in other files.
        stops = [e for e in errors if isinstance(e, Stopped) and e.reason != "abort"]
        real = [e for e in errors if not isinstance(e, Stopped)]
        raise (real[0] if real and not stops else stops[0] if stops else errors[0])

    def _fetch_file(self, job: Job, plan: DownloadPlan, planned: PlannedFile) -> None:
        blob = self.cache.blob(plan, planned)
        partial = blob.with_name(planned.etag + PARTIAL_SUFFIX)
        blob.parent.mkdir(parents=True, exist_ok=True)
        url = hf_hub_url(plan.repo_id, planned.path, revision=plan.revision,
                         endpoint=self.hub.config.endpoint)
        headers = build_hf_headers(token=self.hub.config.token,
                                   library_name="mlx-model-manager")
        with open(partial, "ab") as fh:
            resume = fh.tell()
            if resume > planned.size:
                log.warning("partial %s is larger than the file; starting it again", partial)
                fh.truncate(0)
                resume = 0
            self._file_started(job, planned.path, resume)
            fetch_rest(url, fh, size=planned.size, headers=headers,
                       on_bytes=lambda n: self._advance(job, planned.path, n),
                       retry_wait_s=self.retry_wait_s)
        os.replace(partial, blob)

    # -- progress hooks (called from transfer threads) ------------------------------------
    def _file_started(self, job: Job, path: str, initial: int) -> None:
        with self._lock:
            job.file_bytes[path] = initial
            if not job.samples:  # the speed's starting point: the first request
                job.samples.append((self.clock(), job.done))

    def _advance(self, job: Job, path: str, n: int) -> None:
        """`n` bytes of `path` are on disk. Raises Stopped after counting them when a
        pause, cancel or shutdown was asked for: the transfer ends with nothing lost."""
        with self._lock:
            job.file_bytes[path] = job.file_bytes.get(path, 0) + n
            now = self.clock()
            # The first figure at once (speed and ETA from the first update), then a
            # sample per interval over a sliding window.
            if len(job.samples) < 2 or now - job.samples[-1][0] >= _SAMPLE_EVERY_S:
                job.samples.append((now, job.done))
                while len(job.samples) > 2 and now - job.samples[0][0] > _SPEED_WINDOW_S:
                    job.samples.popleft()
            self._changed.notify_all()
            self.on_change()
            if job.stop is not None:
                raise Stopped(job.stop)

    # -- outcomes ---------------------------------------------------------------------------
    def _stopped(self, job: Job, reason: str) -> None:
        if reason == "cancel":
            self.cache.discard_partials(job.repo_id)
            with self._lock:
                self._set_status(job, DownloadStatus.CANCELLED)
            log.info("download %s of %s cancelled; partial files removed", job.id, job.repo_id)
        elif reason == "shutdown":
            with self._lock:
                # Still unfinished in SQLite: the next start resumes it.
                job.status = DownloadStatus.QUEUED
                self._persist(job)
            log.info("download %s of %s stopped for shutdown", job.id, job.repo_id)
        else:
            with self._lock:
                self._set_status(job, DownloadStatus.PAUSED)
            log.info("download %s of %s paused at %s", job.id, job.repo_id,
                     format_bytes(job.done))

    def _fail(self, job: Job, message: str, exc: BaseException) -> None:
        log.warning("download %s of %s failed: %s (%s: %s)", job.id, job.repo_id, message,
                    type(exc).__name__, exc)
        with self._lock:
            job.error = message
            self._set_status(job, DownloadStatus.FAILED)

    def storage(self, repo_id: str) -> Path:
        return self.cache.storage(repo_id)

    # -- state ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ManagerError("The dashboard is shutting down; try again after it restarts.")

    def _job(self, job_id: int) -> Job:
        job = self._jobs.get(int(job_id))
        if job is None:
            raise NotFound(f"Download {job_id} does not exist (it may have finished).")
        return job

    def _controlled(self, actor: User | None, job_id: int) -> Job:
        """The job, if `actor` may pause, resume or cancel it (caller holds the lock)."""
        job = self._job(job_id)
        require(actor, Action.DOWNLOAD_CONTROL, Owned.by(job.created_by))
        return job

    def _unfinished_for(self, repo_id: str) -> Job | None:
        return next((j for j in self._jobs.values()
                     if j.repo_id == repo_id and not j.status.finished), None)

    def _set_status(self, job: Job, status: DownloadStatus) -> None:
        """Every status change goes through here (caller holds the lock)."""
        if job.status is not status:
            log.info("download %s of %s: %s -> %s", job.id, job.repo_id, job.status.value,
                     status.value)
        job.status = status
        self._persist(job)
        self._changed.notify_all()
        self.on_change()

    def _persist(self, job: Job) -> None:
        now = utc_now()
        finished = now if job.status.finished else None
        with self.store.connect() as db:
            db.execute(
                "UPDATE downloads SET status = ?, revision = ?, bytes_done = ?, bytes_total = ?, "
                "error = ?, updated_at = ?, finished_at = ? WHERE id = ?",
                [job.status.value, job.revision, job.done, job.bytes_total, job.error, now,
                 finished, job.id])

    def _view(self, job: Job) -> DownloadView:
        speed = eta = None
        if job.status is DownloadStatus.RUNNING and len(job.samples) >= 2:
            (t0, b0), (t1, b1) = job.samples[0], job.samples[-1]
            if t1 > t0 and b1 > b0:
                speed = max(0.0, (b1 - b0) / (t1 - t0))
                if speed > 0 and job.bytes_total:
                    eta = max(0.0, (job.bytes_total - job.done) / speed)
        return DownloadView(job.id, job.repo_id, job.status, job.done, job.bytes_total, speed,
                            eta, job.error, job.created_by, job.revision)
