"""Requests per minute per API key, over a moving window (the ``limits`` library), with OpenAI's headers.

Every response to a limited key carries ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests`` and
``x-ratelimit-reset-requests`` (when the next request frees up, as OpenAI writes durations: ``20ms``, ``1.5s``,
``1m0s``); a refused one is a 429 with ``Retry-After`` (whole seconds). Counts live where
``TUNEFORGE_RATE_LIMIT_STORAGE`` says: ``memory://`` in each replica (N replicas then admit up to N times the
rate in all), or a shared store such as ``redis://`` for one count across replicas.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from tuneforge.service.core.errors import RateLimited

LIMIT_HEADER = "x-ratelimit-limit-requests"
REMAINING_HEADER = "x-ratelimit-remaining-requests"
RESET_HEADER = "x-ratelimit-reset-requests"


def openai_duration(seconds: float) -> str:
    """``20ms``, ``1.5s``, ``6m0s``: how OpenAI writes ``x-ratelimit-reset-*``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


class RequestRateLimiter:
    def __init__(self, storage_uri: str = "memory://") -> None:
        self.strategy = MovingWindowRateLimiter(storage_from_string(storage_uri))

    def hit(self, key_id: str, per_minute: int) -> RateDecision:
        """Count one request of ``key_id`` (a refused request counts too: hammering does not pay)."""
        item = RateLimitItemPerMinute(per_minute)
        allowed = self.strategy.hit(item, key_id)
        stats = self.strategy.get_window_stats(item, key_id)
        wait = max(0.0, stats.reset_time - time.time())
        headers = {LIMIT_HEADER: str(per_minute), REMAINING_HEADER: str(max(0, stats.remaining)),
                   RESET_HEADER: openai_duration(wait)}
        return RateDecision(allowed, wait, headers)


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    #: seconds until the next request is admitted
    retry_after: float
    headers: dict[str, str]

    def error(self, per_minute: int) -> RateLimited:
        return RateLimited(f"Rate limit reached for this API key: {per_minute} requests per minute. Please try "
                           f"again in {openai_duration(self.retry_after)}.", retry_after=self.retry_after)
