"""Messages end to end (issue 5): personalised emails from outbox rows to an SMTP sink.

    python -m bench.messages [--backend sqlite|postgresql] [--messages N] [--pool K]
        [--batch B] [--processes P] [--profile [FILE]]

`--messages` queued marketing emails (default 20,000), one per contact, go through the
dispatcher as `nurture worker` sends them: `Dispatcher.run_due()` in a loop (claim + the
send-time policy → compose: context with computed traits, Liquid render in the contact's
locale and zone, tracking links, List-Unsubscribe → the SMTP adapter builds the MIME and
sends over `--pool` connections → record). The template is ~3 KB of HTML with a <style>
block, money and date filters, a loop over the order's items and three tracked links; its
text part is derived. Contacts speak four locales in four zones; half of them are in the
EU and have granted email consent; two computed traits (days since last seen, orders) are
declared and every contact has two orders, so each context loads them.

The sink is aiosmtpd in another process: it counts what it accepts and discards it. Measured
in the same run, beside the pipeline: the sink's ceiling (pre-built bytes over 4 bare
smtplib connections) and the SMTP adapter alone (MIME per message, pool 1 and `--pool`).
Stages are timed by wrapping the dispatcher's own functions (wall time). The SMTP adapter
spreads a batch over its pool's threads: the rows below the line are summed over those
threads, inside `deliver`, and can exceed its wall time.

`--profile` records the timed run with pyinstrument (not a dependency: install it into
the venv to profile) and writes FILE: HTML for *.html, else text (default
messages-profile.html).

`--processes P` dispatches in P other processes instead (as P `nurture worker`s would; on
SQLite they take turns for the write transactions): the scale-out figure, without stages.

Target: 1,000 emails/s end to end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from bench.harness import FreshDatabase, free_port, fresh_database, log
from bench.smtp import _bare, _emails
from nurture.channels.base import Outgoing, Sent
from nurture.channels.mime import build
from nurture.channels.smtp import SmtpChannel
from nurture.clock import SystemClock
from nurture.core import Nurture
from nurture.messages import compose as compose_module
from nurture.messages import dispatch as dispatch_module
from nurture.messages.policy_config import PolicyConfig
from nurture.settings import Settings
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_rows

TARGET = 1_000
CHUNK = 20_000
WARMUP = 200  # messages sent before the clock starts: templates compiled per locale

ROW = (
    "<tr><td class='cell'>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do "
    "eiusmod tempor incididunt ut labore et dolore magna aliqua.</td></tr>\n"
)
HTML = (
    "<html><head><style>.cell{padding:8px;font-family:Arial,sans-serif;color:#333}"
    "h1{font-size:22px} a{color:#0a6}@media (max-width:600px){h1{font-size:18px}}</style>"
    "</head><body><h1>Hi {{ contact.first_name }},</h1>"
    "<p>Your order of {{ event.properties.total | money }} from "
    "{{ event.timestamp | date: 'long' }} ships soon. It is order number "
    "{{ contact.computed.orders }} with us.</p><ul>"
    "{% for item in event.properties.items %}<li class='cell'>{{ item.name }}: "
    "{{ item.price | money }}</li>{% endfor %}</ul><table>" + ROW * 12 + "</table>"
    "{% if contact.plan %}<p>Your plan: {{ contact.plan }}</p>{% endif %}"
    '<p><a href="https://shop.example/orders?utm_source=email">Your orders</a> · '
    '<a href="https://shop.example/help">Help</a></p>'
    '<p><a href="{{ links.preferences }}">Preferences</a> · '
    '<a href="{{ links.unsubscribe }}">Unsubscribe</a></p></body></html>'
)
TEMPLATE: dict[str, Any] = {
    "currency": "EUR",
    "traits": ["plan"],
    "defaults": {"first_name": "there"},
    "email": {
        "subject": "{{ contact.first_name }}, your order of {{ event.properties.total | money }}",
        "preheader": "Shipping {{ event.timestamp | date: 'short' }}",
        "html": HTML,
    },
    "locales": {"de": {"email": {"subject": "{{ contact.first_name }}, deine Bestellung"}}},
}
COMPUTED = {
    "days_inactive": {"name": "Days since last seen", "kind": "days_since_last_seen"},
    "orders": {"name": "Orders", "kind": "count", "event": "Order Completed"},
}
PEOPLE = [  # first name, locale, zone, country
    ("Ann", "en-US", "America/New_York", "US"),
    ("Jonas", "de-DE", "Europe/Berlin", "DE"),
    ("Ana", "pt-BR", "America/Sao_Paulo", "BR"),
    ("Léa", "fr-FR", "Europe/Paris", "FR"),
]
POLICY = PolicyConfig.model_validate(
    {
        "quiet_hours": {"sms": {"start": "21:00", "end": "09:00"}},
        "caps": [{"channel": "email", "max": 20, "per": "1d"}],
    }
)


# -- the sink ------------------------------------------------------------------------------


def _sink(port: int, ready: Any, accepted: Any) -> None:
    from aiosmtpd.controller import Controller

    class Count:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with accepted.get_lock():
                accepted.value += 1
            return "250 OK"

    controller = Controller(Count(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    while True:
        time.sleep(3600)


@contextmanager
def sink() -> Iterator[tuple[int, Any, psutil.Process]]:
    """(port, accepted counter, process) of an aiosmtpd sink in another process."""
    port = free_port()
    ready = multiprocessing.Event()
    accepted = multiprocessing.Value("q", 0)
    process = multiprocessing.Process(target=_sink, args=(port, ready, accepted), daemon=True)
    process.start()
    if not ready.wait(20):
        raise RuntimeError("the SMTP sink did not start")
    try:
        yield port, accepted, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.join(10)


# -- the reference points -------------------------------------------------------------------


def ceiling(port: int, n: int) -> float:
    """Pre-built bytes over 4 bare smtplib connections: what the sink takes at all."""
    clock = SystemClock()
    payloads = []
    for i, email in enumerate(_emails(n)):
        sender, to, _mid, data = build(email, key=f"ceiling{i}", date=clock.now())
        payloads.append((sender, to, data))
    shares = [payloads[i::4] for i in range(4)]
    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        sent = sum(pool.map(lambda share: _bare(port, share), shares))
    return sent / (time.perf_counter() - start)


def adapter(port: int, n: int, pool_size: int, batch: int) -> float:
    """The SMTP adapter alone: MIME built per message, sent in batches."""
    emails = _emails(n)
    channel = SmtpChannel("127.0.0.1", port, starttls=False, pool_size=pool_size)
    try:
        start = time.perf_counter()
        sent = 0
        for first in range(0, n, batch):
            outgoing = [
                Outgoing(f"a{pool_size}-{i}", emails[i])
                for i in range(first, min(n, first + batch))
            ]
            sent += sum(isinstance(r, Sent) for r in channel.send(outgoing))
        return sent / (time.perf_counter() - start)
    finally:
        channel.close()


# -- the world -------------------------------------------------------------------------------


def open_nurture(fdb: FreshDatabase, port: int, pool_size: int, batch: int) -> Nurture:
    project = fdb.workdir / "project"
    project.mkdir(parents=True, exist_ok=True)
    values = {
        **dict(Settings.model_construct()),
        "database_url": fdb.url,
        "project_dir": project,
        "public_url": "https://nurture.example.com",
        "policy": POLICY,
        "dispatch_batch": batch,
    }
    channel = SmtpChannel("127.0.0.1", port, starttls=False, pool_size=pool_size)
    # model_validate checks the values without reading the environment or nurture.yaml.
    nurture = Nurture(Settings.model_validate(values), channels={"email": channel})
    return nurture.start()


def seed(nurture: Nurture, messages: int) -> None:
    """Contacts 1..messages with traits, consents, two orders each, and one queued
    marketing email each (the first WARMUP of them due earliest)."""
    db, now = nurture.db, nurture.clock.now()
    for key, body in COMPUTED.items():
        nurture.lifecycle.save("computed", key, body)
    nurture.templates.put("bench_order", TEMPLATE)
    started = time.perf_counter()
    for first in range(1, messages + 1, CHUNK):
        ids = range(first, min(first + CHUNK, messages + 1))
        with db.write() as conn:
            _seed_chunk(conn, ids, now)
    if not db.is_sqlite:
        with db.write() as conn:
            conn.exec_driver_sql("ANALYZE")
    log(f"seeded {messages:,} contacts and messages in {time.perf_counter() - started:.1f}s")


def _seed_chunk(conn: Any, ids: range, now: datetime) -> None:
    contacts, consents, events, outbox = [], [], [], []
    for i in ids:
        name, locale, zone, country = PEOPLE[i % len(PEOPLE)]
        traits = {"first_name": f"{name}{i}", "last_name": "Example", "plan": "pro"}
        contacts.append(
            {
                "id": i,
                "user_id": f"u{i}",
                "email": f"u{i}@example.com",
                "country": country,
                "timezone": zone,
                "locale": locale,
                "traits": orjson.dumps(traits).decode() if i % 3 else orjson.dumps({}).decode(),
                "trait_issues": "{}",
                "first_seen_at": now - timedelta(days=40),
                "last_seen_at": now - timedelta(days=i % 30),
                "created_at": now,
                "updated_at": now,
            }
        )
        if country in ("DE", "FR"):
            consents.append(
                {"contact_id": i, "channel": "email", "topic": "*", "state": "granted",
                 "source": "bench", "recorded_at": now - timedelta(days=40)}
            )  # fmt: skip
        total = 10 + i % 997 + 0.5
        for n in (1, 2):
            events.append(
                {
                    "message_id": f"order-{i}-{n}",
                    "type": "track",
                    "event": "Order Completed",
                    "contact_id": i,
                    "user_id": f"u{i}",
                    "timestamp": now - timedelta(days=n * 3),
                    "received_at": now - timedelta(days=n * 3),
                    "properties": orjson.dumps({"total": total}).decode(),
                }
            )
        trigger = {
            "type": "track",
            "event": "Order Completed",
            "messageId": f"order-{i}-1",
            "timestamp": (now - timedelta(days=3)).isoformat(),
            "properties": {
                "total": total,
                "items": [{"name": "Shoes", "price": total - 5}, {"name": "Socks", "price": 5}],
            },
        }
        payload = {
            "trigger": trigger,
            "journey": {"key": "bench_orders", "version": 1, "step": "thanks"},
            "enrolment": i,
        }
        outbox.append(
            {
                "idempotency_key": f"bench:{i}:thanks",
                "contact_id": i,
                "enrolment_id": i,
                "journey_key": "bench_orders",
                "version": 1,
                "step": "thanks",
                "channel": "email",
                "template": "bench_order",
                "kind": "marketing",
                "payload": orjson.dumps(payload).decode(),
                "status": "queued",
                "created_at": now,
                # The warm-up messages come first; the rest are due in id order.
                "send_after": now - timedelta(hours=1) + timedelta(microseconds=i),
            }
        )
    insert_rows(conn, t.contacts, contacts, encoded=frozenset({"traits", "trait_issues"}))
    insert_rows(conn, t.consents, consents)
    insert_rows(conn, t.events, events, encoded=frozenset({"properties"}))
    insert_rows(conn, t.outbox, outbox, encoded=frozenset({"payload"}))


def statuses(db: Database) -> dict[str, int]:
    o = t.outbox.c
    with db.read() as conn:
        rows = conn.execute(select(o.status, func.count()).group_by(o.status)).all()
    return {status: int(count) for status, count in rows}


# -- stages -----------------------------------------------------------------------------------


class Stages:
    """Wall time spent in named functions, by wrapping them for the timed run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        if not hasattr(owner, name):  # another version of the code: that stage is not timed
            return
        original = getattr(owner, name)
        had_own = name in getattr(owner, "__dict__", {})

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1

        setattr(owner, name, timed)
        self._undo.append(
            (lambda: setattr(owner, name, original)) if had_own else (lambda: delattr(owner, name))
        )

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


