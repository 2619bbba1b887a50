"""The error tree (odyssey_sync.errors) and timeout checking (odyssey_sync._deadline)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from odyssey_sync import errors
from odyssey_sync._deadline import DEFAULT, Deadline, check_timeout

# --------------------------------------------------------------------------- the tree


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.OdysseyAuthError, ValueError),
        (errors.OdysseyConnectionError, ConnectionError),
        (errors.OdysseyQueueTimeoutError, ConnectionError),
        (errors.OdysseyQueueTimeoutError, TimeoutError),
        (errors.SignalingHandshakeError, ConnectionError),
        (errors.OdysseyRequestError, ValueError),
        (errors.OdysseyNotFoundError, ValueError),
        (errors.OdysseyNotFoundError, LookupError),
        (errors.OdysseyPermissionError, ValueError),
        (errors.OdysseyPermissionError, PermissionError),
        (errors.OdysseyStreamError, RuntimeError),
        (errors.OdysseyTimeoutError, TimeoutError),
        (errors.OdysseyUsageError, PermissionError),
        (errors.RateLimitError, PermissionError),
    ],
)
def test_every_class_is_also_its_builtin(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, errors.OdysseyError) and issubclass(cls, builtin)


def test_every_exported_class_is_in_the_tree_and_has_a_builtin_base() -> None:
    exported = [getattr(errors, n) for n in errors.__all__]
    classes = [c for c in exported if isinstance(c, type)]
    assert errors.SignalingHandshakeError in classes
    for cls in classes:
        assert issubclass(cls, errors.OdysseyError)
        if cls is not errors.OdysseyError:
            builtin_bases = [b for b in cls.__mro__ if b.__module__ == "builtins"]
            assert builtin_bases[0] not in (Exception, BaseException, object), cls
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} not drawn"


def test_signaling_handshake_error_lives_in_errors() -> None:
    import odyssey_sync._signaling as signaling

    assert errors.SignalingHandshakeError.__module__ == "odyssey_sync.errors"
    assert signaling.SignalingHandshakeError is errors.SignalingHandshakeError


def test_oserror_based_classes_keep_their_message_and_fields() -> None:
    err = errors.MonthlyLimitReachedError("MONTHLY_LIMIT_REACHED", "used up", "Upgrade", None,
                                   {"used_hours": 10, "limit_hours": 10}, status=429)
    assert err.message == "used up" and err.status == 429 and err.errno is None
    assert "Used 10 of 10 hours" in str(err)
    perm = errors.OdysseyPermissionError("forbidden (403)", status=403)
    assert str(perm) == "forbidden (403)" and perm.errno is None
    for cls in (errors.ConcurrentLimitReachedError, errors.StreamDurationExceededError,
                errors.AccountSuspendedError):
        assert isinstance(cls("C", "m"), PermissionError)


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, 0.0), (2, 2.0), (0.5, 0.5), (math.inf, None)],
)
def test_check_timeout_accepts(value: Any, expected: float | None) -> None:
    assert check_timeout(value) == expected


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [("5", TypeError, "str"), (True, TypeError, "bool"), (DEFAULT, TypeError, "_Default"),
     (-1, ValueError, "-1"), (math.nan, ValueError, "nan")],
)
def test_check_timeout_refuses(value: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        check_timeout(value)


def test_check_timeout_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"^queue_timeout must be"):
        check_timeout(-2, "queue_timeout")
    with pytest.raises(TypeError, match=r"^poll_interval must be"):
        check_timeout([], name="poll_interval")


def test_default_reprs_as_its_name() -> None:
    assert repr(DEFAULT) == "DEFAULT"


def test_deadline_validates_and_shares_the_budget() -> None:
    with pytest.raises(ValueError):
        Deadline(-1)
    with pytest.raises(TypeError):
        Deadline("1")  # type: ignore[arg-type]
    assert Deadline(None).remaining() is None and Deadline(math.inf).remaining() is None
    due = Deadline(0)
    assert due.expired
    with pytest.raises(errors.OdysseyTimeoutError, match="step timed out"):
        due.check("step")
    assert Deadline(10).clamp(1.0) == 1.0
