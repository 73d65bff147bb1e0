"""Retrying vendor API calls: jittered exponential backoff that honours Retry-After, bounded.

Providers translate SDK exceptions into the typed errors of :mod:`maider.provider`; anything
worth retrying (429, 5xx, a dropped connection, a timeout) becomes :class:`TransientError`.
:func:`call` retries those; :func:`create_once` additionally makes sure that a create whose
answer was lost is never sent twice: before each retry it looks the instance up by its
session tag and returns it if the first attempt did create it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from maider.provider import ProviderError, VMInstance

T = TypeVar("T")


class TransientError(ProviderError):
    """A failure that may go away: rate limit, server error, dropped connection, timeout."""

    def __init__(
        self, message: str, *, provider: str = "", status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, provider=provider, status=status)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries, the first included
    max_seconds: float = 120.0  # give up once this much time has been spent waiting and trying
    initial_wait: float = 0.5
    max_wait: float = 30.0  # cap on a single wait, Retry-After included


DEFAULT_POLICY = RetryPolicy()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        import datetime as dt

        when = parsedate_to_datetime(value)
        return max(0.0, (when - dt.datetime.now(when.tzinfo)).total_seconds())
    except (TypeError, ValueError):
        return None


def _retrying(policy: RetryPolicy) -> Any:
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay
    from tenacity.wait import wait_base, wait_exponential_jitter

    backoff = wait_exponential_jitter(
        multiplier=policy.initial_wait, max=policy.max_wait, jitter=policy.initial_wait
    )

    class _RetryAfterOrBackoff(wait_base):
        def __call__(self, retry_state: Any) -> float:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            hinted = getattr(exc, "retry_after", None)
            if hinted is not None:
                return min(float(hinted), policy.max_wait)
            return backoff(retry_state)

    return Retrying(
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_seconds),
        wait=_RetryAfterOrBackoff(),
        retry=retry_if_exception_type(TransientError),
        reraise=True,
    )


def call(fn: Callable[[], T], policy: RetryPolicy = DEFAULT_POLICY) -> T:
    """Run `fn`, retrying TransientError within the policy; the last error propagates."""
    for attempt in _retrying(policy):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover


def create_once(
    create: Callable[[], VMInstance],
    find_existing: Callable[[], VMInstance | None],
    policy: RetryPolicy = DEFAULT_POLICY,
) -> VMInstance:
    """Create an instance, retrying transient failures without ever creating two.

    `find_existing` looks the instance up by its unique session tag; it runs before every retry,
    because a create that failed in transit (lost answer, 5xx after commit) may have succeeded.
    """
    first = True
    for attempt in _retrying(policy):
        with attempt:
            if not first:
                existing = call(find_existing, policy)
                if existing is not None:
                    return existing
            first = False
            return create()
    raise AssertionError("unreachable")  # pragma: no cover
