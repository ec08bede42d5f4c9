"""The ingest writer: group commit of many requests' batches in one transaction.

An SQLite database takes one writer at a time, and each commit costs an fsync.
Request handlers therefore hand their parsed batch to this writer and wait for
its future; the writer thread takes whatever has queued up (up to
`max_messages`) and stores it in one transaction. A request is answered only
after the commit that holds its messages (DESIGN §9: acknowledged = stored).

On PostgreSQL every process has such a writer, and the writers of all processes
take turns through an advisory lock: parsing and validation run in parallel, the
identity-resolving transaction runs one at a time. A transaction that still loses a
race (with an erase, say) is simply retried: its effects were rolled back whole.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, IntegrityError

from nurture.clock import Clock
from nurture.ingest.identity import ConcurrentWrite
from nurture.ingest.service import (
    BatchResult,
    DuplicateFound,
    IngestStore,
    ParsedBatch,
    store_rejections,
)
from nurture.store import Database

log = logging.getLogger(__name__)
_RETRIES = 8
_CHECKED_AFTER_DUPLICATE = 50


@dataclass
class _Item:
    batch: ParsedBatch
    future: Future[BatchResult]


class IngestWriter:
    """Owns the writer thread (one per process: ingest transactions run one at a time on
    both backends). Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        store: IngestStore | None = None,
        *,
        max_messages: int = 5000,
    ) -> None:
        self.db = db
        self.clock = clock
        self.store = store or IngestStore()
        self.max_messages = max_messages
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._checked_groups = 0
        # Called after each commit (the evaluator wakes up to evaluate the contacts).
        self.on_commit: list[Callable[[], None]] = []

    def start(self) -> IngestWriter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nurture-ingest", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Finish what is queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> IngestWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def submit(self, batch: ParsedBatch) -> Future[BatchResult]:
        """Queue a parsed batch; the future resolves after its commit."""
        if self._thread is None:
            raise RuntimeError("the ingest writer is not running")
        future: Future[BatchResult] = Future()
        self._queue.put(_Item(batch, future))
        return future

    def ingest(self, batch: ParsedBatch) -> BatchResult:
        """Store a batch and wait for the commit."""
        return self.submit(batch).result()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            size = len(item.batch.messages) + len(item.batch.rejections)
            stop = False
            while size < self.max_messages:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
                size += len(nxt.batch.messages) + len(nxt.batch.rejections)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Item]) -> None:
        for attempt in range(_RETRIES):
            try:
                results = self._store(group, check=self._checked_groups > 0)
                self._checked_groups = max(0, self._checked_groups - 1)
            except DuplicateFound:
                # Duplicates come in bursts (an SDK retrying, a file imported again):
                # look stored ids up first for the next groups.
                self._checked_groups = _CHECKED_AFTER_DUPLICATE
                continue
            except (DBAPIError, ConcurrentWrite) as exc:
                if _retryable(exc) and attempt + 1 < _RETRIES:
                    log.info("ingest transaction lost a race, retrying: %s", exc)
                    continue
                self._fail(group, exc)
                return
            except Exception as exc:  # never let one batch kill the writer thread
                self._fail(group, exc)
                return
            for listener in self.on_commit:
                listener()
            for item, result in zip(group, results, strict=True):
                item.future.set_result(result)
            return
        # Every attempt found a duplicate stored meanwhile: give up rather than hang.
        self._fail(group, DuplicateFound(f"still racing after {_RETRIES} attempts"))

    def _fail(self, group: list[_Item], exc: Exception) -> None:
        if len(group) > 1:
            # Isolate the batch that caused it; the others still get stored.
            for item in group:
                self._commit([item])
            return
        log.exception("ingest batch failed", exc_info=exc)
        group[0].future.set_exception(exc)

    def _store(self, group: list[_Item], *, check: bool) -> list[BatchResult]:
        with self.db.write() as conn:
            # One ingest transaction at a time across all processes, as on SQLite:
            # concurrent ones would wait on each other's contact and identity rows anyway,
            # and deadlock when two create the same identities.
            self.db.lock_identities(conn)
            now = self.clock.now()
            messages = [m for item in group for m in item.batch.messages]
            stored = self.store.store(conn, messages, now, check=check)
            for item in group:
                store_rejections(conn, item.batch.rejections, now)
        results = []
        claimed: set[str] = set()
        for item in group:
            result = BatchResult(rejected=item.batch.rejections)
            for m in item.batch.messages:
                if m.message_id in stored and m.message_id not in claimed:
                    claimed.add(m.message_id)
                    result.accepted += 1
                else:
                    result.duplicates += 1
            results.append(result)
        return results


def _retryable(exc: Exception) -> bool:
    """Races with another writer: a unique key taken meanwhile, a deadlock, a
    serialization failure, a lock timeout. Their transaction was rolled back whole."""
    if isinstance(exc, ConcurrentWrite | IntegrityError):
        return True
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None)
    return code in ("40001", "40P01", "55P03") or "database is locked" in str(orig)
