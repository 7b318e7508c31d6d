"""Masking secrets in text that leaves the process."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from slipway.redact import MASK, Redactor, block_secret_values

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


# --- encodings: what a program prints without trying to hide anything -------------------

SECRET = "regpass-Zq8!x/y+w"


def _b64_forms(raw: bytes) -> list[str]:
    forms = []
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms += [encode(raw).decode(), encode(raw).decode().rstrip("=")]
    return forms


@pytest.mark.parametrize(
    "form",
    [
        *_b64_forms(SECRET.encode()),
        SECRET.encode().hex(),
        SECRET.encode().hex().upper(),
        quote(SECRET, safe=""),
    ],
)
def test_common_encodings_of_a_secret_are_masked(form: str) -> None:
    redactor = Redactor([SECRET])

    assert redactor.redact(f"value: {form} end") == "value: *** end"


@pytest.mark.parametrize("prefix", ["", "a", "ab", "abc", "user:", '{"password": "'])
def test_a_secret_inside_a_longer_base64_blob_is_masked_at_every_offset(prefix: str) -> None:
    """A basic-auth header, a base64'd config file: the characters that encode the
    secret's own bits are masked whatever its byte offset in the blob."""
    redactor = Redactor([SECRET])
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        blob = encode(f'{prefix}{SECRET}", "user": "ci"}}'.encode()).decode()

        masked = redactor.redact(f"Authorization: Basic {blob}")

        assert MASK in masked, (prefix, blob)
        # what is left cannot be decoded back to the secret
        leftovers = masked.removeprefix("Authorization: Basic ").split(MASK)
        assert all(len(part) <= len(blob) - 12 for part in leftovers)


def test_encoded_forms_of_short_secrets_do_not_shred_text() -> None:
    redactor = Redactor(["abcd"])  # 4 characters: masked as written and as hex/base64

    assert redactor.redact("abcd") == MASK
    # no base64 fragment shorter than 8 characters is masked
    assert redactor.redact("YWJj and Ymj and the word abcdef") == "YWJj and Ymj and the word ***ef"


def test_every_secret_of_a_block_is_found_nested_blocks_and_kubeconfigs_included() -> None:
    from prefect_docker import DockerRegistryCredentials
    from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "kube-token-5a7e9c1b"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    kube = KubernetesCredentials(
        cluster_config=KubernetesClusterConfig(config=kubeconfig, context_name="c")
    )
    registry = DockerRegistryCredentials(
        username="ci", password="registry-pass-1", registry_url="127.0.0.1:5000"
    )

    assert block_secret_values(kube) == ["kube-token-5a7e9c1b"]
    assert block_secret_values(registry) == ["registry-pass-1"]
