"""The rollback flow a person starts: the cluster back, the bump reverted, said so.

Real: git (the manifests repository, a bare repo), the Prefect API (harness) with its
blocks, concurrency limits and artifacts, Slack over HTTP (a local receiver), the
kubernetes client. Stand-in: the Kubernetes API (no apiserver runs here); its pods
need no process behind them, as nothing here sends them requests. Releases are made
the way the pipeline makes them, by ``deliver`` (bump commit, apply, rollout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import git
import pytest
import yaml
from kubernetes import client as k8s
from prefect import flow
from prefect.concurrency.asyncio import concurrency
from prefect.states import State
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials
from prefect_slack import SlackWebhook

from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.blocks.notifications import SlackNotifier
from slipway.deploy_spec import DeploySpec
from slipway.exceptions import ConfigError, DeployBusy, UnsafeInputError
from slipway.flows.deliver import Delivery, deliver, ensure_deploy_slot_limit, slot_name
from slipway.flows.rollback import (
    RollbackReport,
    check_inputs,
    decide,
    rollback,
)
from slipway.redact import Redactor
from slipway.report import EnvironmentOutcome
from slipway.tasks.gitops import bump_image, parse_trailers
from slipway.tasks.kube_apply import get_object
from slipway.tasks.strategies import Release, deploy_canary, set_canary_weight
from slipway.tasks.strategy_objects import VIRTUAL_SERVICE_API, canary_weight
from slipway.tasks.strategy_spec import CanarySpec
from tests.flows.prefect_api import artifacts
from tests.servers.git_http import commit_files, make_bare_repo
from tests.servers.kube_api import KubeCluster
from tests.servers.slack_receiver import SlackReceiver

pytestmark = [
    pytest.mark.usefixtures("flow_env"),
    pytest.mark.kube_standin_only("the images are names no registry serves"),
]

APP = "shop"
REGISTRY = "127.0.0.1:5000/shop"
ONE, TWO, THREE = (f"{REGISTRY}@sha256:{c * 64}" for c in "abc")
COLOUR = "slipway.dev/colour"


def deployment_yaml() -> str:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "labels": {"app": APP}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {"containers": [{"name": APP, "image": f"{REGISTRY}:placeholder"}]},
            },
        },
    }
    return "# the shop\n" + yaml.safe_dump(deployment)


SERVICE_YAML = yaml.safe_dump(
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": APP},
        "spec": {"selector": {"app": APP}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
)
CANARY = {"steps": [{"weight": 50, "analysis": False}]}
STRATEGIES = {
    "staging": {"rolling": {"max_surge": 1, "max_unavailable": 0}},
    "production": {"blue_green": {"scale_down_delay_seconds": 0}},
    "canary": {"canary": CANARY},
}


@dataclass
class World:
    """A manifests repository, a cluster, Slack and the blocks naming them."""

    kube: KubeCluster
    remote: Path
    manifests: ManifestsRepository
    manifests_block: str
    cluster_block: str
    notifier_block: str
    slack: SlackReceiver
    workspace: Path
    builds: Iterator[int] = field(default_factory=lambda: iter(range(1, 1000)))

    @property
    def namespace(self) -> str:
        return self.kube.namespace

    def deploy(self, environment: str, image: str) -> EnvironmentOutcome:
        """One release through ``deliver``, as the pipeline makes it."""
        spec = DeploySpec.model_validate(
            {
                "manifests": self.manifests_block,
                "environments": [
                    {
                        "name": environment,
                        "namespace": self.namespace,
                        "strategy": STRATEGIES[environment],
                        "rollout_timeout": 30,
                    }
                ],
            }
        )
        build = next(self.builds)
        token = uuid4().hex
        _DELIVERIES[token] = Delivery(
            spec=spec,
            app=APP,
            image=image,
            source_commit=f"{build:040x}",
            branch="main",
            run_id=str(uuid4()),
            run_url=None,
            build_number=build,
            workspace=self.workspace / f"build-{build}",
            redactor=Redactor(),
            manifests=self.manifests,
            approvals=None,
            prometheus=None,
            notifier=None,
            default_cluster=self.cluster_block,
        )
        (outcome,) = asyncio.run(deliver_flow(token))
        assert outcome.status == "deployed", outcome
        return outcome

    def roll_back(self, **parameters: Any) -> State:
        given = {
            "app": APP,
            "environment": "staging",
            "namespace": self.namespace,
            "cluster": self.cluster_block,
            "manifests": self.manifests_block,
            "reason": "5xx after the release",
            **parameters,
        }
        return asyncio.run(rollback(**given, return_state=True))  # type: ignore[arg-type]

    # --- what the cluster and git say ------------------------------------------------------

    def deployment(self, name: str = APP) -> Any:
        return k8s.AppsV1Api(self.kube.api_client()).read_namespaced_deployment(
            name, self.namespace
        )

    def image(self, name: str = APP) -> str:
        return str(self.deployment(name).spec.template.spec.containers[0].image)

    def colour(self) -> str:
        service = k8s.CoreV1Api(self.kube.api_client()).read_namespaced_service(APP, self.namespace)
        return str(service.spec.selector[COLOUR])

    def cluster_view(self) -> list[tuple[str, str, str, int]]:
        """Every Deployment: name, revision, image, replicas (to compare before/after)."""
        apps = k8s.AppsV1Api(self.kube.api_client())
        return sorted(
            (
                d.metadata.name,
                d.metadata.annotations.get("deployment.kubernetes.io/revision", ""),
                d.spec.template.spec.containers[0].image,
                d.spec.replicas,
            )
            for d in apps.list_namespaced_deployment(self.namespace).items
        )

    def head(self) -> str:
        return git.Repo(self.remote).commit("main").hexsha

    def log(self) -> list[dict[str, str]]:
        """Trailers of the commits on main, newest first."""
        return [parse_trailers(c.message) for c in git.Repo(self.remote).iter_commits("main")]

    def manifest(self, environment: str) -> str:
        return git.Repo(self.remote).git.show(f"main:{environment}/deployment.yaml")


_DELIVERIES: dict[str, Delivery] = {}


@flow(name="deliver-before-rollback")
async def deliver_flow(token: str) -> tuple[EnvironmentOutcome, ...]:
    return await deliver(_DELIVERIES.pop(token))


@pytest.fixture
def world(kube: KubeCluster, tmp_path: Path) -> Iterator[World]:
    remote = make_bare_repo(tmp_path / "git", "manifests.git")
    files = {}
    for environment in STRATEGIES:
        files[f"{environment}/deployment.yaml"] = deployment_yaml()
        files[f"{environment}/service.yaml"] = SERVICE_YAML
    commit_files(remote, files, "manifests")
    suffix = uuid4().hex[:8]
    config = yaml.safe_load(kube.kubeconfig.read_text())
    KubernetesCredentials(
        cluster_config=KubernetesClusterConfig(
            config=config, context_name=config["current-context"]
        )
    ).save(f"cluster-{suffix}")
    manifests = ManifestsRepository(
        url=remote.as_uri(),
        environments={name: EnvironmentManifests(path=name) for name in STRATEGIES},
    )
    manifests.save(f"manifests-{suffix}")
    with SlackReceiver() as slack:
        SlackNotifier(webhook=SlackWebhook(url=slack.webhook_url)).save(f"slack-{suffix}")
        yield World(
            kube=kube,
            remote=remote,
            manifests=manifests,
            manifests_block=f"manifests-{suffix}",
            cluster_block=f"cluster-{suffix}",
            notifier_block=f"slack-{suffix}",
            slack=slack,
            workspace=tmp_path / "ws",
        )


def report_of(state: State) -> RollbackReport:
    assert state.is_completed(), state.message
    report = state.result()
    assert isinstance(report, RollbackReport)
    return report


# --- rolling ---------------------------------------------------------------------------------


def test_a_rolling_rollback_brings_the_previous_image_back_and_reverts_the_bump(
    world: World,
) -> None:
    world.deploy("staging", ONE)
    bad = world.deploy("staging", TWO)
    assert world.image() == TWO

    state = world.roll_back(requested_by="alice", notifier=world.notifier_block)

    report = report_of(state)
    assert report.status == "rolled-back", report
    assert report.strategy == "rolling"  # observed: no strategy was given
    assert world.image() == ONE
    assert world.deployment().status.ready_replicas == 2
    assert report.before is not None and report.before.images == (TWO,)
    assert report.after is not None and report.after.images == (ONE,)
    assert (report.before.revision, report.after.revision) == (2, 3)  # undo: a new revision
    assert report.seconds is not None and report.rollout_seconds is not None
    # git: the bad bump reverted, naming why and who asked; the manifests say ONE again
    (revert,) = report.reverts
    assert revert.bump == bad.manifests_commit and revert.commit == world.head()
    newest = world.log()[0]
    assert newest["Slipway-Reverts"] == bad.manifests_commit
    assert "requested by alice" in newest["Slipway-Reason"]
    assert "5xx after the release" in newest["Slipway-Reason"]
    assert ONE in world.manifest("staging") and TWO not in world.manifest("staging")
    # the artifact and Slack say what was rolled back, from which image to which
    flow_run_id = state.state_details.flow_run_id
    markdown = artifacts(flow_run_id)[f"{APP}-rollback-staging"].data
    assert f"revision 2 ({TWO})" in markdown and f"revision 3 ({ONE})" in markdown
    assert f"reverted by `{revert.commit[:12]}`" in markdown and "alice" in markdown
    (message,) = [r.body.get("text", "") for r in world.slack.received]
    assert "shop rolled back in staging" in message and TWO in message and ONE in message


def test_running_it_twice_is_harmless(world: World) -> None:
    world.deploy("staging", ONE)
    world.deploy("staging", TWO)
    report_of(world.roll_back())
    cluster, head = world.cluster_view(), world.head()

    again = report_of(world.roll_back(notifier=world.notifier_block))

    assert again.status == "nothing-to-do", again
    assert again.notes[0].startswith("nothing to roll back: commit ")
    assert "already reverted" in again.notes[0]
    assert again.reverts == () and again.after is None
    assert world.cluster_view() == cluster  # no second undo back to the bad release
    assert world.head() == head
    assert world.image() == ONE
    (message,) = [r.body.get("text", "") for r in world.slack.received]
    assert "nothing to roll back" in message


def test_rolling_back_to_a_named_revision(world: World) -> None:
    world.deploy("staging", ONE)
    two = world.deploy("staging", TWO)
    three = world.deploy("staging", THREE)

    report = report_of(world.roll_back(strategy="rolling", to_revision=1))

    assert report.status == "rolled-back", report
    assert world.image() == ONE
    assert report.before is not None and report.before.revision == 3
    assert report.after is not None and report.after.images == (ONE,)
    # git follows: both later bumps reverted, newest first, so the manifests say ONE
    assert [r.bump for r in report.reverts] == [three.manifests_commit, two.manifests_commit]
    assert [t.get("Slipway-Reverts") for t in world.log()[:2]] == [
        two.manifests_commit,
        three.manifests_commit,
    ]
    assert ONE in world.manifest("staging")
    assert TWO not in world.manifest("staging") and THREE not in world.manifest("staging")


def test_a_rollback_whose_rollout_fails_still_reverts_the_bump_and_fails_the_run(
    world: World,
) -> None:
    world.deploy("staging", ONE)
    bad = world.deploy("staging", TWO)
    world.kube.break_image(ONE)  # from now on ONE's pods crash: the undo never completes

    state = world.roll_back(rollout_timeout=1)

    assert state.is_failed()
    report = state.result(raise_on_failure=False)
    assert isinstance(report, RollbackReport) and report.status == "failed"
    assert report.error is not None and "not done after 1 s" in report.error
    assert world.image() == ONE  # the cluster was told to go back ...
    assert [r.bump for r in report.reverts] == [bad.manifests_commit]  # ... and git followed
    assert world.log()[0]["Slipway-Reverts"] == bad.manifests_commit


def test_a_revert_git_refuses_fails_the_run_after_the_cluster_went_back(world: World) -> None:
    world.deploy("staging", ONE)
    bad = world.deploy("staging", TWO)
    # someone edits the same line by hand after the bump: the revert conflicts
    edited = world.manifest("staging").replace(TWO, THREE)
    commit_files(world.remote, {"staging/deployment.yaml": edited}, "hand edit")
    head = world.head()

    state = world.roll_back()

    assert state.is_failed()
    report = state.result(raise_on_failure=False)
    assert isinstance(report, RollbackReport) and report.status == "failed"
    assert report.error and f"revert of {bad.manifests_commit[:12]}" in report.error
    assert "conflicts with later changes" in report.error
    assert world.image() == ONE and world.head() == head  # cluster back, git untouched
    markdown = artifacts(state.state_details.flow_run_id)[f"{APP}-rollback-staging"].data
    assert "failed" in markdown and "conflicts" in markdown


# --- blue-green ------------------------------------------------------------------------------


def test_a_blue_green_rollback_switches_the_selector_back(world: World) -> None:
    world.deploy("production", ONE)
    good = world.colour()
    bad = world.deploy("production", TWO)
    assert world.colour() != good
    assert world.deployment(f"{APP}-{good}").spec.replicas == 0  # scaled down after the switch

    report = report_of(world.roll_back(environment="production"))

    assert report.status == "rolled-back", report
    assert report.strategy == "blue_green"
    assert world.colour() == good
    old = world.deployment(f"{APP}-{good}")
    assert old.spec.template.spec.containers[0].image == ONE
    assert old.status.ready_replicas == 2  # scaled back up before the switch
    assert report.after is not None and report.after.images == (ONE,)
    assert report.before is not None and report.before.images == (TWO,)
    assert [r.bump for r in report.reverts] == [bad.manifests_commit]
    assert ONE in world.manifest("production") and TWO not in world.manifest("production")

    head = world.head()
    again = report_of(world.roll_back(environment="production"))
    assert again.status == "nothing-to-do", again
    assert world.colour() == good and world.head() == head


# --- canary --------------------------------------------------------------------------------


def test_a_canary_caught_mid_steps_is_aborted_and_its_bump_reverted(world: World) -> None:
    world.deploy("canary", ONE)  # a first canary deploy: ONE is the stable
    # build 2 is half way through its steps, as deliver leaves it between two pauses
    bump = bump_image(
        world.manifests, app=APP, environment="canary", image=TWO, source_commit="b" * 40,
        run_id="run-2", build_number=2, workdir=world.workspace / "bump-2",
    )  # fmt: skip
    objects = [yaml.safe_load(deployment_yaml()), yaml.safe_load(SERVICE_YAML)]
    objects[0]["spec"]["template"]["spec"]["containers"][0]["image"] = TWO
    release = Release(APP, "canary", world.namespace, objects, TWO)
    api = world.kube.api_client()
    state = deploy_canary(api, release, CanarySpec.model_validate(CANARY), log=print)
    set_canary_weight(api, state, 50, log=print)

    report = report_of(world.roll_back(environment="canary"))

    assert report.status == "rolled-back", report
    assert report.strategy == "canary"
    assert report.before is not None and "shop-canary at 50 %" in report.before.what
    vs = get_object(api, VIRTUAL_SERVICE_API, "VirtualService", APP, world.namespace)
    assert canary_weight(vs, f"{APP}-canary") == 0
    assert world.deployment(f"{APP}-canary").spec.replicas == 0
    assert world.image() == ONE  # the stable was never touched
    assert [r.bump for r in report.reverts] == [bump.commit_sha]
    assert ONE in world.manifest("canary") and TWO not in world.manifest("canary")


# --- bad input -------------------------------------------------------------------------------


def test_bad_input_fails_clearly_and_changes_nothing(world: World) -> None:
    world.deploy("staging", ONE)
    world.deploy("staging", TWO)
    cluster, head = world.cluster_view(), world.head()

    def fails(expected: type[Exception], match: str, **parameters: Any) -> None:
        state = world.roll_back(**parameters)
        assert state.is_failed(), (parameters, state)
        with pytest.raises(expected, match=match):
            state.result()

    fails(ConfigError, r"'qa' is not in manifests block .* \(it has: canary, production, staging\)",
          environment="qa")  # fmt: skip
    fails(ConfigError, r"has no revision 9; its revisions: 1, 2", to_revision=9)
    fails(ConfigError, r"to_revision is for rolling", to_revision=1, strategy="blue_green")
    fails(ConfigError, r"strategy canary was given, but the cluster shows rolling",
          strategy="canary")  # fmt: skip
    fails(ConfigError, r"no KubernetesCredentials or KubernetesClusterConfig block named 'nope'",
          cluster="nope")  # fmt: skip
    fails(ConfigError, r"ManifestsRepository block 'nope': no such block", manifests="nope")
    fails(ConfigError, r"SlackNotifier block 'nope': no such block", notifier="nope")
    fails(ConfigError, r"needs a reason", reason="   ")
    # names the UI form already refuses (the parameter schema's patterns)
    for parameters in ({"namespace": "Shop_Prod"}, {"app": "shop;rm -rf /"}):
        state = world.roll_back(**parameters)
        assert state.is_failed() and "Validation of flow parameters failed" in str(state.message)

    assert world.cluster_view() == cluster
    assert world.head() == head
    assert world.image() == TWO


def test_a_running_deploy_holds_the_rollback_off(world: World) -> None:
    world.deploy("staging", ONE)
    world.deploy("staging", TWO)
    cluster, head = world.cluster_view(), world.head()

    async def while_a_deploy_runs() -> State:
        limit = slot_name(APP, "staging")
        await ensure_deploy_slot_limit(limit)
        async with concurrency(limit, occupy=1, strict=True):
            return await rollback(  # type: ignore[misc]
                app=APP, environment="staging", namespace=world.namespace,
                cluster=world.cluster_block, manifests=world.manifests_block,
                reason="bad", busy_timeout=1, return_state=True,
            )  # fmt: skip

    state = asyncio.run(while_a_deploy_runs())
    assert state.is_failed()
    with pytest.raises(DeployBusy, match="still holds the slot"):
        state.result()
    assert world.cluster_view() == cluster and world.head() == head


# --- the decision and the input checks, without a cluster ------------------------------------


def bump(sha: str, image: str) -> tuple[str, dict[str, str]]:
    return sha * 40, {"Slipway-App": APP, "Slipway-Environment": "staging", "Slipway-Image": image}


def revert(sha: str, of: str, image: str) -> tuple[str, dict[str, str]]:
    trailers = {"Slipway-Reverts": of * 40, "Slipway-Reverted-Image": image}
    return sha * 40, {"Slipway-App": APP, "Slipway-Environment": "staging", **trailers}


def test_decide_rolls_back_the_newest_bump_where_the_cluster_runs_it() -> None:
    history = [bump("b", TWO), bump("a", ONE)]
    decision = decide(history, frozenset({TWO}), app=APP, environment="staging")
    assert decision.cluster and [s for s, _ in decision.reverts] == ["b" * 40]

    elsewhere = decide(history, frozenset({ONE}), app=APP, environment="staging")
    assert not elsewhere.cluster and [s for s, _ in elsewhere.reverts] == ["b" * 40]
    assert "does not run" in elsewhere.notes[0]

    cluster_only = decide(
        history, frozenset({TWO}), app=APP, environment="staging", revert_manifests=False
    )
    assert cluster_only.cluster and not cluster_only.reverts


def test_decide_after_a_rollback_finishes_a_half_done_one_or_does_nothing() -> None:
    history = [revert("c", "b", TWO), bump("b", TWO), bump("a", ONE)]
    done = decide(history, frozenset({ONE}), app=APP, environment="staging")
    assert not done.cluster and not done.reverts
    assert done.nothing_to_do and "already reverted" in done.nothing_to_do

    half = decide(history, frozenset({TWO}), app=APP, environment="staging")
    assert half.cluster and not half.reverts and "still runs" in half.notes[0]


def test_decide_with_a_revision_reverts_down_to_the_bump_naming_its_image() -> None:
    history = [bump("c", THREE), revert("x", "y", "other"), bump("b", TWO), bump("a", ONE)]
    decision = decide(
        history, frozenset({THREE}), app=APP, environment="staging", revision_images=[ONE]
    )
    assert [s[0] for s, _ in decision.reverts] == ["c", "b"]
    with pytest.raises(ConfigError, match="no live bump of shop in staging names"):
        decide(history, frozenset(), app=APP, environment="staging", revision_images=["x@y"])
    alone = decide(
        history,
        frozenset(),
        app=APP,
        environment="staging",
        revision_images=["x@y"],
        revert_manifests=False,
    )
    assert alone.cluster and not alone.reverts


def test_input_checks_name_the_bad_value() -> None:
    ok = {
        "app": APP,
        "environment": "staging",
        "namespace": "shop",
        "strategy": None,
        "to_revision": None,
        "reason": " why ",
        "requested_by": " alice ",
    }
    assert check_inputs(**ok) == ("why", "alice")
    with pytest.raises(UnsafeInputError, match="invalid namespace '../x'"):
        check_inputs(**{**ok, "namespace": "../x"})
    with pytest.raises(UnsafeInputError, match="invalid requested_by"):
        check_inputs(**{**ok, "requested_by": "alice\nSlipway-Reverts: forged"})
    with pytest.raises(ConfigError, match="a canary rollback takes no revision"):
        check_inputs(**{**ok, "to_revision": 2, "strategy": "canary"})
    with pytest.raises(ConfigError, match="revision number"):
        check_inputs(**{**ok, "to_revision": 0})
