"""Deterministic fault injection for simulating a bad release.

``ERROR_RATE=r`` makes exactly ``floor(n * r)`` of the first ``n`` requests to
``/`` fail, spread evenly: request number ``n`` (counting from 1) fails when
``floor(n * r)`` is greater than ``floor((n - 1) * r)``. So

- ``0``    never fails, ``1`` always fails;
- ``0.5``  fails requests 2, 4, 6, ...;
- ``0.25`` fails requests 4, 8, 12, ...;
- ``0.3``  fails requests 4, 7, 10, 14, 17, 20, ... (3 in every 10).

Why not random: a rollback test must see the same error rate on every run, and
a Prometheus analysis over a short window must not pass or fail by luck. The
counter is per server process and shared by all its threads (a lock keeps the
sequence exact under concurrency); with several replicas each one keeps its
own sequence, so the fleet-wide share is still ``r``.
"""

from __future__ import annotations

import threading
from fractions import Fraction


class ErrorInjector:
    """Decides, request by request, whether to answer with an injected 500.

    Args:
        rate: Share of requests to fail, from 0 to 1. A float is read through
            its shortest decimal form (``0.1`` means exactly 1/10).

    Example:
        >>> injector = ErrorInjector(0.5)
        >>> [injector.should_fail() for _ in range(4)]
        [False, True, False, True]
    """

    def __init__(self, rate: float | Fraction = 0) -> None:
        exact = Fraction(repr(rate)) if isinstance(rate, float) else Fraction(rate)
        if not 0 <= exact <= 1:
            raise ValueError(f"error rate must be from 0 to 1, got {rate!r}")
        self.rate = exact
        self._numerator = exact.numerator
        self._denominator = exact.denominator
        self._count = 0
        self._lock = threading.Lock()

    def should_fail(self) -> bool:
        """Count one request and tell whether it must fail."""
        if self._numerator == 0:
            return False
        with self._lock:
            self._count += 1
            n = self._count
        failures_before = (n - 1) * self._numerator // self._denominator
        failures_now = n * self._numerator // self._denominator
        return failures_now > failures_before
