"""A report's charts drawn to SVG or PNG with Matplotlib (no screen needed: the Agg
renderer), one panel per chart, stacked. The file's format follows its name."""

from __future__ import annotations

import io
import math
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from nurture.analytics.report import Chart, Report, Table
from nurture.errors import ValidationError

ImageFormat = Literal["svg", "png"]
FORMATS: tuple[ImageFormat, ...] = ("svg", "png")


def image_format(path: Path | str) -> ImageFormat:
    """The image format a file name asks for: `.svg` or `.png`."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValidationError(
            f"a chart is written as .svg or .png, not {Path(path).name!r}", path="chart"
        )
    return suffix


def render(report: Report, fmt: ImageFormat) -> bytes:
    """The report's charts as one SVG or PNG image."""
    if not report.charts:
        raise ValidationError(f"the {report.kind} report has no chart", path="chart")
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    # Text as text (searchable, small) and fixed element ids: the same report, same bytes.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "nurture"}):
        figure = Figure(figsize=(9, 3.6 * len(report.charts)), layout="constrained")
        axes = figure.subplots(len(report.charts), 1, squeeze=False)
        for ax, chart in zip(axes[:, 0], report.charts, strict=True):
            _draw(ax, chart, report.table(chart.table))
        figure.suptitle(report.title)
        out = io.BytesIO()
        figure.savefig(out, format=fmt, dpi=110, metadata=_metadata(fmt))
    return out.getvalue()


def write(report: Report, path: Path | str) -> Path:
    """Write the report's charts to `path` (.svg or .png); return the path."""
    target = Path(path)
    target.write_bytes(render(report, image_format(target)))
    return target


def _metadata(fmt: ImageFormat) -> dict[str, Any]:
    # No creation date: the same report draws the same bytes.
    return {"Date": None} if fmt == "svg" else {"Software": None}


def _label(value: Any) -> str:
    if isinstance(value, datetime):
        return (
            value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
        )
    if isinstance(value, date):
        return value.isoformat()
    return "-" if value is None else str(value)


def _number(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)


def _draw(ax: Any, chart: Chart, table: Table) -> None:
    labels = [_label(row.get(chart.x)) for row in table.rows]
    titles = {c.key: c.title for c in table.columns}
    ax.set_title(chart.title)
    if chart.kind == "heatmap":
        grid = [[_number(row.get(k)) for k in chart.y] for row in table.rows]
        image = ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xticks(range(len(chart.y)), [titles.get(k, k) for k in chart.y])
        ax.figure.colorbar(image, ax=ax, label=chart.y_label)
        return
    positions = list(range(len(labels)))
    if chart.kind == "line":
        for key in chart.y:
            ax.plot(
                positions, [_number(r.get(key)) for r in table.rows], label=titles.get(key, key)
            )
    else:
        stacked = chart.kind == "stacked_bar"
        width = 0.8 if stacked else 0.8 / max(len(chart.y), 1)
        bottom = [0.0] * len(labels)
        for i, key in enumerate(chart.y):
            values = [_number(r.get(key)) for r in table.rows]
            if stacked:
                ax.bar(positions, values, width, bottom=bottom, label=titles.get(key, key))
                bottom = [
                    b + (0.0 if math.isnan(v) else v) for b, v in zip(bottom, values, strict=True)
                ]
            else:
                offset = (i - (len(chart.y) - 1) / 2) * width
                ax.bar([p + offset for p in positions], values, width, label=titles.get(key, key))
    step = max(1, len(labels) // 20)
    ax.set_xticks(positions[::step], labels[::step], rotation=30 if len(labels) > 6 else 0)
    ax.set_ylabel(chart.y_label)
    if len(chart.y) > 1:
        ax.legend(fontsize="small")
