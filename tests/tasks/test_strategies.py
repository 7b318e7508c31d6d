"""Rolling, blue-green and canary deploys and their rollbacks, against the ``kube`` cluster.

Every test talks to the cluster through the real kubernetes client (the stand-in, or
a real cluster given with ``--kubeconfig``); the images are ones a real cluster can
pull and run, and a broken one never becomes ready on either.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from slipway.exceptions import DeployError, RolloutFailed, RolloutTimeout
from slipway.tasks.kube_apply import get_object
from slipway.tasks.strategies import (
    DeployState,
    Release,
    abort_canary,
    deploy_blue_green,
    deploy_canary,
    deploy_rolling,
    finish_blue_green,
    observe_state,
    promote_blue_green,
    promote_canary,
    rollback,
    rollback_blue_green,
    rollback_rolling,
    run_canary_steps,
    set_canary_weight,
    state_of,
)
from slipway.tasks.strategy_objects import COLOUR_LABEL, canary_weight
from slipway.tasks.strategy_spec import (
    BlueGreenSpec,
    CanarySpec,
    CanaryStepSpec,
    RollingSpec,
    StrategySpec,
)
from tests.servers.kube_api import RUNNABLE_IMAGES, KubeCluster

OLD, NEW = RUNNABLE_IMAGES
APP = {"app.kubernetes.io/name": "web"}
TIMEOUT = 60.0  # seconds a rollout may take (pods start in a tenth of a second here)
VS = "networking.istio.io/v1beta1"
STABLE = {"slipway.dev/track": "stable"}


def manifests(image: str, *, replicas: int = 2) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web-settings"},
            "data": {"GREETING": "hello"},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": dict(APP)},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": dict(APP)},
                "template": {
                    "metadata": {"labels": dict(APP)},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": image,
                                "ports": [{"name": "http", "containerPort": 8080}],
                            }
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "labels": dict(APP)},
            "spec": {
                "selector": dict(APP),
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
    ]


def release(kube: KubeCluster, image: str, *, replicas: int = 2) -> Release:
    return Release(
        app="web",
        environment="test",
        namespace=kube.namespace,
        objects=manifests(image, replicas=replicas),
        image=image,
        annotations={"slipway.dev/image": image, "kubernetes.io/change-cause": f"deploy {image}"},
    )


class Cluster:
    """Read-only views of the test namespace for assertions."""

    def __init__(self, kube: KubeCluster) -> None:
        self.kube = kube
        self.api = kube.api_client()
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    def deployment(self, name: str) -> Any:
        return self.apps.read_namespaced_deployment(name, self.kube.namespace)

    def image(self, name: str) -> str:
        return str(self.deployment(name).spec.template.spec.containers[0].image)

    def ready(self, name: str) -> int:
        return int(self.deployment(name).status.ready_replicas or 0)

    def selector(self, name: str) -> dict[str, str]:
        return dict(self.core.read_namespaced_service(name, self.kube.namespace).spec.selector)

    def pods(self, **labels: str) -> list[Any]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        return self.core.list_namespaced_pod(self.kube.namespace, label_selector=selector).items

    def virtual_service(self, name: str = "web") -> dict[str, Any] | None:
        return get_object(self.api, VS, "VirtualService", name, self.kube.namespace)


@pytest.fixture
def cluster(kube: KubeCluster) -> Cluster:
    return Cluster(kube)


# --- rolling -------------------------------------------------------------------------------


def test_rolling_takes_surge_and_unavailability_from_the_spec(
    kube: KubeCluster, cluster: Cluster
) -> None:
    spec = RollingSpec(max_surge=1, max_unavailable=0)

    first = deploy_rolling(cluster.api, release(kube, OLD), spec, timeout=TIMEOUT, log=cluster.log)

    assert first.kind == "rolling" and first.previous_revision is None
    assert first.release_service is None
    live = cluster.deployment("web")
    assert live.spec.strategy.type == "RollingUpdate"
    assert live.spec.strategy.rolling_update.max_surge == 1
    assert live.spec.strategy.rolling_update.max_unavailable == 0
    assert live.metadata.annotations["slipway.dev/image"] == OLD
    assert cluster.ready("web") == 2
    assert cluster.core.read_namespaced_config_map("web-settings", kube.namespace).data == {
        "GREETING": "hello"
    }
    with pytest.raises(DeployError, match="nothing to roll back to"):
        rollback_rolling(cluster.api, first, log=cluster.log)

    second = deploy_rolling(
        cluster.api, release(kube, NEW), RollingSpec(max_surge="50%"), timeout=TIMEOUT,
        log=cluster.log,
    )  # fmt: skip
    assert cluster.deployment("web").spec.strategy.rolling_update.max_surge == "50%"
    assert second.previous_revision == first.detail["revision"] == 1
    assert second.detail["revision"] == 2
    assert cluster.image("web") == NEW


def test_rolling_rollback_undoes_to_the_previous_image(kube: KubeCluster, cluster: Cluster) -> None:
    deploy_rolling(cluster.api, release(kube, OLD), RollingSpec(), timeout=TIMEOUT, log=cluster.log)
    state = deploy_rolling(
        cluster.api, release(kube, NEW), RollingSpec(), timeout=TIMEOUT, log=cluster.log
    )
    assert cluster.image("web") == NEW

    seconds = rollback(cluster.api, state, log=cluster.log)

    assert seconds < 5
    assert cluster.image("web") == OLD
    kube.wait_for(lambda: cluster.deployment("web").status.updated_replicas == 2
                  and cluster.ready("web") == 2, message="the rollback rollout")  # fmt: skip
    assert cluster.deployment("web").metadata.annotations["slipway.dev/image"] == OLD
    assert any("rolled back to revision 1" in line for line in cluster.lines)


def test_a_failed_rolling_update_carries_its_state_for_the_rollback(
    kube: KubeCluster, cluster: Cluster
) -> None:
    deploy_rolling(cluster.api, release(kube, OLD), RollingSpec(), timeout=TIMEOUT, log=cluster.log)
    broken = kube.broken_image("web")

    with pytest.raises((RolloutFailed, RolloutTimeout)) as failure:
        deploy_rolling(cluster.api, release(kube, broken), RollingSpec(), timeout=2,
                       log=cluster.log)  # fmt: skip

    state = state_of(failure.value)
    assert state is not None and state.previous_revision == 1
    assert cluster.image("web") == broken
    rollback(cluster.api, state, log=cluster.log)
    assert cluster.image("web") == OLD
    assert state_of(ValueError("unrelated")) is None


# --- blue-green ----------------------------------------------------------------------------


def _blue_green(kube: KubeCluster, cluster: Cluster, image: str, **spec: Any) -> DeployState:
    return deploy_blue_green(
        cluster.api, release(kube, image), BlueGreenSpec(**spec), timeout=TIMEOUT,
        log=cluster.log,
    )  # fmt: skip


def test_blue_green_first_deploy_serves_blue_at_once(kube: KubeCluster, cluster: Cluster) -> None:
    state = _blue_green(kube, cluster, OLD)

    assert (state.active_colour, state.idle_colour) == (None, "blue")
    assert state.service == "web" and state.preview_service == "web-preview"
    assert state.release_service == "web-preview"
    assert cluster.ready("web-blue") == 2
    assert cluster.selector("web") == {**APP, COLOUR_LABEL: "blue"}
    assert cluster.selector("web-preview") == {**APP, COLOUR_LABEL: "blue"}
    assert len(cluster.pods(**{COLOUR_LABEL: "blue"})) == 2
    names = [d.metadata.name for d in cluster.apps.list_namespaced_deployment(kube.namespace).items]
    assert sorted(names) == ["web-blue"]  # the manifests' "web" runs only as a colour
    promote_blue_green(cluster.api, state, log=cluster.log)  # nothing to switch: no-op
    assert cluster.selector("web")[COLOUR_LABEL] == "blue"
    with pytest.raises(DeployError, match="nothing to switch back to"):
        rollback_blue_green(cluster.api, state, log=cluster.log)
    finish_blue_green(cluster.api, state, log=cluster.log, sleep=pytest.fail)
    assert cluster.ready("web-blue") == 2


def test_blue_green_second_deploy_goes_to_the_idle_colour_until_promoted(
    kube: KubeCluster, cluster: Cluster
) -> None:
    _blue_green(kube, cluster, OLD)

    state = _blue_green(kube, cluster, NEW, scale_down_delay_seconds=7)

    assert (state.active_colour, state.idle_colour) == ("blue", "green")
    assert cluster.image("web-green") == NEW and cluster.ready("web-green") == 2
    assert cluster.selector("web-preview")[COLOUR_LABEL] == "green"
    assert cluster.selector("web")[COLOUR_LABEL] == "blue"  # untouched until promoted
    assert cluster.image("web-blue") == OLD and cluster.ready("web-blue") == 2
    assert cluster.deployment("web-green").metadata.annotations["slipway.dev/image"] == NEW

    promote_blue_green(cluster.api, state, log=cluster.log)
    assert cluster.selector("web") == {**APP, COLOUR_LABEL: "green"}
    promote_blue_green(cluster.api, state, log=cluster.log)  # again: no change
    assert cluster.selector("web")[COLOUR_LABEL] == "green"

    slept: list[float] = []
    finish_blue_green(cluster.api, state, log=cluster.log, sleep=slept.append)
    assert slept == [7]
    assert cluster.deployment("web-blue").spec.replicas == 0
    kube.wait_for(lambda: not cluster.pods(**{COLOUR_LABEL: "blue"}), message="blue scaled down")
    assert cluster.ready("web-green") == 2

    third = _blue_green(kube, cluster, OLD)  # the next release goes back to blue
    assert (third.active_colour, third.idle_colour) == ("green", "blue")
    assert cluster.ready("web-blue") == 2 and cluster.selector("web")[COLOUR_LABEL] == "green"


def test_blue_green_rollback_switches_the_selector_back_in_seconds(
    kube: KubeCluster, cluster: Cluster
) -> None:
    _blue_green(kube, cluster, OLD)
    state = _blue_green(kube, cluster, NEW)
    promote_blue_green(cluster.api, state, log=cluster.log)
    assert cluster.selector("web")[COLOUR_LABEL] == "green"

    seconds = rollback(cluster.api, state, log=cluster.log)

    assert 0 < seconds < 5
    assert cluster.selector("web") == {**APP, COLOUR_LABEL: "blue"}
    assert cluster.ready("web-blue") == 2  # the old colour never stopped
    assert cluster.image("web-blue") == OLD
    # After the rollback the old colour is not scaled down by a late finish.
    finish_blue_green(cluster.api, state, log=cluster.log, sleep=lambda _: None)
    assert cluster.deployment("web-blue").spec.replicas == 2


def test_blue_green_rollback_after_the_scale_down_brings_the_old_colour_back(
    kube: KubeCluster, cluster: Cluster
) -> None:
    _blue_green(kube, cluster, OLD)
    state = _blue_green(kube, cluster, NEW, scale_down_delay_seconds=0)
    promote_blue_green(cluster.api, state, log=cluster.log)
    finish_blue_green(cluster.api, state, log=cluster.log)
    assert cluster.deployment("web-blue").spec.replicas == 0

    rollback_blue_green(cluster.api, state, timeout=TIMEOUT, log=cluster.log)

    assert cluster.selector("web")[COLOUR_LABEL] == "blue"
    assert cluster.ready("web-blue") == 2


def test_a_broken_blue_green_release_never_takes_traffic(
    kube: KubeCluster, cluster: Cluster
) -> None:
    _blue_green(kube, cluster, OLD)
    broken = kube.broken_image("web")

    with pytest.raises((RolloutFailed, RolloutTimeout)) as failure:
        deploy_blue_green(cluster.api, release(kube, broken), BlueGreenSpec(), timeout=2,
                          log=cluster.log)  # fmt: skip

    state = state_of(failure.value)
    assert state is not None and state.idle_colour == "green"
    assert cluster.selector("web")[COLOUR_LABEL] == "blue"
    rollback(cluster.api, state, log=cluster.log)  # already on blue: a no-op
    assert cluster.selector("web")[COLOUR_LABEL] == "blue"


# --- canary --------------------------------------------------------------------------------

STEPS = CanarySpec(
    steps=[CanaryStepSpec(weight=10), CanaryStepSpec(weight=50), CanaryStepSpec(weight=100)]
)


def _canary(kube: KubeCluster, cluster: Cluster, image: str, spec: CanarySpec = STEPS) -> Any:
    kube.require_resource(VS, "VirtualService")
    return deploy_canary(
        cluster.api, release(kube, image, replicas=4), spec, timeout=TIMEOUT, log=cluster.log
    )


def _weights(cluster: Cluster) -> list[tuple[str, int]]:
    vs = cluster.virtual_service()
    assert vs is not None
    routes = vs["spec"]["http"]
    return [(d["destination"]["host"], d["weight"]) for d in routes[1]["route"]]


def test_canary_first_deploy_becomes_the_stable(kube: KubeCluster, cluster: Cluster) -> None:
    state = _canary(kube, cluster, OLD)

    assert state.detail["first_deploy"] is True and state.previous_revision is None
    assert state.release_service == "web-stable"  # the canary has no pods yet
    assert cluster.image("web") == OLD and cluster.ready("web") == 4
    assert cluster.deployment("web-canary").spec.replicas == 0
    assert cluster.selector("web-stable") == {**APP, "slipway.dev/track": "stable"}
    assert cluster.selector("web-canary") == {**APP, "slipway.dev/track": "canary"}
    assert _weights(cluster) == [("web-stable", 100), ("web-canary", 0)]

    asked: list[int] = []
    assert run_canary_steps(
        cluster.api, state, STEPS, analyse=lambda w: bool(asked.append(w)), log=cluster.log
    )
    assert asked == []
    with pytest.raises(DeployError, match="first deploy"):
        rollback(cluster.api, state, log=cluster.log)


def test_canary_steps_move_weights_and_replicas_then_promote(
    kube: KubeCluster, cluster: Cluster
) -> None:
    _canary(kube, cluster, OLD)
    state = _canary(kube, cluster, NEW)

    assert state.detail["first_deploy"] is False and state.previous_revision == 1
    assert state.release_service == "web-canary"
    assert cluster.image("web-canary") == NEW and cluster.ready("web-canary") == 1
    assert cluster.image("web") == OLD
    vs = cluster.virtual_service()
    assert vs is not None and vs["spec"]["hosts"] == ["web"]
    header = vs["spec"]["http"][0]
    assert header["match"] == [{"headers": {"x-canary": {"exact": "always"}}}]
    assert header["route"][0]["destination"]["host"] == "web-canary"
    assert _weights(cluster) == [("web-stable", 100), ("web-canary", 0)]

    seen: list[tuple[int, list[tuple[str, int]], int, int]] = []

    def analyse(weight: int) -> bool:
        seen.append((weight, _weights(cluster), cluster.ready("web-canary"), cluster.ready("web")))
        return True

    slept: list[float] = []
    spec = CanarySpec(steps=[CanaryStepSpec(weight=10, pause_seconds=3),
                             CanaryStepSpec(weight=50, analysis=False),
                             CanaryStepSpec(weight=100)])  # fmt: skip
    assert run_canary_steps(cluster.api, state, spec, analyse=analyse, log=cluster.log,
                            sleep=slept.append)  # fmt: skip
    assert slept == [3]
    assert seen == [
        (10, [("web-stable", 90), ("web-canary", 10)], 1, 4),
        (100, [("web-stable", 0), ("web-canary", 100)], 4, 4),
    ]
    assert state.canary_weight == 100

    promote_canary(cluster.api, state, timeout=TIMEOUT, log=cluster.log)

    assert cluster.image("web") == NEW and cluster.ready("web") == 4
    assert cluster.deployment("web").metadata.annotations["slipway.dev/image"] == NEW
    assert _weights(cluster) == [("web-stable", 100), ("web-canary", 0)]
    assert cluster.deployment("web-canary").spec.replicas == 0
    assert state.canary_weight == 0
    kube.wait_for(
        lambda: {p.spec.containers[0].image for p in cluster.pods(**STABLE)} == {NEW},
        message="only new stable pods",
    )

    # A promoted canary rolls back by undoing the stable Deployment.
    rollback(cluster.api, state, log=cluster.log)
    assert cluster.image("web") == OLD


def test_a_failed_analysis_aborts_the_canary(kube: KubeCluster, cluster: Cluster) -> None:
    _canary(kube, cluster, OLD)
    state = _canary(kube, cluster, NEW)

    answers = iter([True, False])
    assert not run_canary_steps(
        cluster.api, state, STEPS, analyse=lambda _: next(answers), log=cluster.log
    )

    assert _weights(cluster) == [("web-stable", 100), ("web-canary", 0)]
    assert cluster.deployment("web-canary").spec.replicas == 0
    assert cluster.image("web") == OLD and cluster.ready("web") == 4
    assert state.detail["aborted"] is True and state.canary_weight == 0
    assert any("analysis failed at 50 %" in line for line in cluster.lines)


def test_canary_abort_and_manual_weights(kube: KubeCluster, cluster: Cluster) -> None:
    _canary(kube, cluster, OLD)
    state = _canary(kube, cluster, NEW)
    set_canary_weight(cluster.api, state, 30, log=cluster.log)
    assert _weights(cluster) == [("web-stable", 70), ("web-canary", 30)]
    assert cluster.ready("web-canary") == 2
    set_canary_weight(cluster.api, state, 20, log=cluster.log)  # down: weights first
    assert cluster.deployment("web-canary").spec.replicas == 1
    assert canary_weight(cluster.virtual_service(), "web-canary") == 20

    seconds = abort_canary(cluster.api, state, log=cluster.log)

    assert 0 < seconds < 5
    assert _weights(cluster) == [("web-stable", 100), ("web-canary", 0)]
    assert cluster.deployment("web-canary").spec.replicas == 0
    assert rollback(cluster.api, state, log=cluster.log) < 5  # aborting again is harmless
    with pytest.raises(ValueError, match="0-100"):
        set_canary_weight(cluster.api, state, 120, log=cluster.log)


def test_a_broken_canary_never_takes_traffic_and_aborts(
    kube: KubeCluster, cluster: Cluster
) -> None:
    _canary(kube, cluster, OLD)
    broken = kube.broken_image("web")

    with pytest.raises((RolloutFailed, RolloutTimeout)) as failure:
        deploy_canary(cluster.api, release(kube, broken, replicas=4), STEPS, timeout=2,
                      log=cluster.log)  # fmt: skip

    state = state_of(failure.value)
    assert state is not None and state.canary_weight == 0
    assert _weights(cluster) == [("web-stable", 100), ("web-canary", 0)]
    rollback(cluster.api, state, log=cluster.log)
    assert cluster.deployment("web-canary").spec.replicas == 0
    assert cluster.image("web") == OLD and cluster.ready("web") == 4


# --- switching strategies, and rollbacks a person starts -----------------------------------


def test_blue_green_after_rolling_keeps_the_old_pods_serving_until_promoted(
    kube: KubeCluster, cluster: Cluster
) -> None:
    deploy_rolling(cluster.api, release(kube, OLD), RollingSpec(), timeout=TIMEOUT, log=cluster.log)

    state = _blue_green(kube, cluster, NEW)

    assert state.active_colour is None and state.idle_colour == "blue"
    assert cluster.selector("web") == APP  # still the rolling Deployment's pods
    assert any("deployment/web from before blue-green is left running" in line
               for line in cluster.lines)  # fmt: skip
    promote_blue_green(cluster.api, state, log=cluster.log)
    assert cluster.selector("web") == {**APP, COLOUR_LABEL: "blue"}
    rollback(cluster.api, state, log=cluster.log)
    assert cluster.selector("web") == APP


def test_canary_after_rolling_labels_the_stable_pods(kube: KubeCluster, cluster: Cluster) -> None:
    deploy_rolling(cluster.api, release(kube, OLD, replicas=4), RollingSpec(), timeout=TIMEOUT,
                   log=cluster.log)  # fmt: skip

    state = _canary(kube, cluster, NEW)

    assert not state.detail["first_deploy"]
    assert cluster.deployment("web").spec.selector.match_labels == APP  # immutable: kept
    kube.wait_for(lambda: len(cluster.pods(**STABLE)) == 4, message="labelled stable pods")
    assert cluster.ready("web-canary") == 1 and cluster.image("web") == OLD
    promote_canary(cluster.api, state, timeout=TIMEOUT, log=cluster.log)
    assert cluster.image("web") == NEW and cluster.ready("web") == 4
    assert cluster.deployment("web-canary").spec.replicas == 0


def test_rolling_rollback_to_a_named_revision(kube: KubeCluster, cluster: Cluster) -> None:
    third = kube.broken_image("web")
    for image in (OLD, NEW):
        state = deploy_rolling(cluster.api, release(kube, image), RollingSpec(), timeout=TIMEOUT,
                               log=cluster.log)  # fmt: skip
    with pytest.raises((RolloutFailed, RolloutTimeout)):
        deploy_rolling(cluster.api, release(kube, third), RollingSpec(), timeout=1,
                       log=cluster.log)  # fmt: skip

    rollback(cluster.api, state, to_revision=1, log=cluster.log)

    assert cluster.image("web") == OLD
    with pytest.raises(DeployError, match="has no revision 9"):
        rollback(cluster.api, state, to_revision=9, log=cluster.log)


def test_observed_state_rolls_back_each_strategy(kube: KubeCluster, cluster: Cluster) -> None:
    rolling = StrategySpec(rolling=RollingSpec())
    with pytest.raises(DeployError, match="not in"):
        observe_state(cluster.api, release(kube, OLD), rolling, log=cluster.log)
    for image in (OLD, NEW):
        deploy_rolling(cluster.api, release(kube, image), RollingSpec(), timeout=TIMEOUT,
                       log=cluster.log)  # fmt: skip
    state = observe_state(cluster.api, release(kube, NEW), rolling, log=cluster.log)
    assert state.previous_revision == 1
    rollback(cluster.api, state, log=cluster.log)
    assert cluster.image("web") == OLD


def test_observed_state_switches_blue_green_back(kube: KubeCluster, cluster: Cluster) -> None:
    strategy = StrategySpec(blue_green=BlueGreenSpec(scale_down_delay_seconds=0))
    _blue_green(kube, cluster, OLD)
    with pytest.raises(DeployError, match="web-green is not in"):
        observe_state(cluster.api, release(kube, OLD), strategy, log=cluster.log)
    state = _blue_green(kube, cluster, NEW)
    promote_blue_green(cluster.api, state, log=cluster.log)
    finish_blue_green(cluster.api, state, log=cluster.log, sleep=lambda _: None)

    observed = observe_state(cluster.api, release(kube, NEW), strategy, log=cluster.log)
    assert (observed.active_colour, observed.idle_colour) == ("blue", "green")
    rollback(cluster.api, observed, log=cluster.log)
    assert cluster.selector("web") == {**APP, COLOUR_LABEL: "blue"}
    assert cluster.ready("web-blue") == 2  # scaled back up first


def test_observed_state_aborts_or_undoes_a_canary(kube: KubeCluster, cluster: Cluster) -> None:
    strategy = StrategySpec(canary=STEPS)
    _canary(kube, cluster, OLD)
    state = _canary(kube, cluster, NEW)
    set_canary_weight(cluster.api, state, 10, log=cluster.log)

    running = observe_state(cluster.api, release(kube, NEW), strategy, log=cluster.log)
    assert running.canary_weight == 10 and not running.detail.get("promoted")
    rollback(cluster.api, running, log=cluster.log)
    assert _weights(cluster) == [("web-stable", 100), ("web-canary", 0)]
    assert cluster.deployment("web-canary").spec.replicas == 0

    state = _canary(kube, cluster, NEW)
    promote_canary(cluster.api, state, timeout=TIMEOUT, log=cluster.log)
    promoted = observe_state(cluster.api, release(kube, NEW), strategy, log=cluster.log)
    assert promoted.detail["promoted"] and promoted.previous_revision == 1
    rollback(cluster.api, promoted, log=cluster.log)
    assert cluster.image("web") == OLD
