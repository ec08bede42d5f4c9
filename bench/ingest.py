"""The HTTP ingest benchmark: `POST /v1/batch` against a real `nurture serve`.

A fresh database (a temporary SQLite file, or a PostgreSQL database created for the
run and dropped after it), a write key made with `nurture keys create`, and
`nurture serve` on a free port. Client processes (default 4, with 4 keep-alive
connections each) send the reference workload in batches of 100, as the Segment
SDKs do, and retry on errors as they do. Request bodies are built before the clock
starts, so the clients only do HTTP while it runs.

Measured: events/s end to end (from the start signal until the last batch is
acknowledged), peak RSS of the server's process tree (sampled), the CPU the server
and the clients used, and afterwards that the database holds exactly the events sent.

`--sink` runs the same clients against a trivial in-process HTTP server instead,
which shows how many events/s the clients alone can push on this machine.

    python -m bench.ingest --backend sqlite --events 200000
    python -m bench.ingest --backend postgresql --api-processes 2
    python -m bench.ingest --sink
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import itertools
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.harness import (
    Result,
    RssSampler,
    free_port,
    fresh_database,
    log,
    reference_file,
    serve,
)

TARGET_EVENTS_PER_S = 20_000
_RETRIES = 10


# -- the client processes --------------------------------------------------------------------


@dataclass
class ClientReport:
    """What one client process did, sent back to the parent."""

    events: int = 0
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    finished_at: float = 0.0
    cpu_seconds: float = 0.0


def batch_bodies(path: Path, index: int, clients: int, batch_size: int) -> list[bytes]:
    """The request bodies of client `index`: every `clients`-th batch of the file."""
    sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    tail = b'],"sentAt":"' + sent_at.encode() + b'"}'
    bodies = []
    with path.open("rb") as lines:
        for number, chunk in enumerate(iter(lambda: list(itertools.islice(lines, batch_size)), [])):
            if number % clients == index:
                bodies.append(b'{"batch":[' + b",".join(x.rstrip(b"\n") for x in chunk) + tail)
    return bodies


def _post(
    conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    conn.request("POST", "/v1/batch", body, headers)
    response = conn.getresponse()
    return response.status, response.read()


def _connection_loop(
    host: str,
    port: int,
    headers: dict[str, str],
    bodies: list[bytes],
    sizes: list[int],
    cursor: Iterator[int],
    report: ClientReport,
    lock: threading.Lock,
) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=300)
    for i in cursor:
        if i >= len(bodies):
            break
        for attempt in range(_RETRIES):
            began = time.monotonic()
            try:
                status, data = _post(conn, bodies[i], headers)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=300)
                status, data = 0, repr(exc).encode()
            elapsed = time.monotonic() - began
            if status == 200:
                result = orjson.loads(data)
                with lock:
                    report.batches += 1
                    report.events += sizes[i]
                    report.accepted += result.get("accepted", 0)
                    report.duplicates += result.get("duplicates", 0)
                    report.rejected += len(result.get("rejected", ()))
                    report.latencies.append(elapsed)
                break
            with lock:
                report.retries += 1
                if len(report.errors) < 5:
                    report.errors.append(f"HTTP {status}: {data[:300]!r}")
            time.sleep(min(0.05 * 2**attempt, 2.0))
        else:
            with lock:
                report.errors.append(f"batch {i} given up after {_RETRIES} attempts")
    conn.close()


def client_main(
    path: Path,
    index: int,
    clients: int,
    connections: int,
    batch_size: int,
    port: int,
    write_key: str,
    barrier: Any,
    results: Any,
) -> None:
    """One client process: prepare its bodies, wait for the start, send them all."""
    bodies = batch_bodies(path, index, clients, batch_size)
    sizes = [body.count(b'"messageId"') for body in bodies]
    auth = base64.b64encode(f"{write_key}:".encode()).decode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Basic {auth}",
        "User-Agent": "nurture-bench/1.0 (like analytics-python)",
    }
    report = ClientReport()
    lock = threading.Lock()
    cursor = itertools.count()  # next() on a count is atomic under the GIL
    threads = [
        threading.Thread(
            target=_connection_loop,
            args=("127.0.0.1", port, headers, bodies, sizes, cursor, report, lock),
        )
        for _ in range(connections)
    ]
    cpu_before = time.process_time()
    barrier.wait()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.finished_at = time.monotonic()
    report.cpu_seconds = time.process_time() - cpu_before
    results.put(report)


@dataclass
class LoadReport:
    """The clients' reports combined."""

    seconds: float
    reports: list[ClientReport]

    @property
    def events(self) -> int:
        return sum(r.events for r in self.reports)

    def total(self, name: str) -> int:
        return sum(getattr(r, name) for r in self.reports)

    @property
    def errors(self) -> list[str]:
        return [e for r in self.reports for e in r.errors]

    def latency_ms(self, quantile: float) -> float:
        values = sorted(x for r in self.reports for x in r.latencies)
        if not values:
            return 0.0
        return 1000 * values[min(len(values) - 1, int(quantile * len(values)))]

    @property
    def client_cpu_seconds(self) -> float:
        return sum(r.cpu_seconds for r in self.reports)


