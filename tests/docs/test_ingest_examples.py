"""Every JSON example in docs/ingest.md runs against the real app, on SQLite and PostgreSQL.

An example is an HTML comment followed by its JSON blocks:

    <!-- example: POST /v1/track -> 200 [scenario=NAME] [auth=write|bearer|admin|none|unknown]
         [gzip] -->
    ```json  request body (left out for GET)
    ```json  the response: every field shown must be in the actual response, with that value

Examples sharing a `scenario` run in document order against one database; every other
example gets a fresh database. Every ```json block on the page must belong to an example.
"""

from __future__ import annotations

import base64
import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from nurture.core import Nurture
from nurture.store import tables as t

DOC = Path(__file__).resolve().parents[2] / "docs" / "ingest.md"

_EXAMPLE = re.compile(
    r"<!-- example: (?P<method>[A-Z]+) (?P<path>\S+) -> (?P<status>\d{3})(?P<opts>[^>]*?)\s*-->"
)
_JSON_BLOCK = re.compile(r"^```json\n(.*?)^```$", re.S | re.M)
_SDK_EXAMPLE = re.compile(r"<!-- sdk-example: python -->\s*```python\n(.*?)^```$", re.S | re.M)


@dataclass
class Example:
    line: int
    method: str
    path: str
    status: int
    options: dict[str, str]
    request: Any
    response: Any

    @property
    def title(self) -> str:
        return f"line {self.line}: {self.method} {self.path} -> {self.status}"


@dataclass
class Scenario:
    name: str
    examples: list[Example] = field(default_factory=list)


def _options(text: str) -> dict[str, str]:
    out = {}
    for word in text.split():
        key, _, value = word.partition("=")
        out[key] = value or "yes"
    unknown = set(out) - {"scenario", "auth", "gzip"}
    assert not unknown, f"unknown example options {unknown}"
    return out


def parse_examples(text: str) -> list[Example]:
    """The examples of the page, in order; fails when a JSON block belongs to none."""
    blocks = [(m.start(), m.group(1)) for m in _JSON_BLOCK.finditer(text)]
    used: set[int] = set()
    examples = []
    for m in _EXAMPLE.finditer(text):
        method = m.group("method")
        wanted = 1 if method == "GET" else 2
        following = [(start, body) for start, body in blocks if start > m.end()][:wanted]
        assert len(following) == wanted, f"example at {m.group(0)} lacks its JSON blocks"
        for start, _ in following:
            assert start not in used, f"a JSON block is claimed twice near {m.group(0)}"
            used.add(start)
        loaded = [orjson.loads(body) for _, body in following]
        examples.append(
            Example(
                line=text.count("\n", 0, m.start()) + 1,
                method=method,
                path=m.group("path"),
                status=int(m.group("status")),
                options=_options(m.group("opts")),
                request=loaded[0] if wanted == 2 else None,
                response=loaded[-1],
            )
        )
    orphans = [text.count("\n", 0, start) + 1 for start, _ in blocks if start not in used]
    assert not orphans, f"JSON blocks without an example comment at lines {orphans}"
    return examples


def scenarios() -> list[Scenario]:
    grouped: dict[str, Scenario] = {}
    for ex in parse_examples(DOC.read_text()):
        name = ex.options.get("scenario") or ex.title
        grouped.setdefault(name, Scenario(name)).examples.append(ex)
    return list(grouped.values())


SCENARIOS = scenarios()


