"""Masking secrets in text that leaves the process."""

from __future__ import annotations

from urllib.parse import quote

from slipway.redact import MASK, Redactor

TOKEN = "glpat-s3cr3t/T0ken+x"


def test_known_secret_is_masked_everywhere():
    redactor = Redactor([TOKEN])

    text = f"token={TOKEN}; again {TOKEN}\nend"

    assert redactor.redact(text) == "token=***; again ***\nend"
    assert TOKEN in redactor
    assert redactor.redact(text) not in redactor


def test_percent_encoded_form_is_masked_too():
    redactor = Redactor([TOKEN])
    encoded = quote(TOKEN, safe="")
    assert encoded != TOKEN

    assert redactor.redact(f"GET /repo?access_token={encoded}") == "GET /repo?access_token=***"


def test_url_userinfo_is_masked_even_when_unknown():
    redactor = Redactor()

    text = "fatal: unable to access 'https://ci:hunter22@git.example.com/team/app.git/'"

    assert (
        redactor.redact(text)
        == "fatal: unable to access 'https://***@git.example.com/team/app.git/'"
    )
    assert redactor.redact("ssh://deploy@host/repo.git") == "ssh://***@host/repo.git"
    # an address without userinfo is left alone
    assert redactor.redact("https://git.example.com/a@b") == "https://git.example.com/a@b"


def test_longer_secret_wins_over_a_prefix_of_it():
    redactor = Redactor(["abcd1234", "abcd1234-extended"])

    assert redactor.redact("x abcd1234-extended y abcd1234 z") == "x *** y *** z"


def test_short_and_empty_values_are_ignored():
    redactor = Redactor(["abc", ""])
    redactor.add(None, "xy")

    assert redactor.redact("abc xy abcdef") == "abc xy abcdef"
    assert "abc" not in redactor


def test_add_later_secrets():
    redactor = Redactor()
    assert redactor.redact("password=Sup3rS3cret") == "password=Sup3rS3cret"

    redactor.add("Sup3rS3cret")

    assert redactor.redact("password=Sup3rS3cret") == f"password={MASK}"
    assert "...Sup3rS3cret..." in redactor
    assert "nothing here" not in redactor