STAGES = [  # (label, indent): the order of the printed rows
    ("claim", 0),
    ("policy: load facts", 1),
    ("policy: decide", 1),
    ("compose", 0),
    ("context (contacts, computed traits)", 1),
    ("render (Liquid, locale filters)", 1),
    ("tracking links + tokens", 1),
    ("tracking: decorate email", 1),
    ("deliver (SMTP adapter)", 0),
    ("record", 0),
    ("MIME build (in pool threads)", 0),
    ("SMTP round trips (in pool threads)", 0),
]
OVERLAPPING = "MIME build (in pool threads)"  # this row and the next run in several threads


def instrument(nurture: Nurture, channel: SmtpChannel) -> Stages:
    stages = Stages()
    d = nurture.dispatcher
    stages.wrap(d, "_claim", "claim")
    stages.wrap(d, "_compose", "compose")
    stages.wrap(d, "_deliver", "deliver (SMTP adapter)")
    stages.wrap(d, "_record", "record")
    stages.wrap(dispatch_module, "load_facts", "policy: load facts")
    stages.wrap(dispatch_module, "decide_all", "policy: decide")
    stages.wrap(compose_module, "build_contexts", "context (contacts, computed traits)")
    stages.wrap(d.composer.templates, "render", "render (Liquid, locale filters)")
    stages.wrap(d.composer.tracker, "links", "tracking links + tokens")
    stages.wrap(d.composer.tracker, "email_headers", "tracking links + tokens")
    stages.wrap(d.composer.tracker, "decorate_email", "tracking: decorate email")
    stages.wrap(channel, "_prepare", "MIME build (in pool threads)")
    stages.wrap(channel, "_one", "SMTP round trips (in pool threads)")
    return stages


