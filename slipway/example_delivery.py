"""The CD half of the bundled example: blocks, a manifests repository, traffic, approvals.

``slipway example`` deploys to a SIMULATED cluster (the Kubernetes API stand-in of
``tests/servers``, whose pods are real local processes of the example app) because no
apiserver can run on the machines slipway is developed on. Everything else is real:
the GitOps repository (a local bare git repository), Prometheus scraping the pods,
the Prefect approval form. This module saves the blocks the example's ``deploy:``
section names, publishes the manifests once, sends steady traffic at production so
the metric analysis has something to measure, and, when asked, approves as a named
bot so an unattended run does not wait for a person.

The example's two approvers, a person (``you@example.com``) and the bot, each have a
TOTP secret like any approver: made once and kept in
``$SLIPWAY_HOME/example/approvers.json`` (readable by its owner only), so an
authenticator app set up once keeps working. The bot computes its codes from its
secret and approves through the same API and checks a person's approval goes through.
"""

from __future__ import annotations

import contextvars
import json
import os
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import git
import httpx
import pyotp
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from slipway.blocks.approval import ApprovalPolicy, Approver, EnvironmentApproval
from slipway.blocks.git import AppRepository
from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.blocks.prometheus import PrometheusServer
from slipway.example import EXAMPLE_DIR, commit_all
from slipway.exceptions import ConfigError
from slipway.local_cluster import LocalCluster
from slipway.tasks.approval import ApprovalDecision, approve_run
from slipway.workspace import slipway_home

AUTO_APPROVER = "example-bot"
HUMAN_APPROVER = "you@example.com"
BLOCKS = {
    "manifests": "example-app-manifests",
    "approvals": "example-app-approvals",
    "prometheus": "example-prometheus",
    "cluster": "example-cluster",
}


def publish_manifests(source: Path = EXAMPLE_DIR / "k8s", home: Path | None = None) -> str:
    """The example's GitOps repository: created once from ``k8s/``; later runs keep its
    history (the bumps and reverts of earlier runs), as a team's repository would."""
    remote = (home or slipway_home()) / "example" / "example-manifests.git"
    if remote.exists():
        return remote.as_uri()
    seed = remote.with_name("manifests-seed")
    shutil.rmtree(seed, ignore_errors=True)
    shutil.copytree(source, seed)
    repo = git.Repo.init(seed, initial_branch="main")
    repo.git.add("--all")
    commit_all(repo, "example-app manifests: base and overlays")
    git.Repo.init(remote, bare=True, initial_branch="main")
    repo.git.push("--quiet", remote.as_uri(), "HEAD:refs/heads/main")
    shutil.rmtree(seed, ignore_errors=True)
    return remote.as_uri()


def example_approvers(*, create: bool = True, home: Path | None = None) -> dict[str, Approver]:
    """The example's approvers with their TOTP secrets, made on first use.

    Raises:
        ConfigError: ``create`` is false and the example has not made them yet.
    """
    path = (home or slipway_home()) / "example" / "approvers.json"
    secrets = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    missing = [n for n in (HUMAN_APPROVER, AUTO_APPROVER) if n not in secrets]
    if missing and not create:
        raise ConfigError(f"{path} has no TOTP secret for {', '.join(missing)}: run examples/run")
    if missing:
        secrets.update({name: pyotp.random_base32() for name in missing})
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(secrets, out, indent=2)
    return {name: Approver(name=name, totp_secret=secrets[name]) for name in secrets}


def save_example_blocks(cluster: LocalCluster, manifests_url: str, app_url: str) -> None:
    """Save (overwrite) the four blocks the example's ``deploy:`` names, and the
    ``example-app`` AppRepository the `pipeline/example-app` deployment builds."""
    AppRepository(url=app_url, default_branch="main").save("example-app", overwrite=True)
    ManifestsRepository(
        url=manifests_url,
        environments={
            "staging": EnvironmentManifests(path="overlays/staging", kind="kustomize"),
            "production": EnvironmentManifests(path="overlays/production", kind="kustomize"),
        },
        author_name="slipway example",
        author_email="example@slipway.invalid",
    ).save(BLOCKS["manifests"], overwrite=True)
    ApprovalPolicy(
        environments={
            "production": EnvironmentApproval(
                approvers=list(example_approvers().values()),
                timeout_seconds=1800,
                branches=["main"],
            )
        }
    ).save(BLOCKS["approvals"], overwrite=True)
    PrometheusServer(url=cluster.prometheus_url).save(BLOCKS["prometheus"], overwrite=True)
    config = yaml.safe_load(cluster.kubeconfig.read_text(encoding="utf-8"))
    KubernetesCredentials(
        cluster_config=KubernetesClusterConfig(
            config=config, context_name=config["current-context"]
        )
    ).save(BLOCKS["cluster"], overwrite=True)


class Traffic:
    """Steady requests at production's Service through the API server's proxy, so the
    metric analysis measures something (a real service gets its users' traffic)."""

    def __init__(self, cluster: LocalCluster, per_second: float = 10.0) -> None:
        config = yaml.safe_load(cluster.kubeconfig.read_text(encoding="utf-8"))
        user = config["users"][0]["user"]
        self._headers = {"Authorization": f"Bearer {user['token']}"} if "token" in user else {}
        self._url = (
            f"{cluster.api_url}/api/v1/namespaces/production/services/example-app:http/proxy/"
        )
        self._interval = 1 / per_second
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="example-traffic", daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=2, headers=self._headers) as client:
            while not self._stop.wait(self._interval):
                try:
                    client.get(self._url)
                except httpx.HTTPError:
                    pass  # production is not there yet, or between colours

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


class AutoApprover:
    """Approves every pipeline run that pauses for a decision, as ``example-bot``, with
    the bot's TOTP code: for unattended runs (``--approve-automatically``). Without it
    the run waits in the UI. A code counts once, so a second approval within one 30 s
    step uses the next step's code, and a third waits for the clock."""

    def __init__(self, poll: float = 1.0) -> None:
        self._poll = poll
        self._bot = example_approvers()[AUTO_APPROVER]
        self._last_step = 0
        self._stop = threading.Event()
        self._since = datetime.now(UTC)  # only runs this command started
        # Prefect's settings (the API URL) live in context variables: take them along
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="auto-approver", daemon=True
        )

    def _paused_runs(self) -> list[UUID]:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
                    start_time=FlowRunFilterStartTime(after_=self._since),
                ),
                limit=20,
            )
        return [r.id for r in runs if r.state and r.state.name == "Paused"]

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                for run_id in self._paused_runs():
                    code = self._next_code()
                    if code is None:
                        break  # both codes of this minute are spent: the next poll
                    decision = ApprovalDecision(
                        approve=True,
                        approver=AUTO_APPROVER,
                        code=code[1],
                        reason="slipway example --approve-automatically",
                    )
                    approve_run(run_id, decision, timeout=10)
                    self._last_step = code[0]
                    print(f"approved flow run {run_id} as {AUTO_APPROVER}", flush=True)
            except Exception as exc:  # keep approving; the run's own deadline still holds
                print(f"auto-approver: {type(exc).__name__}: {exc}", flush=True)

    def _next_code(self) -> tuple[int, str] | None:
        """The bot's first code not used yet that still counts (its step and digits)."""
        totp = self._bot.totp()
        current = totp.timecode(datetime.now(UTC))
        step = max(current, self._last_step + 1)
        return (step, totp.generate_otp(step)) if step <= current + 1 else None

    def __enter__(self) -> AutoApprover:
        self._thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
