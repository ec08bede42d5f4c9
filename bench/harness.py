"""What the benchmarks share: fresh databases, the `nurture` CLI as a subprocess, an RSS
sampler for a process tree, a cached reference-workload file, and the result row."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.generate import World, write_jsonl

POSTGRES_URL = os.environ.get(
    "NURTURE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CACHE = Path(os.environ.get("NURTURE_BENCH_CACHE", Path(tempfile.gettempdir()) / "nurture-bench"))
NURTURE = str(Path(sys.executable).with_name("nurture"))


@dataclass
class Result:
    """One row of the results table."""

    benchmark: str
    backend: str
    events: int
    seconds: float
    peak_rss_mb: float
    target: str = ""
    target_events_per_s: float | None = None
    target_rss_mb: float | None = None
    stored: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def met(self) -> bool | None:
        """Whether the target was met (None when there is no target)."""
        if self.target_events_per_s is None and self.target_rss_mb is None:
            return None
        ok = self.stored is None or self.stored == self.events
        if self.target_events_per_s is not None:
            ok = ok and self.events_per_s >= self.target_events_per_s
        if self.target_rss_mb is not None:
            ok = ok and self.peak_rss_mb < self.target_rss_mb
        return ok

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events_per_s": self.events_per_s, "met": self.met}


def reference_file(events: int, seed: int = World.seed) -> Path:
    """A JSONL file with the first `events` messages of the reference world (cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"world-seed{seed}-{events}.jsonl"
    if not path.exists():
        started = time.perf_counter()
        partial = path.with_suffix(f".{os.getpid()}.part")
        count = write_jsonl(partial, World.for_events(events, seed=seed), limit=events)
        if count != events:
            raise RuntimeError(f"generated {count} messages, wanted {events}")
        partial.rename(path)
        log(f"generated {path} ({events} events) in {time.perf_counter() - started:.1f}s")
    return path


def machine_speed() -> float:
    """Seconds a pure-Python loop of 10M additions takes on one core now: the project
    machine's speed varies (0.95 to 1.7 s within one session seen), so CPU-bound figures
    are read beside it."""
    started = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - started


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FreshDatabase:
    """An empty database for one run: the URL and a way to count what it holds."""

    backend: str
    url: str
    workdir: Path

    def count(self, table: str = "events") -> int:
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
        finally:
            engine.dispose()


@contextmanager
def fresh_database(backend: str) -> Iterator[FreshDatabase]:
    """A temporary SQLite file, or a PostgreSQL database created and dropped around the run."""
    workdir = Path(tempfile.mkdtemp(prefix=f"nurture-bench-{backend}-"))
    try:
        if backend == "sqlite":
            yield FreshDatabase(backend, f"sqlite:///{workdir / 'nurture.db'}", workdir)
            return
        name = f"nurture_bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        try:
            url = make_url(POSTGRES_URL).set(database=name)
            yield FreshDatabase(backend, url.render_as_string(hide_password=False), workdir)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            admin.dispose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def nurture_env(db: FreshDatabase, **settings: str | int) -> dict[str, str]:
    """The environment for a `nurture` subprocess on `db`; `settings` become NURTURE_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env["NURTURE_DATABASE_URL"] = db.url
    env["NURTURE_LOG_LEVEL"] = "warning"
    for name, value in settings.items():
        env[f"NURTURE_{name.upper()}"] = str(value)
    return env


def create_write_key(db: FreshDatabase, env: dict[str, str]) -> str:
    """Migrate `db` and create a write key with `nurture keys create`."""
    done = subprocess.run(
        [NURTURE, "keys", "create", "--kind", "write", "--name", "bench"],
        env=env,
        cwd=db.workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"write key \d+: (\S+)", done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"`nurture keys create` failed: {done.stdout}{done.stderr}")
    return match.group(1)


class RssSampler:
    """Samples the summed RSS of a process and its descendants in a thread.

    Summed RSS counts pages shared between processes once per process, so for a
    multi-process server it over-states the memory actually used somewhat.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for proc in self._tree():
                try:
                    total += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the tree so far, for processes still alive."""
        total = 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += times.user + times.system
        return total

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 1_000_000


@dataclass
class Server:
    """A running `nurture serve` subprocess."""

    process: subprocess.Popen[bytes]
    base_url: str
    write_key: str
    log_path: Path


@contextmanager
def serve(db: FreshDatabase, **settings: str | int) -> Iterator[Server]:
    """`nurture serve` on a free port of 127.0.0.1, on `db`, until the block ends."""
    env = nurture_env(db, **settings)
    key = create_write_key(db, env)
    port = free_port()
    log_path = db.workdir / "serve.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [NURTURE, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=db.workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, f"http://127.0.0.1:{port}", key, log_path)
    try:
        _wait_ready(server, int(settings.get("api_processes", 1)))
        yield server
    finally:
        _stop(process)


def _wait_ready(server: Server, processes: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    healthy = 0
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"`nurture serve` exited: {server.log_path.read_text()}")
            with suppress(httpx.TransportError):
                healthy += client.get("/api/health").status_code == 200
            # With several workers, keep asking until each has probably started.
            if healthy >= 4 * processes:
                time.sleep(0.5 if processes > 1 else 0)
                return
            time.sleep(0.1)
    raise RuntimeError(f"`nurture serve` did not answer in {timeout}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
