"""The file outbox, for development: each message becomes a file in a folder instead of
leaving the machine. Email is written as the real MIME (`.eml`, opens in any mail client);
everything else as `.json`. A file's name comes from the outbox key, so a retry of the same
message overwrites its file instead of adding a second one; writes are atomic (a temporary
file renamed into place), so a reader never sees half a message.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import orjson

from nurture.channels.base import Email, Failed, Outgoing, Result, Retry, Sent
from nurture.channels.memory import ALL_CHANNELS, address_of, channel_of
from nurture.channels.mime import BadEmail, build
from nurture.clock import Clock, SystemClock

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_stem(key: str) -> str:
    """The file name (without suffix) for the outbox key: readable, unique, stable."""
    readable = _UNSAFE.sub("_", key).strip("._")[:60]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


class FileChannel:
    """Writes each message into `directory` (created when missing)."""

    provider = "file"

    def __init__(
        self,
        directory: Path | str = "outbox",
        *,
        channels: frozenset[str] = ALL_CHANNELS,
        default_from: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.channels = frozenset(channels)
        self.default_from = default_from
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()

    def send(self, batch: Sequence[Outgoing]) -> list[Result]:
        """Write each message; an unwritable folder is a Retry (it may be fixed)."""
        return [self._one(item) for item in batch]

    def _one(self, item: Outgoing) -> Result:
        name = channel_of(item.content)
        if name not in self.channels:
            return Failed(f"the file channel is not set up for {name}", "wrong_channel")
        stem = file_stem(item.key)
        if isinstance(item.content, Email):
            try:
                now, sender = self.clock.now(), self.default_from
                *_, data = build(item.content, key=item.key, date=now, default_from=sender)
            except BadEmail as exc:
                return Failed(str(exc), "invalid_email")
            path = self.directory / f"{stem}.eml"
        else:
            document = {
                "channel": name,
                "key": item.key,
                "to": address_of(item.content),
                "content": asdict(item.content),
                "tags": item.tags,
                "written_at": self.clock.now().isoformat(),
            }
            data = orjson.dumps(document, option=orjson.OPT_INDENT_2)
            path = self.directory / f"{stem}.json"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError as exc:
            return Retry(f"cannot write {path}: {exc.strerror or exc}")
        return Sent(path.name)

    def close(self) -> None:
        """Nothing to release."""
