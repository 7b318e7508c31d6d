"""prefect.yaml on a real ``prefect server``, and pushes that start pipelines.

``prefect --no-prompt deploy --all`` runs from the project root against a real
``prefect server`` process (the session's ``prefect_server``); the tests then read
back what the server stored: deployments, parameters, the nightly schedule, and the
automation the push trigger became. The push test runs ``slipway webhook`` as its
own process (as it runs in production), posts GitHub-style push deliveries to it,
and watches the server's triggers service turn the one correctly signed delivery
into a flow run of ``pipeline/example-app`` with the pushed branch and commit. No
worker runs: the flow run is created (Scheduled) by the server, which is what a
trigger does; a worker on the pool would then take it like any other run.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import Deployment, FlowRun
from prefect.client.schemas.schedules import CronSchedule
from prefect.events import emit_event
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect.exceptions import ObjectAlreadyExists
from prefect.flow_engine import run_flow_async
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import State
from prefect.testing.cli import invoke_and_assert
from prefect.types._datetime import now

from slipway.blocks.git import AppRepository
from slipway.exceptions import ConfigError
from slipway.flows.pipeline import pipeline
from slipway.webhook import SECRET_ENV, load_secret
from tests.conftest import _restart_event_and_log_workers
from tests.flows.prefect_api import api_auth
from tests.servers.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
POOL = "slipway"
PUSH_TRIGGER = "example-app on push"


@pytest.fixture(scope="module")
def server_api(prefect_server: str) -> Iterator[str]:
    """This module's Prefect client on the real server (``on_server``, module-wide)."""
    _restart_event_and_log_workers()
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield prefect_server
        _restart_event_and_log_workers()


@pytest.fixture(scope="module")
def deployed(server_api: str) -> Iterator[dict[str, Deployment]]:
    """``prefect deploy --all`` from the project root; the deployments by name. Removed
    afterwards with their runs, so no later test's worker on the pool picks them up."""
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        except ObjectAlreadyExists:
            pass
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        invoke_and_assert(
            ["--no-prompt", "deploy", "--all"],
            expected_output_does_not_contain=["Skipping", "validation error", "Traceback"],
            echo=False,
        )
    finally:
        os.chdir(cwd)
    declared = {
        d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    }
    with get_client(sync_client=True) as client:
        flow_names = {f.id: f.name for f in client.read_flows()}
        found = {
            f"{flow_names[d.flow_id]}/{d.name}": d
            for d in client.read_deployments()
            if d.name in declared and d.work_pool_name == POOL
        }
    try:
        yield found
    finally:  # every deployment prefect.yaml made, so no scheduled run outlives the module
        with get_client(sync_client=True) as client:
            for deployment in found.values():
                filter_ = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
                for run in client.read_flow_runs(deployment_filter=filter_):
                    client.delete_flow_run(run.id)
                client.delete_deployment(deployment.id)


def test_the_server_stores_the_deployments_schedule_and_push_trigger(deployed, server_api) -> None:
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(POOL)
        automations = client.read_resource_related_automations(
            f"prefect.deployment.{deployed['pipeline/example-app'].id}"
        )
    assert pool.type == "process"
    assert {"pipeline/example-app", "pipeline/example-app-nightly", "rollback/manual"} <= set(
        deployed
    )

    pipeline = deployed["pipeline/example-app"]
    assert pipeline.parameters == {
        "repository": "example-app",
        "branch": "main",
        "commit": None,
        "environments": ["staging", "production"],
    }
    assert pipeline.schedules == []  # pushes, people and scripts start it
    schema = pipeline.parameter_openapi_schema["properties"]
    assert {"branch", "commit", "environments"} <= set(schema)

    nightly = deployed["pipeline/example-app-nightly"]
    assert nightly.parameters["environments"] == [] and nightly.parameters["refresh_cache"]
    (schedule,) = nightly.schedules
    assert schedule.active
    assert isinstance(schedule.schedule, CronSchedule)
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "Europe/Berlin")

    # the server reads the cron in Berlin time: 02:00 there is 01:00 UTC in winter and
    # 00:00 UTC in summer (asked to plan two nights of each, a year ahead)
    for start in ("2027-01-10T12:00:00Z", "2027-07-10T12:00:00Z"):
        httpx.post(
            f"{server_api}/deployments/{nightly.id}/schedule",
            json={"start_time": start, "max_runs": 2, "min_runs": 2},
            auth=api_auth(),
            timeout=10,
        ).raise_for_status()
    with get_client(sync_client=True) as client:
        filter_ = DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id]))
        planned = [r.expected_start_time for r in client.read_flow_runs(deployment_filter=filter_)]
    in_2027 = sorted(t for t in planned if t is not None and t.year == 2027)
    assert [t.strftime("%m-%d %H:%M") for t in in_2027] == [
        "01-11 01:00", "01-12 01:00", "07-11 00:00", "07-12 00:00"
    ]  # fmt: skip
    berlin = ZoneInfo("Europe/Berlin")
    assert {t.astimezone(berlin).strftime("%H:%M") for t in in_2027} == {"02:00"}

    (automation,) = [a for a in automations if a.name == PUSH_TRIGGER]
    assert automation.enabled
    trigger = automation.trigger
    assert trigger.expect == {"slipway.push"}
    assert trigger.match.model_dump()["prefect.resource.id"] == "slipway.repo.example-app"
    assert trigger.posture == "Reactive" and trigger.threshold == 1
    (action,) = automation.actions
    assert action.type == "run-deployment" and action.deployment_id == pipeline.id
    assert action.parameters == {
        "branch": "{{ event.payload.branch }}",
        "commit": "{{ event.payload.commit }}",
        "push": {"secret_block": SECRET_BLOCK, "event": "{{ event.payload }}"},
    }


