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

A database that is unavailable (locked by another process past `lock_wait`, its
connections lost, the server down) or a process out of memory fails the requests with
`StorageUnavailable` (503): a lost connection is tried again a few times first, a lock
that was waited for is not. Either way nothing was committed, and nothing is answered 200.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from nurture import memory
from nurture.clock import Clock
from nurture.errors import StorageUnavailable
from nurture.ingest.identity import ConcurrentWrite
from nurture.ingest.service import (
    BatchResult,
    DuplicateFound,
    IngestStore,
    ParsedBatch,
    store_rejections,
)
from nurture.segments.queue import Due
from nurture.store import Database

log = logging.getLogger(__name__)
_RETRIES = 8
_CHECKED_AFTER_DUPLICATE = 50
_RECONNECTS = 3  # tries after a lost connection, 0.2 s, 0.4 s, 0.8 s apart
# A hook run inside each ingest transaction (see `IngestWriter.in_transaction`).
InTransaction = Callable[[Connection, Due, datetime], Callable[[], None] | None]

LOCK_WAIT = 5.0  # seconds an ingest transaction waits for another writer's lock


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
        lock_wait: float = LOCK_WAIT,
    ) -> None:
        self.db = db
        self.clock = clock
        self.store = store or IngestStore()
        self.max_messages = max_messages
        # A client waits for the answer (SDKs time out after 10-15 s): past this, a 503
        # tells it to come back rather than leaving it hanging.
        self.lock_wait = lock_wait
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._checked_groups = 0
        # Called after each commit (the journey runner wakes up for what it triggered).
        self.on_commit: list[Callable[[], None]] = []
        # Called after a commit that queued contacts for evaluation (the evaluator wakes
        # up for them; contacts the transaction evaluated itself are not queued).
        self.on_queued: list[Callable[[], None]] = []
        # Called inside each ingest transaction, after its events are stored, with the
        # contacts due for evaluation; a hook takes those it evaluates, the rest are then
        # queued. What one returns is called after the commit (`Engine.evaluate_at_ingest`:
        # memberships commit with their events).
        self.in_transaction: list[InTransaction] = []

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
            if item is None or self._work(item):
                return
            # Not held while waiting for the next: a group's events may be megabytes,
            # which a server short of memory needs for the next request.
            del item

    def _work(self, item: _Item) -> bool:
        """Store `item` with what queued behind it; True when told to stop."""
        group = [item]
        stop = False
        try:
            size = len(item.batch.messages) + len(item.batch.rejections)
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
        except Exception as exc:  # out of memory, say: answer them, keep the thread
            if isinstance(exc, MemoryError):
                memory.release()
            for queued in group:
                if not queued.future.done():
                    queued.future.set_exception(_unavailable(exc))
        return stop

    def _commit(self, group: list[_Item]) -> None:
        reconnects = 0
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
                if _connection_lost(exc) and reconnects < _RECONNECTS:
                    reconnects += 1
                    log.warning("ingest lost its database connection, trying again: %s", exc)
                    time.sleep(0.1 * 2**reconnects)
                    continue
                if isinstance(exc, OperationalError):
                    # Locked past lock_wait, or unreachable: not this batch's fault, so
                    # the whole group fails at once instead of waiting again per batch.
                    self._fail_all(group, exc)
                    return
                self._fail(group, exc)
                return
            except PoolTimeout as exc:
                self._fail_all(group, exc)
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
        if isinstance(exc, MemoryError):
            # SQLite could not allocate (its page caches had grown into what was left):
            # closing the idle connections gives their caches back, or the process may
            # stay short of memory for every request that follows.
            memory.release()
        if len(group) > 1:
            # Isolate the batch that caused it; the others still get stored (and a group
            # too large for the memory left may fit one batch at a time).
            for item in group:
                self._commit([item])
            return
        log.exception("ingest batch failed", exc_info=exc)
        group[0].future.set_exception(_unavailable(exc))

    def _fail_all(self, group: list[_Item], exc: Exception) -> None:
        log.error("ingest failed, the database is unavailable: %s", exc)
        for item in group:
            item.future.set_exception(_unavailable(exc))

    def _store(self, group: list[_Item], *, check: bool) -> list[BatchResult]:
        with self.db.write(wait=self.lock_wait) as conn:
            # One ingest transaction at a time across all processes, as on SQLite:
            # concurrent ones would wait on each other's contact and identity rows anyway,
            # and deadlock when two create the same identities.
            self.db.lock_identities(conn)
            now = self.clock.now()
            messages = [m for item in group for m in item.batch.messages]
            due = Due()
            stored = self.store.store(conn, messages, now, check=check, due=due)
            for item in group:
                store_rejections(conn, item.batch.rejections, now)
            after = [hook(conn, due, now) for hook in self.in_transaction]
            queued = due.queue(conn, now)
        for done in after:
            if done is not None:
                done()
        if queued:
            for listener in self.on_queued:
                listener()
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
    serialization failure. Their transaction was rolled back whole."""
    if isinstance(exc, ConcurrentWrite | IntegrityError):
        return True
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return code in ("40001", "40P01")


def _connection_lost(exc: Exception) -> bool:
    """The connection broke (the server restarted, an administrator ended it, the
    network): a new connection may well work at once."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    code = str(getattr(getattr(exc, "orig", None), "sqlstate", None) or "")
    return code.startswith("08") or code in ("57P01", "57P02", "57P03")


def _unavailable(exc: BaseException) -> Exception:
    """What the request's future fails with: `StorageUnavailable` (503, send again) for
    a database that is unavailable or a process out of memory; other errors as they are."""
    if isinstance(exc, StorageUnavailable):
        return exc
    if isinstance(exc, MemoryError):
        error = StorageUnavailable("the server ran out of memory and stored nothing; send again")
    elif isinstance(exc, OperationalError | PoolTimeout):
        error = StorageUnavailable(
            f"the event store is unavailable: {exc.orig or exc}"
            if isinstance(exc, DBAPIError)
            else str(exc)
        )
    elif isinstance(exc, SQLAlchemyError | DuplicateFound):
        error = StorageUnavailable(f"the event store refused the write: {exc}")
    else:
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))
    error.__cause__ = exc
    return error
