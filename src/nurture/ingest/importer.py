"""Bulk import: stream a JSONL or CSV file through the same validation as HTTP ingest.

The file is read line by line and never held whole: rows are parsed in batches
of `batch_size`, each batch is handed to the ingest writer, and at most
`in_flight` batches wait for their commit (back-pressure), so parsing the next
batch overlaps the commit of the previous one and memory stays flat however
large the file is.

Formats (guessed from the name; `.gz` is read compressed):

- **JSONL** (`.jsonl`, `.ndjson`, `.json`): one Segment message per line.
- **CSV** (`.csv`, UTF-8, a header row): each row becomes an `identify`
  (`kind="contacts"`) or a `track` (`kind="events"`); columns are mapped by name
  or by `mapping` (`--map column=target:type`), as `ingest/csv_mapping.py` describes.

Idempotence: a message keeps its `messageId`; one without gets an id derived
from its content (`derived_message_id`), and CSV rows are turned into messages
deterministically, so a re-imported file is stored as duplicates only. The
other side of that coin: two identical rows without a messageId are one event.

Rows that are not JSON, cannot be mapped or fail validation are rejected and
kept in `rejected_events` like HTTP rejections, with `source` set to
`import <file name>:<line>`; they never stop the import. A JSONL row is kept as
its line; a CSV row as the Segment message built from it, or (when it could
not be built) as a JSON object of its cells keyed by column name.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, cast

import orjson
from sqlalchemy.exc import SQLAlchemyError

from nurture.errors import NurtureError, StorageUnavailable, ValidationError
from nurture.ingest.csv_mapping import (
    KINDS,
    CellError,
    Kind,
    build_message,
    compile_columns,
    guess_kind,
)
from nurture.ingest.service import BatchResult, ParsedBatch, Rejection

if TYPE_CHECKING:
    from nurture.core import Nurture

Format = Literal["jsonl", "csv"]
Progress = Callable[[int, int], None]
"""Called after each batch with (bytes of the file read so far, rows read so far)."""

FORMATS: tuple[Format, ...] = ("jsonl", "csv")
SAMPLE_LIMIT = 20
_EXTENSIONS: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """One rejected row, by its line in the file."""

    line: int
    code: str
    path: str | None
    message: str
    message_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "code": self.code,
            "path": self.path,
            "message": self.message,
            "messageId": self.message_id,
        }


@dataclass
class ImportReport:
    """What an import did; `accepted + duplicates + rejected == rows`."""

    file: str
    format: Format
    kind: Kind | None = None
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    samples: list[RejectedRow] = field(default_factory=list)  # the first SAMPLE_LIMIT
    bytes_read: int = 0
    elapsed: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "kind": self.kind,
            "rows": self.rows,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejectedSamples": [s.to_dict() for s in self.samples],
            "bytesRead": self.bytes_read,
            "elapsedSeconds": round(self.elapsed, 3),
            "rowsPerSecond": round(self.rows_per_second, 1),
        }


def guess_format(path: Path) -> Format:
    """The format a file name says (`.gz` looked through)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    found = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if found is None:
        raise ValidationError(
            f"cannot tell the format of {path.name} from its name; give it as jsonl or csv",
            path="format",
        )
    return found


def import_file(
    nurture: Nurture,
    path: Path | str,
    *,
    fmt: Format | None = None,
    kind: Kind | None = None,
    mapping: dict[str, str] | None = None,
    batch_size: int = 1000,
    in_flight: int = 4,
    progress: Progress | None = None,
) -> ImportReport:
    """Import a JSONL or CSV file (see the module docstring); `nurture` must be started.

    Raises ValidationError for wrong options, `unreadable_file` when the file
    cannot be read (rows before the failure are stored; a re-run does not add
    them twice), StorageUnavailable when the database refuses a batch."""
    path = Path(path)
    fmt = fmt or guess_format(path)
    if fmt not in FORMATS:
        raise ValidationError(f"unknown format {fmt!r}; use jsonl or csv", path="format")
    if kind is not None and kind not in KINDS:
        raise ValidationError(f"unknown kind {kind!r}; use events or contacts", path="kind")
    if fmt == "jsonl" and (kind is not None or mapping):
        raise ValidationError("kind and column mappings apply to CSV files only", path="kind")
    if batch_size < 1:
        raise ValidationError("batch size must be at least 1", path="batch_size")
    report = ImportReport(file=str(path), format=fmt, kind=kind)
    run = _Run(nurture, path, report, max(1, in_flight), progress)
    start = nurture.clock.monotonic()
    with _open(path) as (raw, stream):
        run.raw = raw
        try:
            if fmt == "jsonl":
                batches = _jsonl_batches(run, stream, batch_size)
            else:
                text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
                batches = _csv_batches(run, text, kind, mapping or {}, batch_size)
            for batch in batches:
                run.submit(batch)
        except (OSError, EOFError, csv.Error) as exc:
            run.drain()
            raise _unreadable(path, f"stopped after {report.rows} rows: {exc}") from exc
        finally:
            run.drain()
    report.elapsed = nurture.clock.monotonic() - start
    return report


def _unreadable(path: Path, why: str) -> NurtureError:
    return NurtureError(f"cannot read {path}: {why}", path="file", code="unreadable_file")