# -- the run --------------------------------------------------------------------------------


def end_to_end(backend: str, port: int, accepted: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The timed run: `run_due()` in a loop in this process, or in `--processes` others."""
    with fresh_database(backend) as fdb:
        nurture = open_nurture(fdb, port, args.pool, args.batch)
        try:
            seed(nurture, args.messages + WARMUP * max(1, args.processes))
            before = accepted.value
            if args.processes:
                nurture.stop()  # the dispatchers are the other processes
                run = _in_processes(fdb, port, args)
            else:
                run = _in_process(nurture, args)
            run["statuses"] = statuses(nurture.db)
            run["delivered"] = accepted.value - before - WARMUP * max(1, args.processes)
        finally:
            nurture.stop()
    return run


def _warm(nurture: Nurture) -> None:
    """Compile the template for each locale before the clock starts."""
    warm = nurture.dispatcher.run_due(WARMUP)
    if warm.sent != WARMUP:
        raise RuntimeError(f"warm-up sent {warm.sent} of {WARMUP}: {statuses(nurture.db)}")


def _in_process(nurture: Nurture, args: argparse.Namespace) -> dict[str, Any]:
    channel = nurture.channels["email"]
    assert isinstance(channel, SmtpChannel)
    _warm(nurture)
    stages = instrument(nurture, channel)
    profiler = _profiler(args.profile)
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    rounds = 0
    start = time.perf_counter()
    while nurture.dispatcher.run_due().handled:
        rounds += 1
    seconds = time.perf_counter() - start
    cpu = sum(me.cpu_times()[:2]) - cpu0
    stages.restore()
    if profiler is not None:
        profiler.stop()
        out = Path(args.profile)
        out.write_text(
            profiler.output_html()
            if out.suffix == ".html"
            else profiler.output_text(unicode=True, color=False)
        )
        log(f"profile written to {args.profile}")
    return {"seconds": seconds, "cpu": cpu, "rounds": rounds, "stages": stages}


def _dispatcher_process(
    fdb: FreshDatabase, port: int, pool: int, batch: int, start: Any, done: Any
) -> None:
    """One dispatcher, as `nurture worker` runs it: warm up, wait for the start, then
    `run_due()` until nothing is due; reports (CPU seconds, rounds)."""
    nurture = open_nurture(fdb, port, pool, batch)
    try:
        _warm(nurture)
        start.wait()
        me = psutil.Process()
        cpu0 = sum(me.cpu_times()[:2])
        rounds = 0
        while nurture.dispatcher.run_due().handled:
            rounds += 1
        done.put((sum(me.cpu_times()[:2]) - cpu0, rounds))
    finally:
        nurture.stop()


def _in_processes(fdb: FreshDatabase, port: int, args: argparse.Namespace) -> dict[str, Any]:
    spawn = multiprocessing.get_context("spawn")
    start, done = spawn.Barrier(args.processes + 1), spawn.Queue()
    workers = [
        spawn.Process(
            target=_dispatcher_process, args=(fdb, port, args.pool, args.batch, start, done)
        )
        for _ in range(args.processes)
    ]
    for worker in workers:
        worker.start()
    start.wait(120)
    began = time.perf_counter()
    reports = [done.get(timeout=600) for _ in workers]
    seconds = time.perf_counter() - began
    for worker in workers:
        worker.join(30)
    return {
        "seconds": seconds,
        "cpu": sum(r[0] for r in reports),
        "rounds": sum(r[1] for r in reports),
        "stages": Stages(),
    }


def _profiler(path: str | None) -> Any:
    if not path:
        return None
    from pyinstrument import Profiler  # type: ignore[import-not-found,unused-ignore]

    profiler = Profiler(interval=0.001)
    profiler.start()
    return profiler


def stage_table(stages: Stages, wall: float, n: int) -> Table:
    split = Table(title="Where the time goes (wall time of the timed run)")
    for column in ("stage", "seconds", "share", "µs / email"):
        split.add_column(column, justify="left" if column == "stage" else "right")
    for label, indent in STAGES:
        if label == OVERLAPPING:
            split.add_row(
                "total", f"{wall:.2f}", "100%", f"{wall / n * 1e6:,.0f}", end_section=True
            )
        seconds = stages.seconds.get(label, 0.0)
        split.add_row(
            "  " * indent + label,
            f"{seconds:.2f}",
            f"{seconds / wall:.0%}",
            f"{seconds / n * 1e6:,.0f}",
        )
    return split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--pool", type=int, default=4, help="SMTP connections (pool_size)")
    parser.add_argument("--batch", type=int, default=200, help="dispatch_batch")
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="dispatch in K other processes (as K `nurture worker`s) instead of this one",
    )
    parser.add_argument("--reference", type=int, default=5_000, help="messages per reference")
    parser.add_argument(
        "--profile", nargs="?", const="messages-profile.html", default=None, metavar="FILE"
    )
    args = parser.parse_args(argv)
    n = args.messages
    with sink() as (port, accepted, sink_process):
        log("measuring the sink's ceiling and the adapter alone")
        sink_ceiling = ceiling(port, args.reference)
        alone = {size: adapter(port, args.reference, size, args.batch) for size in {1, args.pool}}
        sink_cpu0 = sum(sink_process.cpu_times()[:2])
        log(f"end to end: {n:,} messages on {args.backend}")
        run = end_to_end(args.backend, port, accepted, args)
        sink_cpu = sum(sink_process.cpu_times()[:2]) - sink_cpu0
    rate = n / run["seconds"]
    sent = run["statuses"].get("sent", 0) - WARMUP * max(1, args.processes)

    console = Console()
    who = f"{args.processes} dispatcher processes" if args.processes else "dispatcher"
    table = Table(title=f"Messages end to end, {args.backend}: {n:,} personalised emails")
    for column in ("what", "emails/s", "target", "met?"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row(
        f"end to end: {who} → SMTP sink (batch {args.batch}, pool {args.pool})",
        f"{rate:,.0f}",
        f"≥ {TARGET:,}",
        "yes" if rate >= TARGET and sent == n and run["delivered"] == n else "no",
    )
    table.add_row("sink ceiling (pre-built bytes, 4 smtplib connections)", f"{sink_ceiling:,.0f}")
    for size, value in sorted(alone.items()):
        table.add_row(f"SMTP adapter alone (MIME per message, pool {size})", f"{value:,.0f}")
    console.print(table)

    if args.processes:
        console.print("(stages are timed only when this process dispatches)")
    else:
        console.print(stage_table(run["stages"], run["seconds"], n))
    load = os.getloadavg()
    console.print(
        f"sent {sent:,} of {n:,} (statuses {run['statuses']}), sink accepted {run['delivered']:,}; "
        f"{run['rounds']} rounds; CPU: {who} {run['cpu'] / n * 1e6:,.0f} µs/email "
        f"({run['cpu'] / run['seconds']:.2f} cores), sink {sink_cpu / n * 1e6:,.0f} µs/email; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    return 0 if sent == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
