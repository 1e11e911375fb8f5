"""One error tree: every error a user can act on says what kind it is, and the CLI's exit code follows."""

from __future__ import annotations

import pytest
import typer

from scheduler.cli.common import UserError, friendly
from scheduler.inventory import ManifestError
from scheduler.policy import PolicyError
from worker.api.answers import ApiAnswer, Verdict
from worker.api.auth import AuthError, AuthUnavailableError
from worker.api.client import ApiError, CredentialsRefusedError, ShareMissingError
from worker.errors import EXIT_UNAVAILABLE, EXIT_USAGE, CleanupError, InputError, UnavailableError, UsageError
from worker.ids import InvalidIdError
from worker.settings import SettingsError


def _answer(verdict: Verdict) -> ApiAnswer:
    return ApiAnswer("GET", "/v1/p/sfs-turbo/s/hpc-cache/tasks", 403, verdict, error_code="X", error_msg="no")


CASES: list[tuple[CleanupError, int]] = [
    (SettingsError(["SFS_CLEANUP_RATE_LIMIT: must be positive"]), EXIT_USAGE),
    (PolicyError(["policy.yaml: older_than: not a duration"]), EXIT_USAGE),
    (ManifestError("tasks.csv", "unknown column 'stauts'"), EXIT_USAGE),
    (InvalidIdError("task", "../x", "has a slash"), EXIT_USAGE),
    (UserError("no run 42"), EXIT_USAGE),
    (AuthError("IAM refused the login: check SFS_CLEANUP_IAM_PASSWORD"), EXIT_USAGE),
    (CredentialsRefusedError(_answer(Verdict.FATAL)), EXIT_USAGE),
    (AuthUnavailableError("IAM did not answer"), EXIT_UNAVAILABLE),
    (ApiError(_answer(Verdict.RETRYABLE)), EXIT_UNAVAILABLE),
    (ShareMissingError(_answer(Verdict.SHARE_MISSING)), EXIT_UNAVAILABLE),
]


@pytest.mark.parametrize(("error", "code"), CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_each_error_has_the_exit_code_of_its_kind(error: CleanupError, code: int) -> None:
    assert isinstance(error, UsageError if code == EXIT_USAGE else UnavailableError)
    assert error.exit_code == code

    @friendly
    def command() -> None:
        raise error

    with pytest.raises(typer.Exit) as exited:
        command()
    assert exited.value.exit_code == code


def test_input_errors_are_usage_errors() -> None:
    assert issubclass(InputError, UsageError) and issubclass(ManifestError, InputError)


def test_an_unexpected_error_is_not_swallowed() -> None:
    @friendly
    def command() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        command()
