"""The bundled example application's pipeline against a real ``prefect server``.

Everything a person looks at afterwards is checked on the server itself: every
stage's task run, the artifacts, and the run's logs, after the flow's process
has moved on (the ephemeral API would have lost part of them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from slipway.example import publish_example
from slipway.flows.pipeline import run_pipeline
from slipway.local_cluster import stop_local_cluster
from slipway.local_docker import registry_answers, start_registry
from slipway.tasks.gitops import parse_trailers
from tests.flows.prefect_api import artifacts, task_runs

ROOT = Path(__file__).resolve().parents[2]
STAGES = {
    "lint",
    "build",
    "test",
    "unit",
    "integration",
    "quality",
    "security",
    "image",
    "image-scan",
    "push",
    "manifests",
}
EXAMPLE_REGISTRY_PORT = 5000  # what examples/example-app/slipway.yaml pushes to


@pytest.fixture
def example_registry(tmp_path) -> Iterator[str]:
    """A real registry where the example's pipeline file pushes (reused if one answers)."""
    host = f"127.0.0.1:{EXAMPLE_REGISTRY_PORT}"
    proc = None
    if not registry_answers(host):
        proc = start_registry(tmp_path / "registry", EXAMPLE_REGISTRY_PORT)
    yield host
    if proc is not None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def example_services(docker_host, example_registry, monkeypatch) -> str:
    """The engine and registry the example's image stages use, as the main job sets them."""
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    return example_registry


def test_example_app_pipeline_runs_for_real_on_a_prefect_server(
    on_server, slipway_home, example_services
):
    url = publish_example(home=slipway_home)
    state = run_pipeline(repository=url, environments=[])  # the CI half; CD: the next test
    report = state.result()
    assert state.is_completed(), state.message
    assert report.environments == ()
    assert {s.name: s.status for s in report.stages} == dict.fromkeys(STAGES, "passed")
    unit = report.stage("unit").tests
    integration = report.stage("integration").tests
    assert unit is not None and unit.tests >= 10 and not unit.problems
    assert integration is not None and integration.tests >= 3 and not integration.problems
    archived = {a.path for _s, a in report.artifacts}
    assert {"dist/example-app.pyz", "reports/coverage.xml"} <= archived
    assert any(path.startswith("wheels/prometheus_client") for path in archived)
    gate = report.stage("quality").gate
    assert gate is not None and gate.phase == "Successful"
    assert {c.metric for c in gate.conditions} >= {"coverage"}
    scan = report.stage("security").scan
    assert scan is not None and scan.phase == "Successful"
    assert {s.tool for s in scan.scans} == {"bandit", "detect-secrets", "checkov"}
    image_scan = report.stage("image-scan").scan
    assert image_scan is not None and image_scan.phase == "Inconclusive"  # no trivy here
    pushed = report.pushed_image
    assert pushed is not None and pushed.ref.startswith(f"{example_services}/example-app@sha256:")
    assert report.stage("image").image.labels["org.opencontainers.image.revision"] == report.sha
    manifest = urllib.request.Request(
        f"http://{example_services}/v2/example-app/manifests/{pushed.digest}", method="HEAD"
    )
    manifest.add_header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
    with urllib.request.urlopen(manifest, timeout=10) as answer:
        assert answer.headers["Docker-Content-Digest"] == pushed.digest

    leaf = STAGES - {"test"}
    runs = task_runs(state.state_details.flow_run_id, expect=leaf)
    assert leaf <= set(runs)
    assert all(runs[name].state.is_completed() for name in leaf)
    found = artifacts(state.state_details.flow_run_id)
    assert {
        "example-app-pipeline-summary",
        "example-app-tests",
        "example-app-build-artifacts",
        "example-app-quality-gate",
        "example-app-findings-security",
        "example-app-images",
    } <= set(found)

    again = run_pipeline(repository=url, environments=[]).result()
    statuses = {s.name: s.status for s in again.stages}
    # image stages are never reused from a cache (an engine's images come and go);
    # everything else is, the code scan only on the same day under the same policy
    fresh = {"image", "image-scan", "push"}
    assert statuses == {n: ("passed" if n in fresh else "cached") for n in STAGES}
    # same commit: the same revision, and (with the layer cache) the same image; the
    # digest itself is only stable while the engine's build cache holds the layers,
    # because the legacy builder stamps copied files with their checkout time
    rebuilt = again.stage("image").image
    assert rebuilt.labels["org.opencontainers.image.revision"] == report.sha
    assert (
        rebuilt.labels["org.opencontainers.image.created"]
        == (report.stage("image").image.labels["org.opencontainers.image.created"])
    )


def test_readme_main_command_runs_the_example_and_says_where_to_look(
    prefect_server, tmp_path, example_services, docker_host
):
    env = {
        **os.environ,
        "DOCKER_HOST": docker_host,
        "PREFECT_API_URL": prefect_server,
        "SLIPWAY_HOME": str(tmp_path / "home"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "slipway", "example", "--approve-automatically"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        stop_local_cluster(tmp_path / "home")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the CD half, on the SIMULATED cluster, said so, approved by the example's bot
    assert "SIMULATED cluster" in done.stdout
    assert re.search(r"deploy staging\s+🚀 deployed", done.stdout), done.stdout[-3000:]
    assert re.search(r"deploy production\s+🚀 deployed", done.stdout), done.stdout[-3000:]
    assert "approved flow run" in done.stdout and "example-bot" in done.stdout
    manifests = git.Repo(tmp_path / "home" / "example" / "example-manifests.git")
    trailers = [parse_trailers(c.message) for c in manifests.iter_commits("main")]
    assert [t.get("Slipway-Environment") for t in trailers[:2]] == ["production", "staging"]
    assert trailers[0].get("Slipway-Approver") == "example-bot"
    base = prefect_server.removesuffix("/api")
    assert re.search(
        rf"watch it in the Prefect UI: {re.escape(base)}/runs/flow-run/[0-9a-f-]{{36}}", done.stdout
    )
    assert "example-app @" in done.stdout and ": success" in done.stdout
    assert f"image pushed: {example_services}/example-app@sha256:" in done.stdout
