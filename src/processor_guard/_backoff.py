"""The one backoff policy for every wait and retry in the library.

Full-jitter exponential backoff: attempt ``n`` waits a uniform time in
``[0, min(cap, base * 2**n)]``, which spreads contending processes apart instead of
having them retry in lockstep. Retry *loops* are tenacity's (``retry_while``); a few
callers that own their own loop (lease waiters, which also wake on a release
notification) only need the delay, from ``full_jitter``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

__all__ = ["full_jitter", "jitter_wait", "retry_while"]

T = TypeVar("T")


def full_jitter(base: float, cap: float, attempt: int, rng: random.Random | None = None) -> float:
    """The delay before retry ``attempt`` (0-based): uniform in [0, min(cap, base * 2**attempt)]."""
    upper = min(cap, base * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0, upper)


def jitter_wait(base: float, cap: float) -> wait_random_exponential:
    """The same policy as a tenacity ``wait`` strategy."""
    return wait_random_exponential(multiplier=base, max=cap)


def retry_while(
    call: Callable[[], T],
    *,
    retryable: Callable[[BaseException], bool],
    timeout: float,
    base: float,
    cap: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, retried with full-jitter backoff while it raises a ``retryable`` error.

    Gives up after ``timeout`` seconds and re-raises the last error as it was.
    """
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=jitter_wait(base, cap),
        retry=retry_if_exception(retryable),
        sleep=sleep,
        reraise=True,
    )
    return retrying(call)
