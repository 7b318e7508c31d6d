import threading
from fractions import Fraction

import pytest

from example_app.error_injection import ErrorInjector


def failures(injector, requests):
    """1-based numbers of the failing requests among the next ``requests``."""
    return [n for n in range(1, requests + 1) if injector.should_fail()]


def test_zero_never_fails():
    assert failures(ErrorInjector(0), 1000) == []


def test_one_always_fails():
    assert failures(ErrorInjector(1), 50) == list(range(1, 51))


def test_half_fails_every_second_request():
    assert failures(ErrorInjector(0.5), 10) == [2, 4, 6, 8, 10]


def test_quarter_fails_every_fourth_request():
    assert failures(ErrorInjector(Fraction(1, 4)), 12) == [4, 8, 12]


def test_uneven_rate_is_spread_evenly():
    assert failures(ErrorInjector(0.3), 20) == [4, 7, 10, 14, 17, 20]


@pytest.mark.parametrize("rate", [0.1, 0.29, 0.333, 0.7, 0.99])
def test_share_is_exact_over_any_prefix(rate):
    injector = ErrorInjector(rate)
    exact = Fraction(str(rate))
    failed = 0
    for n in range(1, 2001):
        failed += injector.should_fail()
        # floor(n * rate) failures after n requests, never drifting.
        assert failed == n * exact.numerator // exact.denominator


def test_float_is_read_as_its_decimal_text():
    assert ErrorInjector(0.1).rate == Fraction(1, 10)


@pytest.mark.parametrize("rate", [-0.01, 1.01, 2])
def test_rejects_out_of_range_rates(rate):
    with pytest.raises(ValueError, match="from 0 to 1"):
        ErrorInjector(rate)


def test_sequence_is_exact_under_concurrency():
    injector = ErrorInjector(0.25)
    results = []
    lock = threading.Lock()

    def worker():
        local = [injector.should_fail() for _ in range(500)]
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 4000
    assert sum(results) == 1000
