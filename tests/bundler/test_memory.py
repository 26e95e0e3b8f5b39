"""The builder asks glibc for one malloc arena (bundler/memory.py); elsewhere it changes nothing."""

from __future__ import annotations

import platform
import sys

import pytest

from k3bundle.bundler.memory import one_arena


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only: elsewhere one_arena does nothing",
)
def test_glibc_takes_the_one_arena_setting() -> None:
    assert one_arena() is True


def test_elsewhere_nothing_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert one_arena() is False
