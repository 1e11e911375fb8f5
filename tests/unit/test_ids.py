"""ID checks: only plain IDs (letters, digits, '-', 1..64 characters) may go into a request path."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.ids import (
    MAX_ID_LENGTH,
    InvalidIdError,
    check_id,
    check_project_id,
    check_share_id,
    check_task_id,
    explain,
    show_value,
)

PLAIN = re.compile(r"[A-Za-z0-9-]{1,64}")

GOOD_IDS = [
    "0123456789abcdef0123456789abcdef",  # a task ID as seen: 32 hex
    "5bc8fbbc-bde5-4099-8164-d8399f767c45",  # a share ID: a UUID
    "A",
    "-",
    "ABC-def-123",
    "a" * MAX_ID_LENGTH,
]

# (value, a fragment the reason must contain)
BAD_IDS = [
    ("../x", "path character"),
    ("a/b", "path character '/'"),
    ("a\\b", "path character"),
    ("..", "path character"),
    ("%2F", "'%'"),
    ("abc%2e%2e", "'%'"),
    ("", "is empty"),
    ("a" * 65, "65 characters long"),
    ("t\u00e2che", "non-ASCII"),
    ("\uff11\uff12\uff13", "non-ASCII"),  # fullwidth digits: str.isdigit() is True for these
    ("\u0663", "non-ASCII"),  # Arabic-Indic digit three
    ("a\nb", "control character"),
    ("abc\n", "control character"),
    ("a\x00b", "control character"),
    ("a\x1b[31m", "control character"),
    ("a b", "' '"),
    (" abc", "' '"),
    ("a?b", "'?'"),
    ("a#b", "'#'"),
    ("a.b", "'.'"),
    ("a_b", "'_'"),
]


@pytest.mark.parametrize("value", GOOD_IDS)
def test_plain_ids_are_accepted_unchanged(value: str) -> None:
    assert check_task_id(value) == value
    assert check_share_id(value) == value
    assert check_project_id(value) == value
    assert explain(value) is None


@pytest.mark.parametrize(("value", "reason"), BAD_IDS)
def test_bad_ids_are_refused_with_a_reason(value: str, reason: str) -> None:
    with pytest.raises(InvalidIdError) as info:
        check_task_id(value)
    error = info.value
    assert error.kind == "task_id"
    assert reason in error.reason
    assert str(error).startswith("invalid task_id ")
    assert reason in str(error)


@pytest.mark.parametrize(("value", "_reason"), BAD_IDS)
def test_error_messages_are_one_printable_ascii_line(value: str, _reason: str) -> None:
    with pytest.raises(InvalidIdError) as info:
        check_share_id(value)
    text = str(info.value)
    assert text.isascii()
    assert text.isprintable()  # no raw newline, NUL or escape can reach a log line
    assert len(text) < 200


@pytest.mark.parametrize(
    ("checker", "kind"),
    [(check_task_id, "task_id"), (check_share_id, "share_id"), (check_project_id, "project_id")],
)
def test_the_message_names_the_kind_of_id(checker: object, kind: str) -> None:
    with pytest.raises(InvalidIdError, match=rf"^invalid {kind} '\.\./x': "):
        checker("../x")  # type: ignore[operator]


@pytest.mark.parametrize("value", [None, 123, b"abc", ["a"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(InvalidIdError, match="must be a string"):
        check_task_id(value)


def test_invalid_id_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid custom_id"):
        check_id("custom_id", "a/b")


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidIdError) as info:
        check_task_id("x" * 10_000)
    assert len(info.value.value_repr) <= 60
    assert info.value.value_repr.endswith("...")


def test_show_value_escapes_untrusted_input() -> None:
    assert show_value("a\nb\x1b") == "'a\\nb\\x1b'"
    assert show_value("t\u00e2che") == "'t\\xe2che'"


@given(st.text(max_size=80))
def test_accepted_exactly_when_plain(value: str) -> None:
    if PLAIN.fullmatch(value):
        assert check_task_id(value) == value
    else:
        with pytest.raises(InvalidIdError):
            check_task_id(value)


@given(st.from_regex(PLAIN, fullmatch=True))
def test_every_plain_id_is_accepted(value: str) -> None:
    assert check_task_id(value) == value
