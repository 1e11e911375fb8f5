"""The shape the layout promises: small modules with one job each, outside the tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("worker", "scheduler", "sandbox")
MAX_LINES = 400


def test_no_module_outside_the_tests_is_over_400_lines() -> None:
    modules = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    assert len(modules) > 50, "the packages were not found where the layout puts them"
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in modules
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not too_long, f"split these by concern (over {MAX_LINES} lines): {too_long}"
