"""The app starts on both backends and stores one event end to end."""

from starlette.testclient import TestClient


def test_track_is_stored_once(client: TestClient, write_key: str) -> None:
    # Given a write key
    body = {"userId": "u1", "event": "Signed Up", "messageId": "m-1"}
    # When the same message is sent twice
    first = client.post("/v1/track", json=body, auth=(write_key, ""))
    second = client.post("/v1/track", json=body, auth=(write_key, ""))
    # Then it is accepted once and recognised as a duplicate the second time
    assert first.status_code == 200, first.text
    assert first.json()["accepted"] == 1
    assert second.json() == {"success": True, "accepted": 0, "duplicates": 1, "rejected": []}
