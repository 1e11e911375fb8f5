"""The classifier and answer parsing: the reference's DELETE outcome table, one row at a time."""

from __future__ import annotations

import json

import pytest

from worker.api.answers import (
    ApiAnswer,
    Verdict,
    classify,
    normalise_code,
    parse_error_body,
    parse_retry_after,
)

# (HTTP status, error code, verdict) as the reference's "Deleting" table says.
OUTCOME_TABLE = [
    # 202: accepted.
    (202, None, Verdict.OK),
    (200, None, Verdict.OK),
    # 400 SFS.TURBO.0106: the task does not exist (already deleted).
    (400, "SFS.TURBO.0106", Verdict.GONE),
    # 400 other codes: the request is wrong, never retried.
    (400, "SFS.TURBO.0001", Verdict.PERMANENT),
    (400, "SFS.TURBO.4242", Verdict.PERMANENT),
    (400, None, Verdict.PERMANENT),
    # Busy / conflict, on 400 or 403.
    (400, "SFS.TURBO.0011", Verdict.RETRYABLE),
    (403, "SFS.TURBO.0011", Verdict.RETRYABLE),
    (400, "SFS.TURBO.0103", Verdict.RETRYABLE),
    (403, "SFS.TURBO.0103", Verdict.RETRYABLE),
    (400, "SFS.TURBO.0037", Verdict.RETRYABLE),
    (403, "SFS.TURBO.0037", Verdict.RETRYABLE),
    # The share does not exist or is not visible, in all three styles.
    (400, "SFS.TURBO.0002", Verdict.SHARE_MISSING),
    (404, "SFS.TURBO.0002", Verdict.SHARE_MISSING),
    (403, "SFS.TURBO.9000", Verdict.SHARE_MISSING),
    # Server-side failures.
    (500, "SFS.TURBO.0005", Verdict.RETRYABLE),
    (500, None, Verdict.RETRYABLE),
    (502, None, Verdict.RETRYABLE),
    (503, None, Verdict.RETRYABLE),
    (503, "APIGW.0201", Verdict.RETRYABLE),
    (504, None, Verdict.RETRYABLE),
    # Token invalid or expired: renew once.
    (401, "APIGW.0301", Verdict.AUTH_RENEW),
    (401, "APIGW.0307", Verdict.AUTH_RENEW),
    # Not allowed to call the API; no such API at this endpoint.
    (403, "APIGW.0302", Verdict.FATAL),
    (404, "APIGW.0101", Verdict.FATAL),
    # The gateway's throttle.
    (429, "APIGW.0308", Verdict.THROTTLED),
    (429, None, Verdict.THROTTLED),
    # No answer at all (connection error, timeout).
    (0, None, Verdict.RETRYABLE),
]


@pytest.mark.parametrize(("status", "code", "verdict"), OUTCOME_TABLE)
def test_classify_follows_the_reference_outcome_table(status: int, code: str | None, verdict: Verdict) -> None:
    assert classify(status, code) is verdict


@pytest.mark.parametrize(
    ("status", "old", "verdict"),
    [
        (429, "APIG.0308", Verdict.THROTTLED),
        (401, "APIG.0301", Verdict.AUTH_RENEW),
        (401, "APIG.0307", Verdict.AUTH_RENEW),
        (403, "APIG.0302", Verdict.FATAL),
        (404, "APIG.0101", Verdict.FATAL),
    ],
)
def test_old_apig_spelling_is_treated_like_apigw(status: int, old: str, verdict: Verdict) -> None:
    assert classify(status, old) is verdict
    assert classify(status, old) is classify(status, old.replace("APIG.", "APIGW."))


def test_throttle_code_wins_whatever_the_status() -> None:
    # The gateway code names the throttle; a retry later is right even if the status is odd.
    assert classify(403, "APIGW.0308") is Verdict.THROTTLED


def test_a_missing_task_is_gone_not_a_failure_even_on_404() -> None:
    assert classify(404, "SFS.TURBO.0106") is Verdict.GONE


def test_a_gateway_403_that_is_not_permission_is_still_fatal_not_retried() -> None:
    assert classify(403, "APIGW.0306") is Verdict.FATAL


