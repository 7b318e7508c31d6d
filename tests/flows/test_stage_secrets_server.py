"""What a branch's stage commands can reach, tried the way the security review did,
against a real ``prefect server`` with its API authentication on.

Real: the server process (``tests/conftest.py``'s ``prefect_server``), the blocks
saved on it, git, bash, curl and python in the stages. The worker's environment
holds the credentials a worker typically has (cloud keys, a database password, the
webhook secret, the Prefect auth string) and a HOME with a Prefect profile, Docker
and git credentials in it.

The attacks: ``env``; ``POST /api/block_documents/filter`` with ``include_secrets``
(curl and python, as a stage that knows the server's address); reading the
worker's ~/.prefect/profiles.toml; printing block secrets in clear, base64 and hex
before the stage that uses the block runs. None may print a secret. The control: the
same request *with* the auth string returns them (so only the authentication stops it).
"""

from __future__ import annotations

import base64
import hashlib
import textwrap
from pathlib import Path

import httpx
import pytest
from prefect.blocks.system import Secret
from prefect_docker import DockerRegistryCredentials

from slipway.blocks.git import AppRepository
from slipway.blocks.gitops import ManifestsRepository
from slipway.flows.pipeline import run_pipeline
from tests.conftest import API_AUTH_STRING
from tests.flows.prefect_api import api_auth, artifacts, logs
from tests.tasks.test_stage_secrets import save_token_cluster

pytestmark = pytest.mark.usefixtures("on_server")

REGISTRY_PASSWORD = "registry-pass-Qx81z/+w"
KUBE_TOKEN = "kube-token-8d1f2b7c90ae"
APP_TOKEN = "app-repo-token-41c9e2"
MANIFESTS_TOKEN = "manifests-token-77ab30"
DB_SECRET = "db-block-pass-e5d0"
WORKER_SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYWORKERKEY",
    "DATABASE_PASSWORD": "worker-db-pass-2b7e",
    "SLIPWAY_WEBHOOK_SECRET": "worker-webhook-secret-9a1c",
}

EXFILTRATE = """\
import base64, json, os, urllib.error, urllib.request
api = os.environ["TARGET_API"]
request = urllib.request.Request(
    f"{api}/block_documents/filter", method="POST",
    data=json.dumps({"include_secrets": True}).encode(),
    headers={"Content-Type": "application/json"},
)
auth = os.environ.get("PREFECT_API_AUTH_STRING")  # the worker's, if a stage had it
if auth:
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print("python status", response.status, response.read().decode())
except urllib.error.HTTPError as exc:
    print("python status", exc.code, exc.read().decode())
"""


def _save_blocks() -> None:
    save_token_cluster("exfil-cluster", KUBE_TOKEN)
    DockerRegistryCredentials(
        username="ci", password=REGISTRY_PASSWORD, registry_url="127.0.0.1:5999"
    ).save("exfil-registry", overwrite=True)
    AppRepository(
        url="https://git.example.invalid/team/app.git", username="ci", token=APP_TOKEN
    ).save("exfil-app", overwrite=True)
    ManifestsRepository(
        url="https://git.example.invalid/team/manifests.git",
        username="ci",
        token=MANIFESTS_TOKEN,
        environments={"staging": {"path": "staging"}},
    ).save("exfil-manifests", overwrite=True)
    Secret(value=DB_SECRET).save("exfil-db-password", overwrite=True)


def _pipeline_file(api_url: str) -> str:
    return textwrap.dedent(
        f"""\
        app: exfil
        env: {{TARGET_API: "{api_url}"}}
        stages:
          - name: early            # before anything uses the registry or the cluster
            run:
              - cat leaked.txt
              - base64 -w0 leaked.txt; echo
              - od -An -tx1 leaked.txt | tr -d ' \\n'; echo
          - name: exfiltrate
            run:
              - env | sort
              - >-
                curl -sS -o response.json -w 'curl status %{{http_code}}\\n' -X POST
                -H 'Content-Type: application/json' -d '{{"include_secrets": true}}'
                "$TARGET_API/block_documents/filter"
              - cat response.json; echo
              - python3 exfiltrate.py
              - echo "HOME-BEGIN $HOME"; ls -A "$HOME"; echo HOME-END
              - test ! -e "$HOME/.prefect/profiles.toml"
          - name: login
            run:
              - echo "password is $REGISTRY_PASSWORD, db is $DB_PASSWORD"
              - printf %s "$REGISTRY_PASSWORD" | sha256sum
            secrets:
              REGISTRY_PASSWORD:
                {{block: docker-registry-credentials/exfil-registry, field: password}}
              DB_PASSWORD: {{block: secret/exfil-db-password}}
          - name: other
            run: echo "other sees ${{REGISTRY_PASSWORD:-nothing}} and ${{DB_PASSWORD:-nothing}}"
          - name: image           # never runs here; it only names the registry block
            when: {{branch: "release/*"}}
            build_image: {{repository: exfil, registry: exfil-registry}}
        deploy:
          manifests: exfil-manifests
          environments:
            - {{name: staging, cluster: exfil-cluster, namespace: staging}}
        """
    )


