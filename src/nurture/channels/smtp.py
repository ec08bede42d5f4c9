"""SMTP: pooled connections, STARTTLS or implicit TLS, AUTH, and careful reading of replies.

A connection stays open across messages and batches (opening one costs several round
trips and, with TLS, a handshake). A connection found dead is replaced; a pooled one that
went stale while idle is retried once before anything is given up. With `pool_size` > 1 a
batch is split over that many connections sent in parallel.

Replies: 4xx is a Retry (421 and x.7.x "slow down" ones are marked throttled), 5xx a
Failed. A 5xx is a bounce only when it is about the recipient: the enhanced status code
says so (5.1.x bad address, 5.2.1 mailbox disabled), or without one, the basic code is
550/551/553. A lost connection or a timeout is a Retry for the message in flight and the
rest of its share of the batch; the next batch reconnects.
"""

from __future__ import annotations

import contextlib
import queue
import re
import smtplib
import ssl
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nurture.channels.base import Email, Failed, Outgoing, Result, Retry, Sent
from nurture.channels.mime import BadEmail, build
from nurture.clock import Clock, SystemClock

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def classify_reply(code: int, message: bytes | str) -> Retry | Failed:
    """The Result of an SMTP reply that refused a message."""
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    text = " ".join(text.split())
    error = f"SMTP {code} {text}".strip()
    enhanced = _ENHANCED.match(text)
    if 400 <= code < 500:
        throttled = code == 421 or bool(enhanced and enhanced.group(2) == "7")
        return Retry(error, throttled=throttled)
    if enhanced is not None:
        subject, detail = enhanced.group(2), enhanced.group(3)
        bounce = subject == "1" or (subject == "2" and detail == "1")
    else:
        bounce = code in (550, 551, 553)
    return Failed(error, f"smtp_{code}", bounce)


def ssl_context(ca_file: Path | str | None = None) -> ssl.SSLContext:
    """The TLS context: the system's trusted CAs, or only those in `ca_file`."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


class _Lost(Exception):
    """The connection is gone: nothing more can be sent on it."""


class SmtpChannel:
    """Email over SMTP."""

    provider = "smtp"
    channels = frozenset({"email"})

    def __init__(
        self,
        host: str = "localhost",
        port: int = 587,
        *,
        starttls: bool = True,
        tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        pool_size: int = 1,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        default_from: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if tls and starttls:
            starttls = False  # implicit TLS (port 465) is encrypted from the first byte
        self.host, self.port = host, port
        self.starttls, self.tls = starttls, tls
        self.username, self.password = username, password
        self.timeout = timeout
        self.pool_size = max(1, pool_size)
        self.ssl_context = ssl_context
        self.local_hostname = local_hostname
        self.default_from = default_from
        self.clock = clock or SystemClock()
        self._idle: queue.LifoQueue[smtplib.SMTP] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    # -- connections -------------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        conn: smtplib.SMTP
        if self.tls:
            conn = smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=self.local_hostname,
                timeout=self.timeout,
                context=self._context(),
            )
        else:
            conn = smtplib.SMTP(
                self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
            )
        try:
            conn.ehlo()
            if self.starttls:
                conn.starttls(context=self._context())
                conn.ehlo()
            if self.username:
                conn.login(self.username, self.password or "")
        except BaseException:
            _quietly_close(conn)
            raise
        return conn

    def _take(self) -> tuple[smtplib.SMTP | None, bool]:
        """An idle connection (reused=True) or None when a new one is needed."""
        try:
            return self._idle.get_nowait(), True
        except queue.Empty:
            return None, False

    # -- sending -----------------------------------------------------------------------
    def send(self, batch: Sequence[Outgoing]) -> list[Result]:
        """Send each message; one Result per message, in order."""
        if not batch:
            return []
        shares = min(self.pool_size, len(batch))
        if shares == 1:
            return self._send_share(list(batch))
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.pool_size, "nurture-smtp")
            executor = self._executor
        # Interleaved shares keep the results easy to put back in order.
        slices = [list(batch[i::shares]) for i in range(shares)]
        answers = list(executor.map(self._send_share, slices))
        results: list[Result] = [Retry("not sent")] * len(batch)
        for i, share in enumerate(answers):
            results[i::shares] = share
        return results

    def _send_share(self, batch: list[Outgoing]) -> list[Result]:
        results: list[Result] = []
        conn, reused = self._take()
        for n, item in enumerate(batch):
            prepared = self._prepare(item)
            if not isinstance(prepared, tuple):
                results.append(prepared)
                continue
            try:
                if conn is None:
                    conn, reused = self._connect(), False
                try:
                    results.append(self._one(conn, *prepared))
                except _Lost:
                    if not reused:
                        raise
                    # An idle pooled connection the server closed meanwhile: say hello again.
                    _quietly_close(conn)
                    conn, reused = self._connect(), False
                    results.append(self._one(conn, *prepared))
                reused = False
                if conn.sock is None:  # a 421 reply: smtplib closed it, the next one reconnects
                    conn = None
            except smtplib.SMTPAuthenticationError as exc:
                # The operator's to fix: the messages wait instead of failing.
                error = classify_reply(exc.smtp_code, exc.smtp_error).error
                retry = Retry(f"SMTP login as {self.username!r} refused: {error}")
                return results + [retry] * (len(batch) - n)
            except (_Lost, OSError, smtplib.SMTPException) as exc:
                if conn is not None:
                    _quietly_close(conn)
                reason = Retry(f"SMTP connection to {self.host}:{self.port} failed: {_text(exc)}")
                return results + [reason] * (len(batch) - n)
        if conn is not None:
            self._idle.put(conn)
        return results

    def _prepare(self, item: Outgoing) -> tuple[str, str, str, bytes] | Failed:
        if not isinstance(item.content, Email):
            kind = type(item.content).__name__
            return Failed(f"the smtp channel sends email, not {kind}", "wrong_channel")
        try:
            return build(
                item.content, key=item.key, date=self.clock.now(), default_from=self.default_from
            )
        except BadEmail as exc:
            return Failed(str(exc), "invalid_email", bounce=False)

    def _one(self, conn: smtplib.SMTP, sender: str, to: str, mid: str, data: bytes) -> Result:
        """Send one message on `conn`: its Result, or _Lost when the connection died."""
        try:
            conn.sendmail(sender, [to], data)
        except smtplib.SMTPRecipientsRefused as exc:
            code, message = exc.recipients.get(to, (550, b"recipient refused"))
            return classify_reply(code, message)
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            return classify_reply(exc.smtp_code, exc.smtp_error)
        except smtplib.SMTPServerDisconnected as exc:
            raise _Lost(_text(exc)) from exc
        except smtplib.SMTPResponseException as exc:
            return classify_reply(exc.smtp_code, exc.smtp_error)
        return Sent(mid)

    def close(self) -> None:
        """Say goodbye on every pooled connection."""
        while True:
            conn, _ = self._take()
            if conn is None:
                break
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                _quietly_close(conn)
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown()
                self._executor = None


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _quietly_close(conn: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        conn.close()
