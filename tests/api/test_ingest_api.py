"""The Segment-spec ingest endpoints: auth, bodies, limits, per-message validation."""

from __future__ import annotations

import base64
import gzip
import time
import weakref
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from nurture.core import Nurture
from nurture.store import tables as t


def stored(nurture: Nurture) -> list[dict[str, Any]]:
    with nurture.db.read() as conn:
        rows = conn.execute(select(t.events).order_by(t.events.c.id)).mappings().all()
    return [dict(r) for r in rows]


def rejected(nurture: Nurture) -> list[dict[str, Any]]:
    with nurture.db.read() as conn:
        rows = conn.execute(select(t.rejected_events).order_by(t.rejected_events.c.id))
        return [dict(r) for r in rows.mappings()]


# -- auth ------------------------------------------------------------------------------


def test_basic_auth_with_write_key_as_user_name(client: TestClient, write_key: str) -> None:
    # Given the header Segment SDKs send: base64("<key>:")
    token = base64.b64encode(f"{write_key}:".encode()).decode()
    # When a track call is made
    r = client.post(
        "/v1/track", json={"userId": "u", "event": "E"}, headers={"Authorization": f"Basic {token}"}
    )
    # Then it is stored
    assert r.status_code == 200 and r.json()["accepted"] == 1


def test_bearer_auth(client: TestClient, write_key: str) -> None:
    r = client.post(
        "/v1/identify", json={"userId": "u"}, headers={"Authorization": f"Bearer {write_key}"}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "header",
    [None, "Basic bm9wZTo=", "Bearer nk_w_wrong", "Basic !!!notbase64", "Token abc"],
)
def test_missing_or_wrong_key_is_401_json(
    client: TestClient, nurture: Nurture, write_key: str, header: str | None
) -> None:
    # Given a request without a valid key
    headers = {"Authorization": header} if header else {}
    # When it is sent
    r = client.post("/v1/track", json={"userId": "u", "event": "E"}, headers=headers)
    # Then it is refused with a JSON error, and nothing is stored
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert stored(nurture) == []


def test_revoked_key_stops_working(client: TestClient, nurture: Nurture) -> None:
    key, secret = nurture.keys.create("write")
    assert client.post("/v1/identify", json={"userId": "a"}, auth=(secret, "")).status_code == 200
    nurture.keys.revoke(key.id)
    assert client.post("/v1/identify", json={"userId": "b"}, auth=(secret, "")).status_code == 401


def test_admin_api_refuses_write_key(client: TestClient, write_key: str, admin_key: str) -> None:
    assert client.get("/api/rejected", auth=(write_key, "")).status_code == 403
    assert client.get("/api/rejected", auth=(admin_key, "")).status_code == 200


# -- bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("content_encoding", [None, "gzip", "identity"])
def test_gzip_body_is_read_whatever_the_headers_say(
    client: TestClient, nurture: Nurture, write_key: str, content_encoding: str | None
) -> None:
    # Given a gzip-compressed batch, with or without (or with a wrong) Content-Encoding
    body = {"batch": [{"type": "track", "userId": "u", "event": "Zipped", "messageId": "z1"}]}
    headers = {"Content-Type": "text/plain"}
    if content_encoding:
        headers["Content-Encoding"] = content_encoding
    # When it is posted
    r = client.post(
        "/v1/batch",
        content=gzip.compress(orjson.dumps(body)),
        headers=headers,
        auth=(write_key, ""),
    )
    # Then it is decoded and stored
    assert r.status_code == 200, r.text
    assert [e["event"] for e in stored(nurture)] == ["Zipped"]


def test_null_fields_are_tolerated(client: TestClient, nurture: Nurture, write_key: str) -> None:
    body = {
        "userId": "u1",
        "anonymousId": None,
        "event": "E",
        "properties": None,
        "context": None,
        "timestamp": None,
        "integrations": None,
        "messageId": None,
    }
    r = client.post("/v1/track", json=body, auth=(write_key, ""))
    assert r.status_code == 200, r.text
    (event,) = stored(nurture)
    assert event["properties"] is None and event["anonymous_id"] is None


