"""`nurture report …`: events reports (registered on nurture.cli.report.report_app)."""

from __future__ import annotations

from nurture.cli.report import report_app  # noqa: F401
