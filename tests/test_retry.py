"""Retry policy: transient failures are retried within bounds; a lost create is never repeated."""

from __future__ import annotations

import time

import pytest

from maider.provider import AuthError, InstanceStatus, VMInstance
from maider.retry import RetryPolicy, TransientError, call, create_once, parse_retry_after

FAST = RetryPolicy(attempts=4, max_seconds=10, initial_wait=0.01, max_wait=0.05)
VM = VMInstance("42", "sim", "maider-x", InstanceStatus.PROVISIONING, "r", "t")


def test_transient_errors_are_retried_until_success() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("503", status=503)
        return "ok"

    assert call(flaky, FAST) == "ok"
    assert len(calls) == 3


def test_attempts_are_bounded_and_the_last_error_propagates() -> None:
    calls = []

    def always() -> None:
        calls.append(1)
        raise TransientError("429", status=429)

    with pytest.raises(TransientError):
        call(always, FAST)
    assert len(calls) == FAST.attempts


def test_non_transient_errors_are_not_retried() -> None:
    calls = []

    def denied() -> None:
        calls.append(1)
        raise AuthError("bad token")

    with pytest.raises(AuthError):
        call(denied, FAST)
    assert len(calls) == 1


def test_retry_after_is_honoured_but_capped() -> None:
    policy = RetryPolicy(attempts=2, max_seconds=10, initial_wait=0.0, max_wait=0.3)
    calls = []

    def limited() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise TransientError("429", status=429, retry_after=60)
        return "ok"

    assert call(limited, policy) == "ok"
    assert 0.25 <= calls[1] - calls[0] < 2  # waited the cap, not 60 s


def test_lost_create_answer_returns_the_instance_instead_of_creating_again() -> None:
    created = []

    def create() -> VMInstance:
        created.append(1)
        raise TransientError("connection dropped after the server committed")

    assert create_once(create, lambda: VM, FAST) is VM
    assert len(created) == 1


def test_create_is_retried_when_the_lookup_finds_nothing() -> None:
    created = []

    def create() -> VMInstance:
        created.append(1)
        if len(created) == 1:
            raise TransientError("502", status=502)
        return VM

    assert create_once(create, lambda: None, FAST) is VM
    assert len(created) == 2


@pytest.mark.parametrize(
    ("header", "expected"), [("3", 3.0), ("0", 0.0), ("", None), ("soon", None), (None, None)]
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected
