from fractions import Fraction

import pytest

from example_app.config import AppConfig, ConfigError


def test_defaults_when_nothing_is_set():
    config = AppConfig.from_env({})

    assert config == AppConfig(host="0.0.0.0", port=8080, version="dev", error_rate=Fraction(0))


def test_reads_every_variable():
    config = AppConfig.from_env(
        {"HOST": "127.0.0.1", "PORT": "9000", "APP_VERSION": "1.4.2", "ERROR_RATE": "0.25"}
    )

    assert config == AppConfig(
        host="127.0.0.1", port=9000, version="1.4.2", error_rate=Fraction(1, 4)
    )


def test_surrounding_whitespace_is_ignored():
    config = AppConfig.from_env({"PORT": " 80 ", "APP_VERSION": " v1 ", "ERROR_RATE": " 1 "})

    assert (config.port, config.version, config.error_rate) == (80, "v1", 1)


@pytest.mark.parametrize("text, expected", [("0", 0), ("0.1", Fraction(1, 10)), ("1", 1)])
def test_error_rate_is_exact(text, expected):
    assert AppConfig.from_env({"ERROR_RATE": text}).error_rate == expected


@pytest.mark.parametrize("port", ["0", "1", "65535"])
def test_port_range_edges_are_accepted(port):
    assert AppConfig.from_env({"PORT": port}).port == int(port)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("PORT", ""),
        ("PORT", "http"),
        ("PORT", "65536"),
        ("PORT", "-1"),
        ("PORT", "+80"),
        ("PORT", "8_080"),
        ("PORT", "80.0"),
        ("HOST", ""),
        ("HOST", "   "),
        ("APP_VERSION", ""),
        ("ERROR_RATE", ""),
        ("ERROR_RATE", "lots"),
        ("ERROR_RATE", "1.5"),
        ("ERROR_RATE", "-0.1"),
        ("ERROR_RATE", "nan"),
        ("ERROR_RATE", "inf"),
        ("ERROR_RATE", "1/0"),
    ],
)
def test_invalid_value_names_the_variable(variable, value):
    with pytest.raises(ConfigError) as caught:
        AppConfig.from_env({variable: value})

    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable} ")
    if value.strip():
        assert repr(value) in str(caught.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