class Load:
    """Client processes, started and prepared up front; `run()` releases them."""

    def __init__(
        self, path: Path, port: int, write_key: str, clients: int, connections: int, batch: int
    ) -> None:
        ctx = mp.get_context("spawn")
        self.barrier = ctx.Barrier(clients + 1)
        self.results = ctx.Queue()
        self.processes = [
            ctx.Process(
                target=client_main,
                args=(
                    path,
                    i,
                    clients,
                    connections,
                    batch,
                    port,
                    write_key,
                    self.barrier,
                    self.results,
                ),
                daemon=True,
            )
            for i in range(clients)
        ]
        for process in self.processes:
            process.start()

    def run(self) -> LoadReport:
        """Start the clients together and wait until each has every batch acknowledged."""
        self.barrier.wait(timeout=600)
        started = time.monotonic()
        reports = [self.results.get(timeout=3600) for _ in self.processes]
        for process in self.processes:
            process.join(30)
        return LoadReport(max(r.finished_at for r in reports) - started, reports)


# -- the trivial server for measuring the clients ----------------------------------------------


class _SinkProtocol(asyncio.Protocol):
    """Answers every request with a fixed 200, reading only what HTTP framing needs."""

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n"
        b'{"success":true}'
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            self.transport.write(self.RESPONSE)


