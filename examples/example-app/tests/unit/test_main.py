import pytest

from example_app.__main__ import EXIT_BAD_CONFIG, run


@pytest.mark.parametrize(
    "environ, variable",
    [({"PORT": "eighty"}, "PORT"), ({"ERROR_RATE": "2"}, "ERROR_RATE"), ({"HOST": ""}, "HOST")],
)
def test_invalid_configuration_exits_2_naming_the_variable(environ, variable, capsys):
    assert run(environ) == EXIT_BAD_CONFIG

    err = capsys.readouterr().err
    assert err.startswith(f"example-app: invalid configuration: {variable} ")