def assert_contains(actual: Any, documented: Any, where: str = "$") -> None:
    """Every field the docs show is in `actual` with the same value (lists: same length)."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in documented.items():
            assert key in actual, f"{where}.{key} is documented but missing in {actual!r}"
            assert_contains(actual[key], value, f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(actual, list), f"{where}: expected an array, got {actual!r}"
        assert len(actual) == len(documented), f"{where}: {actual!r} != {documented!r}"
        for i, (a, d) in enumerate(zip(actual, documented, strict=True)):
            assert_contains(a, d, f"{where}[{i}]")
    else:
        assert actual == documented, f"{where}: got {actual!r}, documented {documented!r}"


def _headers(ex: Example, write_key: str, request: pytest.FixtureRequest) -> dict[str, str]:
    auth = ex.options.get("auth", "write")
    if auth == "none":
        return {}
    if auth == "unknown":
        key, scheme = "nk_w_not-a-key", "basic"
    elif auth == "admin":
        key, scheme = request.getfixturevalue("admin_key"), "bearer"
    elif auth == "bearer":
        key, scheme = write_key, "bearer"
    else:
        assert auth == "write", f"unknown auth option {auth!r}"
        key, scheme = write_key, "basic"
    if scheme == "bearer":
        return {"Authorization": f"Bearer {key}"}
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def test_the_page_has_examples() -> None:
    examples = [ex for s in SCENARIOS for ex in s.examples]
    assert len(examples) > 0
    assert any(len(s.examples) > 1 for s in SCENARIOS), "scenarios with several steps"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_example(
    scenario: Scenario, client: TestClient, write_key: str, request: pytest.FixtureRequest
) -> None:
    for ex in scenario.examples:
        # Given the documented request
        headers = _headers(ex, write_key, request)
        body = None if ex.request is None else orjson.dumps(ex.request)
        if body is not None:
            # Ingest ignores Content-Type; the admin API needs it, as real clients send it.
            headers["Content-Type"] = "application/json"
            if "gzip" in ex.options:
                body = gzip.compress(body)
        # When it is sent
        response = client.request(ex.method, ex.path, content=body, headers=headers)
        # Then the status and every documented field match
        assert response.status_code == ex.status, f"{ex.title}: {response.text}"
        assert_contains(response.json(), ex.response, ex.title)


def _example(method: str, path: str) -> Example:
    return next(
        ex
        for s in SCENARIOS
        for ex in s.examples
        if (ex.method, ex.path, ex.status) == (method, path, 200)
    )


def test_identify_example_gives_the_documented_profile(
    client: TestClient, write_key: str, nurture: Nurture
) -> None:
    # Given the first identify example of the page
    ex = _example("POST", "/v1/identify")
    # When it is sent
    response = client.post("/v1/identify", content=orjson.dumps(ex.request), auth=(write_key, ""))
    assert response.status_code == 200, response.text
    # Then the reserved-trait columns hold what "Reserved traits" says
    c = t.contacts.c
    with nurture.db.read() as conn:
        row = conn.execute(select(t.contacts).where(c.user_id == ex.request["userId"])).one()
    assert (row.email, row.phone, row.country, row.timezone, row.locale) == (
        "ada@example.com",
        "+49301234567",
        "DE",
        "Europe/Berlin",
        "de-DE",
    )
    assert row.trait_issues == {}
    assert row.traits == ex.request["traits"]


def test_python_sdk_example_delivers_events(
    live_server: str, write_key: str, nurture: Nurture
) -> None:
    # Given the analytics-python snippet of the page, pointed at a live server
    found = _SDK_EXAMPLE.search(DOC.read_text())
    assert found, "the Python SDK example is missing"
    code = found.group(1)
    assert '"nk_w_..."' in code and '"http://127.0.0.1:8000"' in code
    code = code.replace('"nk_w_..."', repr(write_key)).replace(
        '"http://127.0.0.1:8000"', repr(live_server)
    )
    errors: list[Exception] = []
    code = code.replace("host=", "on_error=lambda e, _b: errors.append(e), host=", 1)
    namespace: dict[str, Any] = {"errors": errors}
    # When it runs
    exec(compile(code, str(DOC), "exec"), namespace)
    namespace["analytics"].shutdown()
    # Then both messages are stored for the user
    assert errors == []
    with nurture.db.read() as conn:
        rows = conn.execute(select(t.events.c.type, t.events.c.event).order_by(t.events.c.id)).all()
    assert [tuple(r) for r in rows] == [("identify", None), ("track", "Signed Up")]