@contextmanager
def _open(path: Path) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
    """(the file on disk, for progress; the stream of its content, uncompressed)."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise _unreadable(path, exc.strerror or str(exc)) from None
    with raw:
        head = raw.read(2)
        raw.seek(0)
        if head == b"\x1f\x8b":  # gzip magic, whatever the name says
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield raw, cast(IO[bytes], unzipped)
        else:
            yield raw, raw


class _Run:
    """One import in progress: submits batches, keeps back-pressure, adds up results."""

    def __init__(
        self,
        nurture: Nurture,
        path: Path,
        report: ImportReport,
        in_flight: int,
        progress: Progress | None,
    ) -> None:
        self.nurture = nurture
        self.report = report
        self.source = f"import {path.name}"
        self.in_flight = in_flight
        self.progress = progress
        self.pending: deque[Future[BatchResult]] = deque()
        self.raw: IO[bytes] | None = None
        self.keep_bytes = max(nurture.settings.rejected_keep_bytes, 1024)
        self.max_message_bytes = nurture.settings.max_message_bytes

    def reject(
        self, line: int, code: str, path: str | None, message: str, raw: str | None, size: int
    ) -> Rejection:
        """A rejection of a row that never reached validation (not JSON, not mappable)."""
        return Rejection(line, None, code, path, message, raw, size, self.source)

    def validate(self, raws: list[Any], lines: list[int], early: list[Rejection]) -> ParsedBatch:
        """parse_batch on the rows, rejections renumbered by file line."""
        batch = self.nurture.parse(raws, source=self.source, path_prefix="")
        for r in batch.rejections:
            assert r.index is not None
            r.index = lines[r.index]
        if early:
            batch.rejections = sorted([*early, *batch.rejections], key=_line_of)
        for r in batch.rejections:
            r.source = f"{self.source}:{r.index}"
        return batch

    def submit(self, batch: ParsedBatch) -> None:
        report = self.report
        report.rows += len(batch.messages) + len(batch.rejections)
        report.rejected += len(batch.rejections)
        for r in batch.rejections[: max(0, SAMPLE_LIMIT - len(report.samples))]:
            report.samples.append(RejectedRow(_line_of(r), r.code, r.path, r.message, r.message_id))
        if batch.messages or batch.rejections:
            self.pending.append(self.nurture.writer.submit(batch))
        while len(self.pending) > self.in_flight:
            self._collect(self.pending.popleft())
        if self.raw is not None:
            report.bytes_read = self.raw.tell()
        if self.progress is not None:
            self.progress(report.bytes_read, report.rows)

    def drain(self) -> None:
        while self.pending:
            self._collect(self.pending.popleft())

    def _collect(self, future: Future[BatchResult]) -> None:
        try:
            result = future.result()
        except StorageUnavailable:
            self.pending.clear()  # the writer still finishes them; we stop waiting
            raise
        except SQLAlchemyError as exc:
            self.pending.clear()
            raise StorageUnavailable(f"the event store refused the import: {exc}") from exc
        self.report.accepted += result.accepted
        self.report.duplicates += result.duplicates


def _line_of(r: Rejection) -> int:
    return r.index or 0


# -- JSONL ---------------------------------------------------------------------


def _jsonl_batches(run: _Run, stream: IO[bytes], batch_size: int) -> Iterator[ParsedBatch]:
    raws: list[Any] = []
    lines: list[int] = []
    early: list[Rejection] = []
    limit = run.keep_bytes + 1
    readline = stream.readline
    loads = orjson.loads
    number = 0
    while True:
        line = readline(limit)
        if not line:
            break
        number += 1
        if len(line) == limit and not line.endswith(b"\n"):
            # Too long to keep: skip the rest of the line rather than hold it in memory.
            size = len(line)
            while line and not line.endswith(b"\n"):
                line = readline(limit)
                size += len(line)
            message = (
                f"line is {size} bytes, over the {run.max_message_bytes}-byte message limit"
                " and too large to keep"
            )
            early.append(run.reject(number, "message_too_large", None, message, None, size))
        else:
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            try:
                raws.append(loads(line))
                lines.append(number)
            except orjson.JSONDecodeError as exc:
                if not line.strip():
                    continue
                text = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
                message = f"line is not valid JSON: {exc}"
                early.append(run.reject(number, "invalid_json", None, message, text, len(line)))
        if len(raws) + len(early) >= batch_size:
            yield run.validate(raws, lines, early)
            raws, lines, early = [], [], []
    if raws or early:
        yield run.validate(raws, lines, early)


# -- CSV -----------------------------------------------------------------------


def _row_text(header: list[str], row: list[str]) -> str:
    cells: dict[str, Any] = dict(zip(header, row, strict=False))
    if len(row) > len(header):
        cells["(extra cells)"] = row[len(header) :]
    return orjson.dumps(cells).decode()


def _csv_batches(
    run: _Run, text: IO[str], kind: Kind | None, mapping: dict[str, str], batch_size: int
) -> Iterator[ParsedBatch]:
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [h.strip() for h in header]
    if kind is None:
        kind = guess_kind(header, mapping)
    run.report.kind = kind
    columns = compile_columns(header, kind, mapping)
    raws: list[Any] = []
    lines: list[int] = []
    early: list[Rejection] = []
    last = reader.line_num
    while True:
        number = last + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            last = reader.line_num
            early.append(run.reject(number, "invalid_csv", None, str(exc), None, 0))
            continue
        last = reader.line_num
        if not row or not any(row):
            continue
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header) :]):
            raw = _row_text(header, row)
            message = f"the row has {len(row)} cells; the header has {len(header)}"
            early.append(run.reject(number, "invalid_csv", None, message, raw, len(raw)))
        else:
            try:
                raws.append(build_message(row, columns, kind))
                lines.append(number)
            except CellError as exc:
                raw = _row_text(header, row)
                message = f"column {exc.column.name!r}: {exc.reason}"
                early.append(
                    run.reject(number, "invalid_value", exc.column.target, message, raw, len(raw))
                )
        if len(raws) + len(early) >= batch_size:
            yield run.validate(raws, lines, early)
            raws, lines, early = [], [], []
    if raws or early:
        yield run.validate(raws, lines, early)