# ----------------------------------------------------------------------------- pushes

SECRET = "s3cret-shared-with-the-git-host"
SECRET_BLOCK = "github-webhook"  # the block prefect.yaml's trigger names
COMMIT = "3f786850e387550fdab836ed7e6dc881de23001b"
BRANCH = "feature/login-form"


def push_body(*, branch: str = BRANCH, commit: str = COMMIT) -> bytes:
    """What GitHub posts for a push (the fields the receiver reads, and some it does not)."""
    return json.dumps(
        {
            "ref": f"refs/heads/{branch}",
            "before": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
            "after": commit,
            "created": False,
            "deleted": False,
            "repository": {"name": "example-app", "full_name": "team/example-app"},
            "pusher": {"name": "alice", "email": "alice@example.com"},
            "head_commit": {"id": commit, "message": "Add the login form\n\n$(reboot)"},
        }
    ).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(url: str, body: bytes, sig: str | None, delivery: str) -> httpx.Response:
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
    }
    if sig is not None:
        headers["X-Hub-Signature-256"] = sig
    return httpx.post(url, content=body, headers=headers, timeout=10)


@pytest.fixture
def receiver(server_api: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``slipway webhook`` as its own process, its secret in the Prefect Secret block the
    trigger names; yields its URL and its log file (stdout and stderr)."""
    block = SECRET_BLOCK
    Secret(value=SECRET).save(block, overwrite=True)
    port = free_port()
    log = tmp_path / "webhook.log"
    env = {**os.environ, "PREFECT_API_URL": server_api}
    env.pop("SLIPWAY_WEBHOOK_SECRET", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slipway", "webhook", "--port", str(port)]
            + ["--secret-block", block],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_receiver_reads_its_secret_from_a_prefect_secret_block(server_api) -> None:
    name = f"webhook-secret-{uuid4().hex[:8]}"
    Secret(value="from-a-block").save(name)
    assert load_secret(name, env={SECRET_ENV: "ignored"}) == b"from-a-block"
    with pytest.raises(ConfigError, match="could not be loaded"):
        load_secret(f"missing-{uuid4().hex[:8]}")


def pipeline_runs(deployment: Deployment) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )


def push_events(since) -> list:  # noqa: ANN001
    with get_client(sync_client=True) as client:
        page = client.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=["slipway.push"]),
                occurred=EventOccurredFilter(since=since),
            ),
            limit=50,  # the server's maximum (the client's default of 100 is refused)
        )
    return list(page.events)


def wait_for_runs(deployment: Deployment, count: int, timeout: float = 60) -> list[FlowRun]:
    deadline = time.monotonic() + timeout
    while len(runs := pipeline_runs(deployment)) < count:
        assert time.monotonic() < deadline, f"{len(runs)} of {count} flow runs from the trigger"
        time.sleep(0.25)
    return runs


def execute(run: FlowRun) -> State:
    """Run a flow run the trigger created, here, as a process worker would."""
    return asyncio.run(
        run_flow_async(pipeline, run, parameters=run.parameters, return_type="state")
    )  # type: ignore[return-value]


def task_runs(run: FlowRun) -> list:  # noqa: ANN001
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )


def audit(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_a_signed_push_starts_the_pipeline_and_forged_or_replayed_events_start_nothing(
    deployed, receiver, server_api, git_remote, isolated_results
) -> None:
    url, log = receiver
    pipeline_deployment = deployed["pipeline/example-app"]
    # the repository the deployment builds: one cheap stage, on the pushed branch
    bare, remote = git_remote(
        {"slipway.yaml": "version: 1\napp: example-app\nstages:\n  - name: ok\n    run: 'true'\n"},
        branch=BRANCH,
    )
    AppRepository(url=remote, default_branch="main").save("example-app", overwrite=True)
    commit = subprocess.run(
        ["git", "-C", str(bare), "rev-parse", BRANCH], capture_output=True, text=True, check=True
    ).stdout.strip()
    started = now("UTC")
    # the server's triggers service is what turns events into runs: it must be on
    settings = httpx.get(f"{server_api}/admin/settings", auth=api_auth(), timeout=10).json()
    assert settings["server"]["services"]["triggers"]["enabled"] is True

    body = push_body(commit=commit)
    forged = push_body(branch="main", commit="f" * 40)
    refused = {
        "unsigned": post(url, forged, None, "d-unsigned"),
        "wrong secret": post(url, forged, signature("guessed", forged), "d-guessed"),
        "other body": post(url, forged, signature(SECRET, body), "d-replayed"),
        "sha1 header": post(url, forged, "sha1=" + "0" * 40, "d-sha1"),
    }
    assert {k: r.status_code for k, r in refused.items()} == dict.fromkeys(refused, 401)

    sent = time.monotonic()
    accepted = post(url, body, signature(SECRET, body), "d-good")
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["event"]
    (first,) = wait_for_runs(pipeline_deployment, 1)
    print(f"push -> flow run of {pipeline_deployment.name}: {time.monotonic() - sent:.2f} s")
    assert first.parameters["branch"] == BRANCH
    assert first.parameters["commit"] == commit
    assert first.parameters["repository"] == "example-app"  # the deployment's, not the push's
    assert first.parameters["environments"] == ["staging", "production"]
    assert first.parameters["push"]["secret_block"] == SECRET_BLOCK
    assert first.state is not None and first.state.is_scheduled()

    # GitHub's redelivery (same id) and a captured body posted under a new id: duplicates
    again = [post(url, body, signature(SECRET, body), d) for d in ("d-good", "d-new-id")]
    assert [a.json()["status"] for a in again] == ["duplicate", "duplicate"]

    # one slipway.push event so far, the signed one, carrying its signature
    deadline = time.monotonic() + 30
    while not (events := push_events(started)):
        assert time.monotonic() < deadline, "the emitted event was not recorded"
        time.sleep(0.25)
    assert [str(e.id) for e in events] == [event_id]
    (event,) = events
    assert event.resource.id == "slipway.repo.example-app"
    assert event.payload["branch"] == BRANCH and event.payload["commit"] == commit
    assert event.payload["delivery"] == "d-good" and event.payload["pusher"] == "alice"
    assert event.payload["signature"].startswith("v1=")

    # the signed push runs: verified, checked out, its stage run
    state = execute(first)
    assert state.is_completed(), state
    assert [t.name for t in task_runs(first) if t.name.startswith("ok")] != []

    # the attacker, on the Prefect API: an unsigned event, a tampered one, a replay.
    # Without the API auth string the server turns the event away at the door...
    resource = {"prefect.resource.id": "slipway.repo.example-app"}
    unsigned = {"branch": "main", "commit": "f" * 40, "delivery": "d-evil"}
    forged = [
        {
            "id": str(uuid4()),
            "occurred": now("UTC").isoformat(),
            "event": "slipway.push",
            "resource": resource,
            "payload": unsigned,
        }
    ]
    assert httpx.post(f"{server_api}/events", json=forged, timeout=10).status_code == 401
    # ...and one who holds it (a leaked string, an insider) still cannot start a build:
    # the pipeline refuses every event the receiver did not sign
    httpx.post(f"{server_api}/events", json=forged, auth=api_auth(), timeout=10).raise_for_status()
    emit_event("slipway.push", resource=resource, payload={**event.payload, "branch": "main"})
    emit_event("slipway.push", resource=resource, payload=dict(event.payload))
    runs = wait_for_runs(pipeline_deployment, 4)
    attacks = {r.id: r for r in runs if r.id != first.id}
    outcomes: dict[str, str] = {}
    for run in attacks.values():
        refused_state = execute(run)
        assert refused_state.is_failed(), refused_state
        sent_event = run.parameters["push"]["event"]
        kind = (
            "unsigned"
            if "signature" not in sent_event
            else "replayed"
            if sent_event["branch"] == BRANCH
            else "tampered"
        )
        outcomes[kind] = refused_state.message or ""
        assert task_runs(run) == []  # nothing ran: no checkout, no stage
    print("refused:", json.dumps(outcomes, indent=1))
    assert "is not signed" in outcomes["unsigned"]
    assert "signature does not match" in outcomes["tampered"]
    assert f"already started flow run {first.id}" in outcomes["replayed"]

    # the receiver's audit trail, on its stderr: one line per delivery
    lines = {(line["delivery"], line["verdict"]) for line in audit(log)}
    for delivery in ("d-unsigned", "d-guessed", "d-replayed", "d-sha1"):
        assert (delivery, "refused") in lines
    assert ("d-good", "emitted") in lines and ("d-good", "duplicate") in lines
    assert ("d-new-id", "duplicate") in lines
    text = log.read_text()
    assert SECRET not in text and signature(SECRET, body) not in text