def test_every_verdict_is_reachable_from_the_table() -> None:
    assert {row[2] for row in OUTCOME_TABLE} == set(Verdict)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("APIG.0308", "APIGW.0308"),
        ("APIGW.0308", "APIGW.0308"),
        ("SFS.TURBO.0106", "SFS.TURBO.0106"),
        (None, None),
        ("", ""),
    ],
)
def test_normalise_code(code: str | None, expected: str | None) -> None:
    assert normalise_code(code) == expected


# --- Error bodies ------------------------------------------------------------------------------


def test_parse_sfs_error_body() -> None:
    body = json.dumps({"errCode": "SFS.TURBO.0106", "errMsg": "Invalid task id."}).encode()
    assert parse_error_body(body) == ("SFS.TURBO.0106", "Invalid task id.")


def test_parse_gateway_error_body() -> None:
    body = json.dumps(
        {"error_code": "APIGW.0308", "error_msg": "The throttling threshold has been reached", "request_id": "r1"}
    ).encode()
    assert parse_error_body(body) == ("APIGW.0308", "The throttling threshold has been reached")


def test_parse_gateway_error_body_normalises_old_spelling() -> None:
    body = json.dumps({"error_code": "APIG.0308", "error_msg": "throttled"}).encode()
    assert parse_error_body(body) == ("APIGW.0308", "throttled")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html><body>502 Bad Gateway</body></html>",
        b"not json at all",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        b"{}",
        json.dumps({"error": {"code": 401, "message": "keystone shape"}}).encode(),
    ],
)
def test_bodies_without_a_known_error_shape_give_no_code(body: bytes) -> None:
    assert parse_error_body(body) == (None, None)


def test_error_message_is_bounded() -> None:
    body = json.dumps({"errCode": "SFS.TURBO.0001", "errMsg": "x" * 5000}).encode()
    code, msg = parse_error_body(body)
    assert code == "SFS.TURBO.0001"
    assert msg is not None and len(msg) == 500


def test_error_code_without_message() -> None:
    assert parse_error_body(b'{"errCode": "SFS.TURBO.0005"}') == ("SFS.TURBO.0005", None)


# --- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        ("0.5", 0.5),
        (" 3 ", 3.0),
        ("0", 0.0),
        ("3600", 3600.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("3601", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


# --- ApiAnswer ---------------------------------------------------------------------------------


def _answer(status: int, verdict: Verdict, **kw: object) -> ApiAnswer:
    return ApiAnswer(method="DELETE", path="/v1/p/sfs-turbo/s/hpc-cache/task/t", status=status, verdict=verdict, **kw)  # type: ignore[arg-type]


def test_only_ok_is_ok() -> None:
    assert _answer(202, Verdict.OK).ok
    for verdict in Verdict:
        if verdict is not Verdict.OK:
            assert not _answer(400, verdict).ok


def test_describe_names_status_code_message_and_request_id() -> None:
    text = _answer(
        400, Verdict.GONE, error_code="SFS.TURBO.0106", error_msg="Invalid task id.", request_id="abc123"
    ).describe()
    assert "HTTP 400" in text
    assert "SFS.TURBO.0106" in text
    assert "Invalid task id." in text
    assert "request_id=abc123" in text
    assert "\n" not in text


def test_describe_without_an_answer() -> None:
    text = _answer(0, Verdict.RETRYABLE, error_code="transport.ConnectError", error_msg="refused").describe()
    assert text.startswith("no answer")
    assert "transport.ConnectError" in text


def test_describe_fatal_permission_error_says_what_to_fix() -> None:
    text = _answer(403, Verdict.FATAL, error_code="APIGW.0302", error_msg="forbidden").describe()
    assert "IAM permission" in text


def test_describe_fatal_unknown_api_points_at_the_endpoint_setting() -> None:
    text = _answer(404, Verdict.FATAL, error_code="APIGW.0101").describe()
    assert "SFS_CLEANUP_API_ENDPOINT" in text


def test_describe_says_what_to_fix_when_a_401_reaches_a_person() -> None:
    # The auth layer has already renewed a token once when a 401 gets this far (or could not:
    # a given token, AK/SK), so the line names what to fix.
    text = _answer(401, Verdict.AUTH_RENEW, error_code="APIGW.0307", error_msg="The token must be updated.").describe()
    assert text.startswith("HTTP 401 APIGW.0307 'The token must be updated.'")
    assert "renewing it did not help" in text
