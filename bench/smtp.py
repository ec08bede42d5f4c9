"""SMTP throughput: personalised emails through the SMTP adapter to a local sink.

    python -m bench.smtp [--messages 5000] [--batch 100]

The sink is aiosmtpd in another process, accepting and discarding. Printed side by side:

- sink ceiling: pre-built bytes over 4 bare smtplib connections in parallel (what the sink
  and the loopback can take at all);
- smtplib baseline: pre-built bytes over one bare smtplib connection (no MIME building);
- stdlib MIME: EmailMessage built per message, then sent over one connection (for scale);
- the adapter, pool_size 1 and 4: MIME built by channels/mime.py per message, in batches.

The target of the whole pipeline is 1,000 personalised emails a second.
"""

from __future__ import annotations

import argparse
import multiprocessing
import smtplib
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from typing import Any

from nurture.channels.base import Email, Outgoing, Sent
from nurture.channels.mime import build
from nurture.channels.smtp import SmtpChannel
from nurture.clock import SystemClock

HTML = (
    "<html><body><h1>Hello {name},</h1>"
    + "<p>Your cart still holds the shoes you liked. Sizes are running out &mdash; "
    "complete your order today and shipping is on us.</p>"
    * 18
    + '<p><a href="https://acme.example/cart?c={n}">Back to your cart</a></p></body></html>'
)
TEXT = "Hello {name},\n\n" + "Your cart still holds the shoes you liked. " * 20


def _sink(port: int, ready: Any) -> None:
    from aiosmtpd.controller import Controller

    class Discard:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    controller = Controller(Discard(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    while True:
        time.sleep(3600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _emails(n: int) -> list[Email]:
    names = ["Zoë", "Ana", "Jürgen", "Li Wei", "Sam", "Olúwáṣeun"]
    return [
        Email(
            to=f"user{i}@example.com",
            to_name=f"{names[i % len(names)]} Example",
            from_address="hi@acme.example",
            from_name="Acme",
            subject=f"{names[i % len(names)]}, your cart misses you",
            html=HTML.format(name=names[i % len(names)], n=i),
            text=TEXT.format(name=names[i % len(names)]),
            preheader="Free shipping today",
            headers={
                "List-Unsubscribe": f"<https://n.acme.example/u/{i}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        )
        for i in range(n)
    ]


def _timed(run: Callable[[], int]) -> float:
    start = time.perf_counter()
    sent = run()
    return sent / (time.perf_counter() - start)


def _bare(port: int, payloads: list[tuple[str, str, bytes]]) -> int:
    conn = smtplib.SMTP("127.0.0.1", port)
    for sender, to, data in payloads:
        conn.sendmail(sender, [to], data)
    conn.quit()
    return len(payloads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    n = args.messages
    port = _free_port()
    ready = multiprocessing.Event()
    sink = multiprocessing.Process(target=_sink, args=(port, ready), daemon=True)
    sink.start()
    ready.wait(10)
    try:
        emails = _emails(n)
        clock = SystemClock()
        prebuilt = []
        for i, e in enumerate(emails):
            sender, to, _mid, data = build(e, key=f"pre{i}", date=clock.now())
            prebuilt.append((sender, to, data))
        size = sum(len(p[2]) for p in prebuilt) / n
        rows: list[tuple[str, float]] = []

        def ceiling() -> int:
            shares = [prebuilt[i::4] for i in range(4)]
            with ThreadPoolExecutor(4) as pool:
                return sum(pool.map(lambda s: _bare(port, s), shares))

        rows.append(("sink ceiling (pre-built, 4 smtplib connections)", _timed(ceiling)))
        rows.append(
            ("smtplib baseline (pre-built, 1 connection)", _timed(lambda: _bare(port, prebuilt)))
        )

        def stdlib() -> int:
            conn = smtplib.SMTP("127.0.0.1", port)
            for e in emails:
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = e.from_address, e.to, e.subject
                msg.set_content(e.text)
                msg.add_alternative(e.html, subtype="html")
                conn.send_message(msg)
            conn.quit()
            return n

        rows.append(("stdlib EmailMessage + smtplib (1 connection)", _timed(stdlib)))
        for pool_size in (1, 4):
            channel = SmtpChannel("127.0.0.1", port, starttls=False, pool_size=pool_size)

            def adapter(channel: SmtpChannel = channel, pool: int = pool_size) -> int:
                sent = 0
                for start in range(0, n, args.batch):
                    batch = [
                        Outgoing(f"p{pool}-{i}", emails[i])
                        for i in range(start, min(n, start + args.batch))
                    ]
                    sent += sum(isinstance(r, Sent) for r in channel.send(batch))
                return sent

            rows.append((f"SmtpChannel, MIME per message, pool_size={pool_size}", _timed(adapter)))
            channel.close()
    finally:
        sink.terminate()
    print(f"\n{n} emails of {size / 1024:.1f} KB each, batches of {args.batch}\n")
    print(f"{'what':<56} {'msgs/s':>8}")
    for what, rate in rows:
        print(f"{what:<56} {rate:>8.0f}")


if __name__ == "__main__":
    main()