@pytest.fixture
def worker_with_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The worker's environment and HOME as the review found them."""
    for name, value in WORKER_SECRETS.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "worker-home"
    (home / ".prefect").mkdir(parents=True)
    (home / ".prefect" / "profiles.toml").write_text(
        f'[profiles.default]\nPREFECT_API_AUTH_STRING = "{API_AUTH_STRING}"\n'
    )
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text('{"auths": {}}')
    (home / ".git-credentials").write_text(f"https://ci:{APP_TOKEN}@git.example.invalid\n")
    monkeypatch.setenv("HOME", str(home))
    return home


def _forms(value: str) -> list[str]:
    raw = value.encode()
    return [value, base64.b64encode(raw).decode().rstrip("="), raw.hex()]


def test_a_branch_stage_reaches_no_secret_of_the_worker_or_the_server(
    on_server: str, git_remote, worker_with_credentials: Path
) -> None:
    _save_blocks()
    leaked = f"registry={REGISTRY_PASSWORD}\nkube={KUBE_TOKEN}\n"
    _, url = git_remote(
        {
            "slipway.yaml": _pipeline_file(on_server),
            "exfiltrate.py": EXFILTRATE,
            "leaked.txt": leaked,
        }
    )
    # the control: the same request with the auth string hands every secret out
    allowed = httpx.post(
        f"{on_server}/block_documents/filter",
        json={"include_secrets": True},
        auth=api_auth(),
        timeout=10,
    )
    assert allowed.status_code == 200 and REGISTRY_PASSWORD in allowed.text

    state = run_pipeline(repository=url, environments=[])

    report = state.result(raise_on_failure=False)
    assert state.is_completed(), (state.message, report)
    by_name = {s.name: s for s in report.stages}
    assert by_name["image"].status == "skipped"
    run_id = state.state_details.flow_run_id
    text = logs(run_id)
    # the API refused both, so nothing came back
    assert "curl status 401" in text and "python status 401" in text
    assert '{"exception_message":"Unauthorized"}' in text
    # env shows the allowlist and the run's variables, no credential of the worker
    assert "PATH=" in text and "SLIPWAY_COMMIT=" in text
    for name in (*WORKER_SECRETS, "PREFECT_API_AUTH_STRING", "PREFECT_API_URL"):
        assert f"{name}=" not in text, name
    # HOME is the run's own, empty: no profile, docker or git credentials in it
    lines = text.splitlines()
    begin = next(i for i, line in enumerate(lines) if line.startswith("HOME-BEGIN /"))
    assert lines[begin] != f"HOME-BEGIN {worker_with_credentials}"
    assert lines[begin].endswith(".home"), lines[begin]
    assert lines[begin + 1] == "HOME-END", lines[begin : begin + 5]
    # secrets the stage asked for: given to it alone, masked
    assert "password is ***, db is ***" in text
    assert hashlib.sha256(REGISTRY_PASSWORD.encode()).hexdigest() in text
    assert "other sees nothing and nothing" in text
    # the early stage printed block secrets in clear, base64 and hex: all masked
    assert "registry=***" in text and "kube=***" in text
    secrets = [REGISTRY_PASSWORD, KUBE_TOKEN, APP_TOKEN, MANIFESTS_TOKEN, DB_SECRET]
    secrets += [*WORKER_SECRETS.values(), API_AUTH_STRING.split(":", 1)[1]]
    everything = text + "\n".join(str(a.data) for a in artifacts(run_id).values())
    for secret in secrets:
        for form in _forms(secret):
            assert form not in everything, (secret, form)
    # the base64 and hex lines of the whole file are masked too
    assert base64.b64encode(leaked.encode()).decode() not in everything
    assert leaked.encode().hex() not in everything
