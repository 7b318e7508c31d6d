"""The pytest demo: pass, fail, skip, xfail, an erroring fixture, a skipped test whose
teardown errors (pytest writes <skipped> then <error> into one testcase) and a class."""

import pytest


@pytest.fixture
def broken():
    raise RuntimeError("fixture exploded")


@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown exploded")


def test_passes():
    assert 1 + 1 == 2


def test_fails():
    assert 1 + 1 == 3, "arithmetic | is hard"


@pytest.mark.skip(reason="not on this platform")
def test_skipped():
    pass


def test_errors(broken):
    pass


def test_skipped_with_broken_teardown(bad_teardown):
    pytest.skip("skipped, but its teardown still runs")


@pytest.mark.xfail(reason="known bug #12", strict=True)
def test_known_bug():
    assert 1 == 2


@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n in (1, 2)


class TestY:
    def test_z(self):
        assert "z".upper() == "Y", "z is not y"