def test_identify_traits_from_context_traits(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    # Given an identify whose client put the traits under context.traits
    body = {"userId": "u1", "context": {"traits": {"email": "ctx@example.com", "plan": "pro"}}}
    client.post("/v1/identify", json=body, auth=(write_key, ""))
    # Then the contact has them
    with nurture.db.read() as conn:
        row = conn.execute(select(t.contacts.c.email, t.contacts.c.traits)).one()
    assert row.email == "ctx@example.com" and row.traits["plan"] == "pro"


def test_invalid_json_is_400_and_kept(client: TestClient, nurture: Nurture, write_key: str) -> None:
    r = client.post("/v1/batch", content=b'{"batch": [', auth=(write_key, ""))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    (row,) = rejected(nurture)
    assert row["raw"] == '{"batch": [' and row["code"] == "invalid_json"


def test_batch_without_batch_array_names_the_field(client: TestClient, write_key: str) -> None:
    r = client.post("/v1/batch", json={"messages": []}, auth=(write_key, ""))
    assert r.status_code == 400
    assert r.json()["error"] == {
        "code": "missing_field",
        "message": "expected an array of messages",
        "path": "batch",
    }


# -- limits ------------------------------------------------------------------------------


def test_message_over_32kb_is_rejected_alone(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    # Given a batch with one 40 KB message between two good ones
    big = {"type": "track", "userId": "u", "event": "Big", "properties": {"blob": "x" * 40_000}}
    good = [
        {"type": "track", "userId": "u", "event": f"E{i}", "messageId": f"g{i}"} for i in (1, 2)
    ]
    # When it is posted
    r = client.post("/v1/batch", json={"batch": [good[0], big, good[1]]}, auth=(write_key, ""))
    # Then the batch succeeds, the big one is listed with its index, and kept raw
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 2
    assert [(x["index"], x["code"]) for x in body["rejected"]] == [(1, "message_too_large")]
    (row,) = rejected(nurture)
    assert orjson.loads(row["raw"])["event"] == "Big"


def test_single_message_over_32kb_is_413(client: TestClient, write_key: str) -> None:
    r = client.post(
        "/v1/track",
        json={"userId": "u", "event": "E", "properties": {"b": "x" * 40_000}},
        auth=(write_key, ""),
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "message_too_large"


def test_request_over_500kb_is_413_and_kept(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    # Given a 600 KB batch of small messages
    batch = [
        {"type": "track", "userId": "u", "event": "E", "properties": {"p": "y" * 1000}}
        for _ in range(600)
    ]
    r = client.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
    # Then it is refused as a whole with 413, nothing stored, the body kept for inspection
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert stored(nurture) == []
    (row,) = rejected(nurture)
    assert row["code"] == "payload_too_large" and len(row["raw"]) > 500 * 1024


def test_gzip_bomb_is_413(client: TestClient, write_key: str) -> None:
    # 50 MB of zeros compress to ~50 KB
    payload = gzip.compress(b'{"batch": [' + b" " * 50_000_000 + b"]}")
    r = client.post("/v1/batch", content=payload, auth=(write_key, ""))
    assert r.status_code == 413


# -- per-message validation ----------------------------------------------------------------


def test_one_bad_message_never_fails_the_batch(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    # Given a batch with each kind of invalid message among valid ones
    batch = [
        {"type": "track", "userId": "u1", "event": "Good 1", "messageId": "ok1"},
        {"type": "track", "userId": "u1", "messageId": "bad-event"},
        {"type": "identify", "messageId": "bad-ids"},
        {
            "type": "track",
            "userId": "u1",
            "event": "E",
            "timestamp": "yesterday",
            "messageId": "bad-ts",
        },
        {"type": "teleport", "userId": "u1", "messageId": "bad-type"},
        {"type": "track", "userId": {"id": 1}, "event": "E", "messageId": "bad-uid"},
        {
            "type": "track",
            "userId": "u1",
            "event": "E",
            "properties": [1, 2],
            "messageId": "bad-props",
        },
        "not an object",
        {"type": "alias", "userId": "u1", "messageId": "bad-alias"},
        {"type": "group", "userId": "u1", "messageId": "bad-group"},
        {"type": "page", "userId": "u1", "name": "Home", "messageId": "ok2"},
    ]
    # When it is posted
    r = client.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
    # Then the valid ones are stored and each invalid one is listed with code and path
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 2
    got = [(x["index"], x["messageId"], x["code"], x["path"]) for x in body["rejected"]]
    assert got == [
        (1, "bad-event", "missing_field", "batch[1].event"),
        (2, "bad-ids", "missing_field", "batch[2].userId"),
        (3, "bad-ts", "invalid_timestamp", "batch[3].timestamp"),
        (4, "bad-type", "invalid_value", "batch[4].type"),
        (5, "bad-uid", "invalid_type", "batch[5].userId"),
        (6, "bad-props", "invalid_type", "batch[6].properties"),
        (7, None, "invalid_type", "batch[7]"),
        (8, "bad-alias", "missing_field", "batch[8].previousId"),
        (9, "bad-group", "missing_field", "batch[9].groupId"),
    ]
    assert sorted(e["message_id"] for e in stored(nurture)) == ["ok1", "ok2"]
    # and every rejected message is kept raw for inspection and replay
    kept = rejected(nurture)
    assert [k["message_id"] for k in kept] == [x[1] for x in got]
    assert orjson.loads(kept[0]["raw"]) == batch[1]


def test_rejected_message_is_replayed_after_the_fix(
    client: TestClient, nurture: Nurture, write_key: str, admin_key: str
) -> None:
    # Given a message rejected because of a bad timestamp
    r = client.post(
        "/v1/track",
        json={
            "userId": "u",
            "event": "E",
            "timestamp": "2026-13-45T00:00:00Z",
            "messageId": "fixme",
        },
        auth=(write_key, ""),
    )
    assert r.status_code == 400
    assert r.json()["error"]["path"] == "timestamp"
    (row,) = nurture.rejected.page()
    # When the raw input is fixed in place (as an operator would) and replayed
    fixed = orjson.loads(row.raw or "null")
    fixed["timestamp"] = "2026-02-01T00:00:00Z"
    with nurture.db.write() as conn:
        conn.execute(t.rejected_events.update().values(raw=orjson.dumps(fixed).decode()))
    report = client.post("/api/rejected/replay", json={}, auth=(admin_key, "")).json()
    # Then it is stored, typed by the endpoint it came to, and no longer pending
    assert report == {"accepted": 1, "duplicates": 0, "stillRejected": 0}
    (event,) = stored(nurture)
    assert event["type"] == "track" and event["message_id"] == "fixme"
    assert nurture.rejected.page() == []
    assert nurture.rejected.page(pending_only=False)[0].replay_result == "accepted"


def test_replay_of_still_bad_input_keeps_it(nurture: Nurture) -> None:
    nurture.ingest([{"type": "track", "userId": "u"}], source="test")
    report = nurture.rejected.replay()
    assert report.still_rejected == 1 and report.accepted == 0
    (row,) = nurture.rejected.page()
    assert row.code == "missing_field" and row.replay_result == "rejected"


# -- dedupe and timestamps -------------------------------------------------------------------


def test_message_id_dedupes_within_and_across_batches(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    m = {"type": "track", "userId": "u", "event": "E", "messageId": "same"}
    first = client.post("/v1/batch", json={"batch": [m, m]}, auth=(write_key, "")).json()
    again = client.post("/v1/batch", json={"batch": [m]}, auth=(write_key, "")).json()
    assert (first["accepted"], first["duplicates"]) == (1, 1)
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    with nurture.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(t.events)).scalar() == 1


def test_timestamps_follow_segment_rules(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    # Given the server clock at 2026-03-01T12:00:00Z (the simulated clock)
    batch = [
        # an explicit timestamp is kept
        {
            "type": "track",
            "userId": "u",
            "event": "A",
            "messageId": "a",
            "timestamp": "2026-02-01T10:00:00+02:00",
        },
        # a device clock 1 h fast: sent 30 s after the event happened
        {
            "type": "track",
            "userId": "u",
            "event": "B",
            "messageId": "b",
            "originalTimestamp": "2026-03-01T12:59:30Z",
            "sentAt": "2026-03-01T13:00:00Z",
        },
        # no times at all: receivedAt
        {"type": "track", "userId": "u", "event": "C", "messageId": "c"},
        # the batch-level sentAt applies to messages without their own
        {
            "type": "track",
            "userId": "u",
            "event": "D",
            "messageId": "d",
            "originalTimestamp": "2026-03-01T11:00:00Z",
        },
    ]
    body = {"batch": batch, "sentAt": "2026-03-01T11:00:10Z"}
    assert client.post("/v1/batch", json=body, auth=(write_key, "")).status_code == 200
    by_id = {e["message_id"]: e for e in stored(nurture)}
    iso = {k: v["timestamp"].isoformat() for k, v in by_id.items()}
    assert iso == {
        "a": "2026-02-01T08:00:00+00:00",
        "b": "2026-03-01T11:59:30+00:00",
        "c": "2026-03-01T12:00:00+00:00",
        "d": "2026-03-01T11:59:50+00:00",
    }
    assert all(e["received_at"].isoformat() == "2026-03-01T12:00:00+00:00" for e in by_id.values())


def test_a_device_clock_correction_out_of_range_rejects_that_message_alone(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    # Given a message whose originalTimestamp is centuries before its sentAt: the
    # corrected time (receivedAt - (sentAt - originalTimestamp)) is before year 1
    far = {
        "type": "track", "userId": "u", "event": "A", "messageId": "far",
        "originalTimestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z",
    }  # fmt: skip
    good = {"type": "track", "userId": "u", "event": "B", "messageId": "good"}
    response = client.post("/v1/batch", json={"batch": [far, good]}, auth=(write_key, ""))
    # Then the batch is answered, that message is rejected naming the field, the other kept
    assert response.status_code == 200
    assert [e["message_id"] for e in stored(nurture)] == ["good"]
    (kept,) = rejected(nurture)
    assert (kept["code"], kept["path"]) == ("invalid_timestamp", "batch[0].originalTimestamp")


# -- Segment compatibility details -------------------------------------------------------------


def test_write_key_in_the_body_is_accepted(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    # Given a batch that carries its key as `writeKey` (Segment's API allows it)
    body = {"writeKey": write_key, "batch": [{"type": "track", "userId": "u", "event": "E"}]}
    # When it is posted without an Authorization header, to /v1/import as analytics-ruby does
    r = client.post("/v1/import", json=body)
    # Then it is stored
    assert r.status_code == 200 and r.json()["accepted"] == 1


def test_unauthenticated_bad_body_is_refused_and_not_kept(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    for content in (b"not json", orjson.dumps({"writeKey": "nk_w_wrong", "batch": []})):
        r = client.post("/v1/batch", content=content)
        assert r.status_code == 401
    assert rejected(nurture) == []


def test_browser_preflight_is_allowed(client: TestClient) -> None:
    r = client.options(
        "/v1/track",
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"


def test_key_revoked_elsewhere_stops_working_after_the_cache_time(
    client: TestClient, nurture: Nurture, clock: Any
) -> None:
    # Given a key this server has already seen
    key, secret = nurture.keys.create("write")
    assert client.post("/v1/identify", json={"userId": "a"}, auth=(secret, "")).status_code == 200
    # When another process (the CLI) revokes it
    from datetime import timedelta

    from nurture.keys import CACHE_SECONDS, KeyStore

    KeyStore(nurture.db, clock).revoke(key.id)
    # Then this server refuses it once its cached check has expired
    clock.advance(timedelta(seconds=CACHE_SECONDS + 1))
    assert client.post("/v1/identify", json={"userId": "b"}, auth=(secret, "")).status_code == 401


def test_timezone_from_context_survives_a_later_identify(nurture: Nurture) -> None:
    # Given an identify whose SDK reported the device timezone and locale in context
    nurture.ingest(
        [
            {
                "type": "identify",
                "userId": "u",
                "traits": {"plan": "free"},
                "context": {"timezone": "Asia/Kolkata", "locale": "hi-IN"},
            }
        ]
    )
    # When a later identify (from a server-side SDK) has no context
    nurture.ingest([{"type": "identify", "userId": "u", "traits": {"plan": "pro"}}])
    # Then the contact keeps them
    with nurture.db.read() as conn:
        row = conn.execute(select(t.contacts.c.timezone, t.contacts.c.locale)).one()
    assert tuple(row) == ("Asia/Kolkata", "hi-IN")


def test_account_membership_keeps_the_earliest_time(nurture: Nurture) -> None:
    nurture.ingest(
        [
            {"type": "group", "userId": "u", "groupId": "g", "timestamp": "2026-02-02T00:00:00Z"},
            {"type": "group", "userId": "u", "groupId": "g", "timestamp": "2026-01-01T00:00:00Z"},
        ]
    )
    with nurture.db.read() as conn:
        joined = conn.execute(select(t.account_members.c.joined_at)).scalar_one()
    assert joined.isoformat() == "2026-01-01T00:00:00+00:00"


def test_nul_characters_are_rejected_alone_and_kept(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    # Given a batch where one message has a NUL in a property (no database text holds it)
    batch = [
        {"type": "track", "userId": "u", "event": "Ok", "messageId": "ok"},
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "messageId": "nul",
            "properties": {"note": "a\u0000b"},
        },
    ]
    r = client.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
    # Then the other message is stored and this one is rejected with the path, and kept
    assert r.status_code == 200
    assert r.json()["accepted"] == 1
    assert [(x["code"], x["path"]) for x in r.json()["rejected"]] == [
        ("invalid_character", "batch[1].properties.note")
    ]
    # and a raw NUL in a whole body is kept too (escaped), with a 400
    r = client.post("/v1/identify", content=b"\x00", auth=(write_key, ""))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert [row["code"] for row in rejected(nurture)] == ["invalid_character", "invalid_json"]
    assert rejected(nurture)[1]["raw"] == "\\u0000"


def test_overlong_message_id_is_rejected_and_kept(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    m = {"type": "track", "userId": "u", "event": "E", "messageId": ["x"] * 200}
    r = client.post("/v1/batch", json={"batch": [m]}, auth=(write_key, ""))
    assert r.status_code == 200
    assert r.json()["rejected"][0]["code"] == "invalid_type"
    (row,) = rejected(nurture)
    assert len(row["message_id"]) == 255


def test_replay_keeps_the_batch_context_and_the_original_arrival(
    client: TestClient, nurture: Nurture, write_key: str, clock: Any
) -> None:
    # Given a batch-level sentAt and context, and one message rejected (no event name)
    body = {
        "sentAt": "2026-03-01T11:00:10Z",
        "context": {"library": {"name": "analytics-ruby"}},
        "batch": [
            {
                "type": "track",
                "userId": "u",
                "messageId": "late",
                "originalTimestamp": "2026-03-01T11:00:00Z",
            }
        ],
    }
    assert client.post("/v1/batch", json=body, auth=(write_key, "")).json()["rejected"]
    # When the operator fixes it a day later and replays it
    from datetime import timedelta

    clock.advance(timedelta(days=1))
    (row,) = nurture.rejected.page()
    fixed = orjson.loads(row.raw or "null")
    fixed["batch"][0]["event"] = "Signed Up"
    with nurture.db.write() as conn:
        conn.execute(t.rejected_events.update().values(raw=orjson.dumps(fixed).decode()))
    assert nurture.rejected.replay().accepted == 1
    # Then it is stored as if it had been valid on arrival: same clock skew correction
    # (receivedAt - (sentAt - originalTimestamp)), same receivedAt, the batch's context
    (event,) = stored(nurture)
    assert event["timestamp"].isoformat() == "2026-03-01T11:59:50+00:00"
    assert event["received_at"].isoformat() == "2026-03-01T12:00:00+00:00"
    assert event["context"] == {"library": {"name": "analytics-ruby"}}


def test_a_resent_message_changes_nothing_even_with_other_content(nurture: Nurture) -> None:
    # Given an identify that was stored
    first = {"type": "identify", "userId": "u", "messageId": "i-1", "traits": {"plan": "free"}}
    assert nurture.ingest([first]).accepted == 1
    # When a message with the same messageId arrives again, with different traits, next to
    # a new message in the same batch
    again = {**first, "traits": {"plan": "enterprise"}}
    other = {"type": "track", "userId": "u", "event": "E", "messageId": "t-1"}
    result = nurture.ingest([again, other])
    # Then only the new message is stored and the traits are the first message's
    assert (result.accepted, result.duplicates) == (1, 1)
    with nurture.db.read() as conn:
        traits = conn.execute(select(t.contacts.c.traits)).scalar_one()
        count = conn.execute(select(func.count()).select_from(t.events)).scalar_one()
    assert traits == {"plan": "free"} and count == 2


def test_a_request_that_finds_no_free_ingest_slot_is_503_and_stores_nothing(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    # Given a server whose only ingest slot is taken, for longer than a request waits
    from nurture.api.ingest import IngestGate

    gate = IngestGate(1, wait=0.05)
    gate.busy = 1
    client.app.state.ingest_gate = gate  # type: ignore[attr-defined]
    batch = {"batch": [{"type": "track", "userId": "u1", "event": "E", "messageId": "gate-1"}]}
    # When a batch and a single message arrive
    answers = [
        client.post("/v1/batch", json=batch, auth=(write_key, "")),
        client.post("/v1/track", json=batch["batch"][0], auth=(write_key, "")),
    ]
    # Then both are told to come back, and nothing of them is stored or kept as rejected
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "storage_unavailable"
        assert "busy" in answer.json()["error"]["message"]
        assert int(answer.headers["Retry-After"]) > 0
    with nurture.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(t.events)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(t.rejected_events)).scalar() == 0
    # And once the slot is free, the same batch is stored
    gate.busy = 0
    assert client.post("/v1/batch", json=batch, auth=(write_key, "")).status_code == 200
    assert gate.busy == 0
    with nurture.db.read() as conn:
        assert conn.execute(select(t.events.c.message_id)).scalars().all() == ["gate-1"]


def test_the_ingest_writer_keeps_no_batch_once_it_is_stored(nurture: Nurture) -> None:
    """A server short of memory needs, for the next request, what the last one used: the
    writer thread used to hold its last group of batches (megabytes of events) while it
    waited for the next."""
    # Given a batch stored by the writer thread
    batch = nurture.parse(
        [{"type": "track", "userId": "u", "event": "E", "messageId": "m-1"}], source="test"
    )
    stored = weakref.ref(batch)
    assert nurture.writer.ingest(batch).accepted == 1
    del batch
    # When the writer is idle, waiting for the next batch
    deadline = time.monotonic() + 5
    while stored() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    # Then nothing holds the batch any longer
    assert stored() is None
