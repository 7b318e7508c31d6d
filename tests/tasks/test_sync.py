"""GitOps sync against the ``kube`` fixture (the stand-in, or a real cluster) and real git.

The manifests live in a bare git repository; every change to desired state is a
commit, every hand edit goes through the official client as ``kubectl`` would send
it, and the sync reads both back the way it does in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from slipway.application_spec import Application
from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.exceptions import ConfigError, ManifestRenderError
from slipway.redact import Redactor
from slipway.tasks.sync import (
    SYNC_FIELD_MANAGER,
    TRACKING_ANNOTATION,
    TRACKING_LABEL,
    SyncResult,
    plan_environment,
    repository_for,
    sync_application,
    tracking_id,
    wait_for_health,
)
from slipway.tasks.sync_report import sync_markdown
from tests.servers.example_manifests import app_deployment, app_service
from tests.servers.git_http import commit_files, make_bare_repo
from tests.servers.kube_api import RUNNABLE_IMAGES, KubeCluster

IMAGE, OTHER_IMAGE = RUNNABLE_IMAGES
APP = "shop"


def config_map(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def manifests(replicas: int = 3, image: str = IMAGE, deadline: int = 60) -> dict[str, str]:
    deployment = app_deployment(APP, image, replicas)
    deployment["spec"]["progressDeadlineSeconds"] = deadline
    return {
        "app/deployment.yaml": yaml.safe_dump(deployment),
        "app/service.yaml": yaml.safe_dump(app_service(APP)),
        "app/config.yaml": yaml.safe_dump(config_map(f"{APP}-config", greeting="hello")),
    }


@dataclass
class World:
    kube: KubeCluster
    remote: Path
    workdir: Path

    def __post_init__(self) -> None:
        self.api = self.kube.api_client()
        self.lines: list[str] = []

    def app(self, namespace: str | None = None, **policy: Any) -> Application:
        return Application.model_validate(
            {
                "name": APP,
                "repo": self.remote.as_uri(),
                "path": "app",
                "destination": {"cluster": "test", "namespace": namespace or self.kube.namespace},
                "sync_policy": {"automated": True, **policy},
            }
        )

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        return commit_files(self.remote, files, message)

    def sync(self, app: Application, **options: Any) -> SyncResult:
        return sync_application(
            self.api, app, repository_for(app), workdir=self.workdir, log=self.lines.append,
            **options,
        )  # fmt: skip

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def deployment(self) -> Any:
        return self.apps.read_namespaced_deployment(APP, self.kube.namespace)

    def config_maps(self) -> set[str]:
        items = self.core.list_namespaced_config_map(self.kube.namespace).items
        return {cm.metadata.name for cm in items if cm.metadata.name != "kube-root-ca.crt"}


@pytest.fixture
def world(kube: KubeCluster, tmp_path: Path) -> World:
    remote = make_bare_repo(tmp_path / "git", "manifests.git")
    commit_files(remote, manifests(), "manifests")
    return World(kube, remote, tmp_path / "clone")


def by_name(result: SyncResult) -> dict[str, Any]:
    return {o.ref.name if o.ref.kind != "Service" else "svc": o for o in result.objects}


# --- create, no-op, server defaults ---------------------------------------------------------


def test_first_sync_creates_everything_and_marks_it_as_the_apps(world: World) -> None:
    result = world.sync(world.app())

    assert result.ok and result.sync_status == "Synced"
    assert {(o.ref.kind, o.reason, o.action) for o in result.objects} == {
        ("ConfigMap", "missing", "created"),
        ("Service", "missing", "created"),
        ("Deployment", "missing", "created"),
    }
    assert len(result.revision) == 40 and result.target_revision == "HEAD"
    dep = world.deployment()
    assert dep.spec.replicas == 3
    assert dep.metadata.labels[TRACKING_LABEL] == APP
    ref = next(o.ref for o in result.objects if o.ref.kind == "Deployment")
    assert dep.metadata.annotations[TRACKING_ANNOTATION] == tracking_id(APP, ref)
    assert (
        dep.metadata.annotations[TRACKING_ANNOTATION]
        == f"shop:apps/Deployment:{ref.namespace}/shop"
    )
    assert {m.manager for m in dep.metadata.managed_fields} >= {SYNC_FIELD_MANAGER}
    # the artifact's text: verdict first, then a diff per object (all additions)
    text = sync_markdown(result)
    assert "| sync status | **Synced** |" in text
    assert "+  replicas: 3" in text


def test_a_second_sync_with_nothing_changed_is_synced_and_writes_nothing(world: World) -> None:
    app = world.app()
    world.sync(app)
    world.kube.advance(5)  # controllers fill in status, defaults, endpoints
    before = world.deployment().metadata.resource_version
    requests_before = len(world.kube.standin.requests) if world.kube.standin else 0

    result = world.sync(app)

    assert result.sync_status == "Synced" and result.ok
    assert not result.out_of_sync and not result.applied
    assert all(o.action == "none" for o in result.objects)
    assert world.deployment().metadata.resource_version == before
    if world.kube.standin is not None:  # nothing but reads reached the API server
        during = world.kube.standin.requests[requests_before:]
        assert during and not [r for r in during if r[0] in ("PATCH", "POST", "PUT", "DELETE")]


def test_server_filled_fields_are_not_drift(world: World) -> None:
    """Defaults (strategy, terminationMessagePath, clusterIP, protocol), status,
    resourceVersion, managedFields and the controllers' annotations are all on the live
    objects and none of them is in git."""
    app = world.app()
    world.sync(app)
    world.kube.wait_for(
        lambda: (world.deployment().status.available_replicas or 0) == 3,
        message="three available replicas",
    )
    dep = world.deployment()
    assert dep.spec.strategy.rolling_update is not None  # a default git never set
    assert dep.metadata.annotations.get("deployment.kubernetes.io/revision")
    svc = world.core.read_namespaced_service(APP, world.kube.namespace)
    assert svc.spec.cluster_ip and svc.spec.ports[0].protocol == "TCP"

    result = world.sync(app)

    assert result.sync_status == "Synced" and result.health == "Healthy"
    assert {o.health.status for o in result.objects} == {"Healthy"}
    assert "endpoint" in by_name(result)["svc"].health.message


# --- drift ------------------------------------------------------------------------------------


def edit_by_hand(world: World) -> None:
    """What a person does with kubectl: scale 3 -> 5, then set another image."""
    ns = world.kube.namespace
    world.apps.patch_namespaced_deployment_scale(APP, ns, {"spec": {"replicas": 5}})
    patch = {"spec": {"template": {"spec": {"containers": [{"name": APP, "image": OTHER_IMAGE}]}}}}
    world.apps.patch_namespaced_deployment(APP, ns, patch)


def test_hand_edits_are_drift_with_a_diff_naming_the_fields(world: World) -> None:
    app = world.app(self_heal=False)
    world.sync(app)
    edit_by_hand(world)

    result = world.sync(app)

    assert result.sync_status == "OutOfSync"
    (drifted,) = result.drift
    assert drifted.ref.kind == "Deployment" and drifted.reason == "drift"
    assert drifted.diff.fields == (
        "spec.replicas",
        "spec.template.spec.containers[name=shop].image",
    )
    assert "-  replicas: 5\n+  replicas: 3\n" in drifted.diff.text
    assert f"-      - image: {OTHER_IMAGE}\n+      - image: {IMAGE}\n" in drifted.diff.text
    # reported, not reverted: self_heal is off
    assert drifted.action == "skipped" and "self_heal is off" in drifted.note
    assert result.unrepaired_drift == (drifted,) and not result.reverted
    dep = world.deployment()
    assert dep.spec.replicas == 5 and dep.spec.template.spec.containers[0].image == OTHER_IMAGE
    text = sync_markdown(result)
    assert "drift not reverted | 1" in text and "`spec.replicas`" in text


def test_self_heal_puts_hand_edits_back_and_says_so(world: World) -> None:
    app = world.app(self_heal=True)
    world.sync(app)
    edit_by_hand(world)

    result = world.sync(app)

    (reverted,) = result.reverted
    assert reverted.ref.kind == "Deployment" and reverted.reason == "drift"
    assert "spec.replicas" in reverted.diff.fields
    assert result.sync_status == "Synced" and reverted.status == "Synced"
    dep = world.deployment()
    assert dep.spec.replicas == 3 and dep.spec.template.spec.containers[0].image == IMAGE
    assert "reverted (drift) | 1" in sync_markdown(result)
    # and the next run finds nothing
    assert not world.sync(app).out_of_sync


def test_a_change_in_git_is_applied_without_self_heal(world: World) -> None:
    app = world.app(self_heal=False)
    world.sync(app)
    world.commit(manifests(replicas=4), "scale to 4")

    result = world.sync(app)

    (changed,) = result.out_of_sync
    assert changed.reason == "changed in git" and changed.action == "updated"
    assert changed.diff.fields == ("spec.replicas",)
    assert world.deployment().spec.replicas == 4 and result.sync_status == "Synced"


def test_without_automated_a_run_only_reports_and_a_manual_sync_applies(world: World) -> None:
    app = world.app(automated=False)

    reported = world.sync(app)
    assert reported.sync_status == "OutOfSync" and not reported.applied
    assert {o.note for o in reported.objects} == {
        "automated sync is off: start a manual sync to apply"
    }
    assert world.config_maps() == set()

    edit_free = world.sync(app, manual=True)
    assert edit_free.sync_status == "Synced" and len(edit_free.applied) == 3
    edit_by_hand(world)
    manual = world.sync(app, manual=True)  # a person's sync reverts drift too
    assert [o.ref.kind for o in manual.reverted] == ["Deployment"]


def test_dry_run_changes_nothing(world: World) -> None:
    result = world.sync(world.app(prune=True, self_heal=True), dry_run=True)

    assert result.dry_run and result.sync_status == "OutOfSync" and result.health == "Missing"
    assert {o.action for o in result.objects} == {"skipped"}
    assert world.config_maps() == set()


# --- prune ------------------------------------------------------------------------------------


def test_prune_removes_what_git_dropped_and_only_that(world: World) -> None:
    app = world.app(prune=True)
    world.sync(app)
    world.core.create_namespaced_config_map(  # someone else's, in the same namespace
        world.kube.namespace,
        {"metadata": {"name": "not-ours", "labels": {TRACKING_LABEL: APP}}, "data": {"a": "1"}},
    )
    world.commit({"app/config.yaml": None}, "drop the config map")

    result = world.sync(app)

    (pruned,) = result.pruned
    assert pruned.ref.name == f"{APP}-config" and pruned.reason == "not in git"
    assert world.config_maps() == {"not-ours"}  # labelled like ours, but no tracking id
    # the Deployment's ReplicaSets carry its tracking annotation (copied by the
    # controller) and the Service's Endpoints its label: neither is the app's
    assert world.apps.list_namespaced_replica_set(world.kube.namespace).items
    assert result.sync_status == "Synced"


def test_without_prune_a_dropped_object_is_reported_not_deleted(world: World) -> None:
    app = world.app(prune=False)
    world.sync(app)
    world.commit({"app/config.yaml": None}, "drop the config map")

    result = world.sync(app)

    (extra,) = [o for o in result.objects if o.reason == "not in git"]
    assert extra.action == "skipped" and extra.note == "prune is off"
    assert result.sync_status == "OutOfSync"
    assert world.config_maps() == {f"{APP}-config"}


def test_an_empty_render_never_prunes_without_allow_empty(world: World) -> None:
    app = world.app(prune=True)
    world.sync(app)
    emptied = {path: None for path in manifests()} | {"app/README.md": "moved elsewhere\n"}
    world.commit(emptied, "empty the folder")

    refused = world.sync(app)

    assert refused.error and "allow_empty is off" in refused.error
    assert not refused.pruned and world.config_maps() == {f"{APP}-config"}
    assert {o.note for o in refused.objects} == {
        "the manifests render nothing and allow_empty is off"
    }

    allowed = world.sync(world.app(prune=True, allow_empty=True))
    assert allowed.ok and len(allowed.pruned) == 3 and world.config_maps() == set()


def test_a_missing_folder_fails_the_render_and_deletes_nothing(world: World) -> None:
    app = world.app(prune=True, allow_empty=True)
    world.sync(app)
    world.commit({path: None for path in manifests()}, "remove the app")

    with pytest.raises(ManifestRenderError, match="does not exist"):
        world.sync(app)
    assert world.config_maps() == {f"{APP}-config"}


# --- health -----------------------------------------------------------------------------------


def test_a_broken_image_is_progressing_then_degraded(world: World) -> None:
    world.commit(manifests(image=world.kube.broken_image(APP), deadline=3), "broken image")
    app = world.app()

    result = world.sync(app)
    assert result.sync_status == "Synced"  # git is applied; it just does not run
    assert result.health in ("Progressing", "Missing")

    world.kube.advance(5)  # past the 3 s progress deadline
    healthy_or_not = wait_for_health(
        world.api, result, timeout=20, poll=0.1, log=world.lines.append
    )

    assert healthy_or_not.health == "Degraded"
    dep = by_name(healthy_or_not)[APP]
    assert dep.health.status == "Degraded" and "ProgressDeadlineExceeded" in dep.health.message


# --- retries ----------------------------------------------------------------------------------


def test_a_failed_apply_is_retried_with_argo_cds_backoff(world: World) -> None:
    """The destination namespace does not exist yet (no create_namespace): the apply
    fails until someone creates it; the waits are Argo CD's 5 s, 10 s, ... (the test's
    sleep creates the namespace instead of waiting)."""
    later = f"{world.kube.namespace}-later"
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            world.core.create_namespace({"metadata": {"name": later}})

    try:
        result = world.sync(world.app(namespace=later), sleep=sleep)
        assert result.ok and result.attempts == 3 and waits == [5.0, 10.0]
        assert any("retrying in 5 s" in line for line in world.lines)
        assert result.sync_status == "Synced"
    finally:
        world.core.delete_namespace(later)


def test_retries_give_up_after_the_limit(world: World) -> None:
    waits: list[float] = []
    spec = world.app(namespace=f"{world.kube.namespace}-never").model_dump()
    spec["retry"] = {"limit": 3, "backoff": {"duration": "2s", "factor": 3, "max_duration": "5s"}}
    app = Application.model_validate(spec)

    result = world.sync(app, sleep=waits.append)

    assert waits == [2.0, 5.0, 5.0]  # 2, 6 -> 5, 18 -> 5
    assert result.attempts == 4 and not result.ok
    assert "not found" in (result.error or "")


# --- secrets and the plan for an approval -----------------------------------------------------


def test_a_secret_is_compared_but_never_shown(world: World) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "stringData": {"password": "hunter2-in-git"},
    }
    world.commit({"app/secret.yaml": yaml.safe_dump(secret)}, "a secret")
    app = world.app(self_heal=False)
    first = world.sync(app)
    assert "hunter2" not in sync_markdown(first)
    world.core.patch_namespaced_secret(
        "creds", world.kube.namespace, {"stringData": {"password": "changed-by-hand"}}
    )

    result = world.sync(app)

    (drifted,) = result.drift
    assert drifted.ref.kind == "Secret" and drifted.diff.fields == ("data.password",)
    text = sync_markdown(result)
    assert "hunter2" not in text and "changed-by-hand" not in text
    assert "aHVudGVyMi" not in text  # nor their base64
    assert "-  password: '******** (live)'\n+  password: '******** (git)'" in text


def test_plan_environment_shows_what_a_bump_will_change(world: World) -> None:
    block = ManifestsRepository(
        url=world.remote.as_uri(), environments={"prod": EnvironmentManifests(path="app")}
    )
    image = f"registry.example/shop@sha256:{'a' * 64}"
    commit_files(world.remote, manifests(image="registry.example/shop:1.0"), "pin the repository")
    world.sync(world.app())

    markdown, changes = plan_environment(
        world.api, block, "prod", app=APP, namespace=world.kube.namespace, image=image,
        workdir=world.workdir.with_name("plan"), redactor=Redactor(),
    )  # fmt: skip

    (change,) = changes
    assert change.ref.kind == "Deployment"
    assert change.diff.fields == ("spec.template.spec.containers[name=shop].image",)
    assert f"+      - image: {image}" in markdown and "1 of 3 object changes" in markdown
    assert world.deployment().spec.template.spec.containers[0].image == "registry.example/shop:1.0"

    as_is, none = plan_environment(
        world.api, block, "prod", app=APP, namespace=world.kube.namespace,
        workdir=world.workdir.with_name("plan"),
    )  # fmt: skip
    assert none == () and "Nothing" in as_is
    with pytest.raises(ConfigError, match="staging"):
        plan_environment(
            world.api, block, "staging", app=APP, namespace=world.kube.namespace,
            workdir=world.workdir.with_name("plan"),
        )  # fmt: skip
