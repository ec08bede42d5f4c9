"""Property-based API fuzzing with Schemathesis: every operation in /openapi.json (ingest
and admin), with valid and invalid input, must never answer with a 5xx.

Bounded on purpose (a few dozen examples per operation and mode) so the whole file
stays well under a minute per backend; raise `EXAMPLES` locally to dig deeper.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from starlette.testclient import TestClient

from nurture.api.app import create_app
from nurture.core import Nurture

EXAMPLES = int(os.environ.get("NURTURE_FUZZ_EXAMPLES", "15"))


def _seed(client: TestClient, write_key: str) -> None:
    """Given contacts, a merge, an account and a rejected message, so that generated
    small ids and names sometimes hit real rows."""
    batch = [
        {"type": "page", "anonymousId": "a1", "name": "Home"},
        {"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com"}},
        {"type": "identify", "userId": "u1", "anonymousId": "a1"},
        {"type": "group", "userId": "u1", "groupId": "g1", "traits": {"name": "G"}},
        {"type": "track", "userId": "u2", "event": "E", "timestamp": "bad"},
    ]
    response = client.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_with_a_server_error(
    nurture: Nurture, admin_key: str, write_key: str, client: TestClient, mode: GenerationMode
) -> None:
    _seed(client, write_key)
    app = create_app(nurture, manage_lifecycle=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {admin_key}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # the same cases every run: a failure here is reproducible
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(
                    f"{response.status_code} {case.as_curl_command(headers=headers)}\n"
                    f"  -> {response.text[:300]}"
                )

        try:
            check()
        except Unsatisfiable:
            # No invalid input exists for this operation (e.g. no parameters at all).
            assert mode is GenerationMode.NEGATIVE, operation.label
    # Then every operation was exercised and none answered with a 5xx
    assert operations >= 19
    assert not failures, "\n".join(failures)
