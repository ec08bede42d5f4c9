"""The one report shape: JSON as the API answers it, CSV as the CLI writes it, charts as
real SVG and PNG files, and the `--format` switch of `nurture report`."""

from __future__ import annotations

import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from nurture.analytics import charts
from nurture.analytics.report import Chart, Column, Report, Table, jsonable, show, to_csv
from nurture.cli.report import Format, emit
from nurture.errors import ValidationError


def _report() -> Report:
    days = Table(
        "days",
        "By day",
        [
            Column("day", "Day", "date"),
            Column("sent", "Sent", "int"),
            Column("open_rate", "Open rate", "percent"),
            Column("revenue", "Revenue", "money"),
        ],
        [
            {"day": date(2026, 11, 1), "sent": 1200, "open_rate": 0.25, "revenue": 10.5},
            {"day": date(2026, 11, 2), "sent": 0, "open_rate": math.nan, "revenue": None},
        ],
    )
    grid = Table(
        "cohorts",
        "Retention",
        [Column("cohort", "Cohort"), Column("p0", "Week 0", "percent"), Column("p1", "Week 1")],
        [{"cohort": "2026-W44", "p0": 1.0, "p1": 0.4}, {"cohort": "2026-W45", "p0": 1.0}],
    )
    return Report(
        kind="test",
        title="A test report",
        params={"from": datetime(2026, 11, 1, tzinfo=UTC), "window": timedelta(days=7)},
        summary={"sent": 1200, "rate": 0.25},
        tables=[days, grid],
        notes=["opens by software are not counted"],
        charts=[
            Chart("line", "days", "day", ("sent",), "Sent per day"),
            Chart("bar", "days", "day", ("sent", "revenue"), "Side by side"),
            Chart("stacked_bar", "days", "day", ("sent", "revenue"), "Stacked"),
            Chart("heatmap", "cohorts", "cohort", ("p0", "p1"), "Retention", "share"),
        ],
    )


def test_json_is_plain_values_and_says_what_was_asked() -> None:
    data = _report().to_json()
    assert json.loads(json.dumps(data)) == data  # nothing json cannot carry
    assert data["params"] == {"from": "2026-11-01T00:00:00+00:00", "window": 604800.0}
    assert data["tables"][0]["rows"][1] == {
        "day": "2026-11-02",
        "sent": 0,
        "open_rate": None,
        "revenue": None,
    }
    assert data["tables"][0]["columns"][2] == {
        "key": "open_rate",
        "title": "Open rate",
        "kind": "percent",
    }
    assert data["charts"][3]["y"] == ["p0", "p1"]


def test_numpy_scalars_become_python_numbers() -> None:
    import numpy as np

    assert jsonable({"a": np.float64(0.5), "b": [np.int64(3)]}) == {"a": 0.5, "b": [3]}


def test_csv_has_raw_values_and_one_header() -> None:
    rows = list(csv.reader(io.StringIO(to_csv(_report().table("days")))))
    assert rows == [
        ["day", "sent", "open_rate", "revenue"],
        ["2026-11-01", "1200", "0.25", "10.5"],
        ["2026-11-02", "0", "", ""],
    ]


def test_terminal_values() -> None:
    assert show(0.1234, "percent") == "12.34 %"
    assert show(1234567, "int") == "1,234,567"
    assert show(None, "money") == "-"
    assert show(timedelta(hours=5), "duration") == "5.0h"
    assert show(3 * 86400, "duration") == "3.0d"


def test_unknown_table_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="tables: days, cohorts"):
        _report().table("steps")


def test_svg_chart_is_an_svg_with_every_title(tmp_path: Path) -> None:
    path = charts.write(_report(), tmp_path / "report.svg")
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    text = path.read_text()
    for title in ("Sent per day", "Side by side", "Stacked", "Retention", "A test report"):
        assert f">{title}<" in text
    # The same report draws the same bytes (no creation date inside).
    assert charts.render(_report(), "svg") == path.read_bytes()


def test_png_chart_is_a_png_image(tmp_path: Path) -> None:
    path = charts.write(_report(), tmp_path / "report.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 500 and height > 4 * 300  # four panels, stacked


def test_chart_file_must_be_svg_or_png(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"\.svg or \.png"):
        charts.write(_report(), tmp_path / "report.jpg")


def test_report_without_charts_says_so() -> None:
    with pytest.raises(ValidationError, match="has no chart"):
        charts.render(Report("plain", "Plain", {}), "svg")


def test_emit_formats(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    report = _report()
    emit(report, Format.json)
    assert json.loads(capsys.readouterr().out) == report.to_json()
    emit(report, Format.csv, table="cohorts", chart=tmp_path / "c.svg")
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == "cohort,p0,p1"
    assert (tmp_path / "c.svg").stat().st_size > 1000
    emit(report, Format.csv)
    assert "other tables: cohorts" in capsys.readouterr().err
    emit(report, Format.table)
    printed = capsys.readouterr().out
    assert "A test report" in printed and "25.00 %" in printed and "1,200" in printed