def sink_main(port: int, ready: Any) -> None:
    """Run the sink server until terminated."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_SinkProtocol, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the benchmarks --------------------------------------------------------------------------


def _summary(load: LoadReport) -> list[str]:
    return [
        f"latency per batch p50 {load.latency_ms(0.5):.0f} ms, p99 {load.latency_ms(0.99):.0f} ms",
        f"client CPU {load.client_cpu_seconds:.1f}s "
        f"({load.client_cpu_seconds / load.seconds:.2f} cores)",
        f"retries {load.total('retries')}",
    ]


def run_sink(
    events: int = 200_000, *, clients: int = 4, connections: int = 4, batch: int = 100
) -> Result:
    """How fast the client processes alone can send (to a trivial server)."""
    path = reference_file(events)
    port = free_port()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    sink = ctx.Process(target=sink_main, args=(port, ready), daemon=True)
    sink.start()
    try:
        ready.wait(30)
        load = Load(path, port, "sink", clients, connections, batch).run()
    finally:
        sink.terminate()
        sink.join(10)
    result = Result(
        "HTTP clients → trivial sink",
        "none",
        load.events,
        load.seconds,
        0.0,
        target="capacity ≫ server",
    )
    result.notes += _summary(load)
    if load.events != events:
        result.notes.append(f"sent {load.events} of {events}")
    return result


@contextmanager
def _profiler(pid: int, output: Path | None) -> Iterator[None]:
    if output is None:
        yield
        return
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "100",
            "--threads",
            "--nonblocking",
            *(["--idle"] if os.environ.get("NURTURE_BENCH_PROFILE_IDLE") else []),
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode not in (0, -signal.SIGINT) or not output.exists():
            log(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")


def run_http(
    backend: str = "sqlite",
    events: int = 200_000,
    *,
    synchronous: str = "FULL",
    api_processes: int = 1,
    clients: int = 4,
    connections: int = 4,
    batch: int = 100,
    profile: Path | None = None,
) -> Result:
    """Send `events` through `POST /v1/batch` of a fresh `nurture serve`, then count them."""
    path = reference_file(events)
    settings: dict[str, str | int] = {"api_processes": api_processes}
    label = backend
    if backend == "sqlite":
        settings["sqlite_synchronous"] = synchronous
        label = f"sqlite synchronous={synchronous}"
    else:
        label = f"postgresql, {api_processes} API processes"
    with fresh_database(backend) as db:
        with serve(db, **settings) as server:
            port = int(server.base_url.rsplit(":", 1)[1])
            load_runner = Load(path, port, server.write_key, clients, connections, batch)
            with RssSampler(server.process.pid) as rss, _profiler(server.process.pid, profile):
                cpu_before = rss.cpu_seconds()
                load = load_runner.run()
                server_cpu = rss.cpu_seconds() - cpu_before
        stored = db.count("events")
        rejected = db.count("rejected_events")
    result = Result(
        "HTTP ingest /v1/batch",
        label,
        load.events,
        load.seconds,
        rss.peak_mb,
        target=f"≥ {TARGET_EVENTS_PER_S:,} ev/s",
        target_events_per_s=TARGET_EVENTS_PER_S,
        stored=stored,
    )
    result.notes += _summary(load)
    result.notes.append(
        f"server CPU {server_cpu:.1f}s ({server_cpu / load.seconds:.2f} cores of {_cores()})"
    )
    result.notes.append(
        f"stored {stored} of {events} sent; accepted {load.total('accepted')}, "
        f"duplicates {load.total('duplicates')}, rejected {load.total('rejected')}, "
        f"rejected_events rows {rejected}"
    )
    if load.events != events:
        result.notes.append(f"only {load.events} of {events} events were acknowledged")
    for error in load.errors[:5]:
        result.notes.append(f"error: {error}")
    return result


def _cores() -> int:
    return os.cpu_count() or 1


def summarize_profile(raw: Path, top: int = 25) -> str:
    """Top functions by own samples and by inclusive samples from py-spy's raw output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] = threads.get(frames[0], 0) + count
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + count
        for frame in set(frames[1:]):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if total == 0:
        return "no samples"
    out = [f"{total} samples (active threads only)", "", "by thread:"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in _top(threads, 10)]
    out += ["", f"top {top} by own time (the function itself was running):"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in _top(own, top)]
    out += ["", f"top {top} by inclusive time (the function or what it called):"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in _top(inclusive, top)]
    return "\n".join(out)


def _top(counts: dict[str, int], n: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: -item[1])[:n]


def main(argv: list[str] | None = None) -> int:
    """Command line: one HTTP ingest run, printed as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--api-processes", type=int, default=1)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--connections", type=int, default=4, help="connections per client")
    parser.add_argument("--batch", type=int, default=100, help="messages per request")
    parser.add_argument("--sink", action="store_true", help="measure the clients alone")
    parser.add_argument("--profile", type=Path, help="py-spy raw output file (server)")
    args = parser.parse_args(argv)
    if args.sink:
        result = run_sink(
            args.events, clients=args.clients, connections=args.connections, batch=args.batch
        )
    else:
        result = run_http(
            args.backend,
            args.events,
            synchronous=args.synchronous,
            api_processes=args.api_processes,
            clients=args.clients,
            connections=args.connections,
            batch=args.batch,
            profile=args.profile,
        )
    print(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
    if args.profile and args.profile.exists():
        print(summarize_profile(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
