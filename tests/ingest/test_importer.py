"""Bulk import of JSONL and CSV files: validation, rejected rows by line, idempotence, memory."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from sqlalchemy import func, select

from nurture.core import Nurture
from nurture.errors import NurtureError, ValidationError
from nurture.ingest.importer import import_file
from nurture.store import tables as t


def events(nurture: Nurture) -> list[dict[str, Any]]:
    with nurture.db.read() as conn:
        rows = conn.execute(select(t.events).order_by(t.events.c.id)).mappings().all()
    return [dict(r) for r in rows]


def count(nurture: Nurture, table: Any) -> int:
    with nurture.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def live_contacts(nurture: Nurture) -> dict[str, dict[str, Any]]:
    c = t.contacts.c
    with nurture.db.read() as conn:
        rows = conn.execute(select(t.contacts).where(c.merged_into.is_(None))).mappings().all()
    return {r["user_id"]: dict(r) for r in rows}


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    """Each item is a message (dict) or a raw line (str)."""
    with path.open("wb") as f:
        for item in lines:
            f.write(item.encode() if isinstance(item, str) else orjson.dumps(item))
            f.write(b"\n")
    return path


def track(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "userId": f"u{n % 7}", "event": "Order Completed", **extra}


# -- JSONL -------------------------------------------------------------------------------


def test_jsonl_import_stores_every_message_once(nurture: Nurture, tmp_path: Path) -> None:
    # Given a file of tracks (half with a messageId, half without) and identifies
    lines: list[Any] = [track(i, messageId=f"m-{i}") for i in range(20)]
    lines += [track(i, properties={"n": i}) for i in range(20)]
    lines += [{"type": "identify", "userId": f"u{i}", "traits": {"plan": "pro"}} for i in range(7)]
    path = write_jsonl(tmp_path / "events.jsonl", lines)
    # When it is imported in small batches
    report = import_file(nurture, path, batch_size=8)
    # Then every message is stored once, under its own or a derived id
    assert (report.rows, report.accepted, report.duplicates, report.rejected) == (47, 47, 0, 0)
    stored = events(nurture)
    assert len(stored) == 47
    assert len({e["message_id"] for e in stored}) == 47
    assert {f"m-{i}" for i in range(20)} <= {e["message_id"] for e in stored}
    assert live_contacts(nurture)["u3"]["traits"] == {"plan": "pro"}


def test_reimporting_a_file_adds_nothing(nurture: Nurture, tmp_path: Path) -> None:
    # Given a file already imported, with messages without a messageId
    lines = [track(i, properties={"n": i}) for i in range(30)]
    lines += [{"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}}]
    path = write_jsonl(tmp_path / "events.jsonl", lines)
    first = import_file(nurture, path)
    before = (count(nurture, t.events), count(nurture, t.contacts))
    # When it is imported again
    second = import_file(nurture, path, batch_size=7)
    # Then everything is a duplicate and no row is added
    assert first.accepted == 31
    assert (second.accepted, second.duplicates, second.rejected) == (0, 31, 0)
    assert (count(nurture, t.events), count(nurture, t.contacts)) == before


def test_bad_lines_are_rejected_by_line_and_kept(nurture: Nurture, tmp_path: Path) -> None:
    # Given good lines around a line that is not JSON, a track without an event,
    # a blank line, a 40 KB message and an event with a bad timestamp
    big = track(0, messageId="big", properties={"blob": "x" * 40_000})
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            track(1, messageId="ok-1"),
            '{"type": "track", "userId": ',
            {"type": "track", "userId": "u9", "messageId": "no-event"},
            "",
            big,
            track(2, messageId="bad-time", timestamp="yesterday"),
            track(3, messageId="ok-7"),
        ],
    )
    # When it is imported (in batches that split the bad lines)
    report = import_file(nurture, path, batch_size=2)
    # Then the good lines are stored and each bad one is reported with its line
    assert sorted(e["message_id"] for e in events(nurture)) == ["ok-1", "ok-7"]
    assert (report.rows, report.accepted, report.rejected) == (6, 2, 4)
    by_line = {s.line: (s.code, s.path) for s in report.samples}
    assert by_line == {
        2: ("invalid_json", None),
        3: ("missing_field", "event"),
        5: ("message_too_large", None),
        6: ("invalid_timestamp", "timestamp"),
    }
    # And they are kept raw like HTTP rejections, with the file line as their source
    kept = {r.source: r for r in nurture.rejected.page()}
    assert set(kept) == {f"import mixed.jsonl:{n}" for n in (2, 3, 5, 6)}
    assert kept["import mixed.jsonl:2"].raw == '{"type": "track", "userId": '
    assert orjson.loads(kept["import mixed.jsonl:5"].raw or "") == big
    assert kept["import mixed.jsonl:3"].message_id == "no-event"


def test_rejected_lines_replay_after_the_limit_is_raised(nurture: Nurture, tmp_path: Path) -> None:
    # Given an import whose 40 KB message was rejected for its size
    big = track(0, messageId="big", properties={"blob": "x" * 40_000})
    path = write_jsonl(tmp_path / "big.jsonl", [track(1, messageId="small"), "nope", big])
    import_file(nurture, path)
    # When the limit is raised and the rejected input is replayed
    roomy = Nurture(
        nurture.settings.model_copy(update={"max_message_bytes": 64 * 1024}),
        clock=nurture.clock,
        db=nurture.db,
    )
    roomy.writer.start()
    try:
        replay = roomy.rejected.replay()
    finally:
        roomy.writer.stop()
    # Then the big message is stored and the line that is not JSON stays listed
    assert (replay.accepted, replay.still_rejected) == (1, 1)
    assert sorted(e["message_id"] for e in events(nurture)) == ["big", "small"]
    assert [r.source for r in nurture.rejected.page()] == ["import big.jsonl:2"]


def test_gzip_jsonl_is_read_compressed(nurture: Nurture, tmp_path: Path) -> None:
    # Given a gzip-compressed JSONL file
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wb") as f:
        for i in range(25):
            f.write(orjson.dumps(track(i, messageId=f"gz-{i}")) + b"\n")
    # When it is imported
    report = import_file(nurture, path, batch_size=10)
    # Then its messages are stored and the whole (compressed) file was read
    assert report.accepted == 25
    assert count(nurture, t.events) == 25
    assert report.bytes_read == path.stat().st_size


def test_a_file_that_cannot_be_read_stops_with_an_error(nurture: Nurture, tmp_path: Path) -> None:
    # Given a missing file, and a gzip file cut in the middle
    whole = gzip.compress(b"".join(orjson.dumps(track(i)) + b"\n" for i in range(5000)))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    # When they are imported
    with pytest.raises(NurtureError) as missing:
        import_file(nurture, tmp_path / "missing.jsonl")
    with pytest.raises(NurtureError) as truncated:
        import_file(nurture, cut)
    # Then the error says the file is unreadable, and what was read before is kept
    assert missing.value.code == "unreadable_file"
    assert truncated.value.code == "unreadable_file"
    assert 0 < count(nurture, t.events) < 5000


# -- CSV ---------------------------------------------------------------------------------


def test_csv_contacts_with_a_mapping(nurture: Nurture, tmp_path: Path) -> None:
    # Given a contacts CSV with its own column names, nested traits and a column to drop
    path = tmp_path / "contacts.csv"
    path.write_text(
        "id,E-Mail,Mobile,plan,address.city,seats,notes\n"
        'c1,  Ada@Example.COM ,+1 (415) 555-2671,pro,London,12,"call her, maybe"\n'
        "c2,bob@example.com,,,,,\n",
        encoding="utf-8",
    )
    mapping = {"Mobile": "phone", "seats": "traits.seats:int", "notes": "-"}
    # When it is imported as contacts
    report = import_file(nurture, path, kind="contacts", mapping=mapping)
    # Then each row is a contact with its traits, reserved ones normalised
    assert (report.accepted, report.rejected, report.kind) == (2, 0, "contacts")
    contacts = live_contacts(nurture)
    ada, bob = contacts["c1"], contacts["c2"]
    assert ada["email"] == "ada@example.com"
    assert ada["phone"] == "+14155552671"
    assert ada["traits"]["plan"] == "pro"
    assert ada["traits"]["address"] == {"city": "London"}
    assert ada["traits"]["seats"] == 12
    assert "notes" not in ada["traits"]
    # And empty cells are absent rather than empty strings
    assert bob["traits"] == {"email": "bob@example.com"}
    assert bob["phone"] is None
    assert {e["type"] for e in events(nurture)} == {"identify"}


def test_csv_events_with_typed_properties(nurture: Nurture, tmp_path: Path) -> None:
    # Given an events CSV with numbers, flags and an SKU that must stay a string
    path = tmp_path / "orders.csv"
    path.write_text(
        "user_id,event,timestamp,total,quantity,gift,sku\n"
        "u1,Order Completed,2026-02-01T10:00:00Z,12.50,2,yes,00123\n"
        "u2,Order Completed,2026-02-02T11:00:00+01:00,7,1,no,00456\n"
        "u3,Order Completed,2026-02-03T10:00:00Z,lots,1,no,00789\n",
        encoding="utf-8",
    )
    mapping = {"total": "properties.total:number", "quantity": ":int", "gift": "gift:bool"}
    # When it is imported (the kind guessed from the event column)
    report = import_file(nurture, path, mapping=mapping)
    # Then rows become track events with typed properties
    assert (report.kind, report.accepted, report.rejected) == ("events", 2, 1)
    stored = {e["user_id"]: e for e in events(nurture)}
    assert stored["u1"]["type"] == "track"
    assert stored["u1"]["event"] == "Order Completed"
    assert stored["u1"]["properties"] == {
        "total": 12.5,
        "quantity": 2,
        "gift": True,
        "sku": "00123",
    }
    assert stored["u2"]["properties"]["total"] == 7
    assert stored["u2"]["timestamp"].isoformat() == "2026-02-02T10:00:00+00:00"
    # And the row that cannot be converted is rejected by line, its cells kept
    [sample] = report.samples
    assert (sample.line, sample.code, sample.path) == (4, "invalid_value", "properties.total")
    [kept] = nurture.rejected.page()
    assert kept.source == "import orders.csv:4"
    assert orjson.loads(kept.raw or "")["total"] == "lots"
    # And importing the file again adds nothing
    again = import_file(nurture, path, mapping=mapping)
    assert (again.accepted, again.duplicates) == (0, 2)
    assert count(nurture, t.events) == 2


def test_csv_row_lines_count_quoted_newlines(nurture: Nurture, tmp_path: Path) -> None:
    # Given a CSV whose second row spans two lines and whose third has no user
    path = tmp_path / "e.csv"
    path.write_text('userId,event,note\nu1,Signed Up,"two\nlines"\n,Signed Up,x\n')
    # When it is imported
    report = import_file(nurture, path)
    # Then the row without a user is reported at the line where it starts
    assert report.accepted == 1
    assert [(s.line, s.code) for s in report.samples] == [(4, "missing_field")]


def test_a_mapping_naming_unknown_columns_is_refused(nurture: Nurture, tmp_path: Path) -> None:
    # Given a CSV and a mapping for a column it does not have
    path = tmp_path / "c.csv"
    path.write_text("email\na@example.com\n")
    # When it is imported, Then the import is refused before anything is stored
    with pytest.raises(ValidationError, match="nope"):
        import_file(nurture, path, mapping={"nope": "email"})
    assert count(nurture, t.events) == 0


# -- memory ------------------------------------------------------------------------------


# The importer's memory does not depend on the backend; PostgreSQL would only make it slower.
@pytest.mark.parametrize("backend", ["sqlite"])
def test_memory_stays_flat_on_a_large_file(nurture: Nurture, tmp_path: Path) -> None:
    # Given a 200,000-line file (about 60 MB) over 20,000 users
    path = tmp_path / "large.jsonl"
    with path.open("wb") as f:
        for i in range(200_000):
            message = {
                "type": "track",
                "userId": f"user-{i % 20_000}",
                "event": "Page Viewed",
                "messageId": f"large-{i}",
                "timestamp": "2026-02-01T10:00:00Z",
                "properties": {"path": f"/products/{i}", "title": "A product page " * 8},
            }
            f.write(orjson.dumps(message) + b"\n")
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline

    def sample(_bytes: int, _rows: int) -> None:
        nonlocal peak
        peak = max(peak, process.memory_info().rss)

    # When it is imported
    report = import_file(nurture, path, progress=sample)
    # Then every row is stored while resident memory grew by far less than the file
    assert report.accepted == 200_000
    assert peak - baseline < 150 * 1024 * 1024, f"RSS grew {(peak - baseline) >> 20} MB"
