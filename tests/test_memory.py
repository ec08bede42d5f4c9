"""The server process fixes glibc malloc's thresholds (nurture.memory); mallopt answers
1 for each setting it accepts, 0 for one it refuses."""

from __future__ import annotations

import platform

import pytest

from nurture.memory import tune_malloc


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's; elsewhere tune_malloc does nothing",
)
def test_glibc_accepts_every_setting() -> None:
    assert tune_malloc() is True
