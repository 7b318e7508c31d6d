"""Application files: Argo CD's defaults, generated sets, and errors that point into the file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from slipway.application_spec import (
    Application,
    ApplicationSet,
    ApplicationSpecError,
    find_application,
    parse_application_file,
)
from slipway.exceptions import ConfigError

ROOT = Path(__file__).resolve().parents[2]
FILE = "deployments/applications/shop.yaml"


def parse(text: str) -> Application | ApplicationSet:
    return parse_application_file(textwrap.dedent(text).lstrip("\n"), FILE)


def test_defaults_are_argo_cds() -> None:
    app = parse(
        """
        application:
          name: shop
          repo: manifests
          path: envs/prod
          destination: {cluster: prod-cluster, namespace: shop}
        """
    )
    assert isinstance(app, Application)
    assert (app.kind, app.target_revision) == ("plain", None)
    policy = app.sync_policy
    assert not (policy.automated or policy.prune or policy.self_heal or policy.allow_empty)
    assert not app.sync_options.create_namespace
    assert app.retry.limit == 5
    assert (app.retry.backoff.duration, app.retry.backoff.factor) == (5.0, 2.0)
    assert app.retry.backoff.max_duration == 180.0
    assert app.retry.delays() == [5.0, 10.0, 20.0, 40.0, 80.0]


def test_argo_cd_spellings_and_durations_are_accepted() -> None:
    app = parse(
        """
        application:
          name: shop
          repo: https://git.example.com/team/manifests.git
          targetRevision: v1.2.0
          path: .
          kind: kustomize
          destination: {cluster: c, namespace: shop}
          syncPolicy: {automated: true, prune: true, selfHeal: true, allowEmpty: true}
          syncOptions: {createNamespace: true}
          retry: {limit: 2, backoff: {duration: 1m30s, factor: 3, maxDuration: 2m}}
        """
    )
    assert isinstance(app, Application) and app.repo_is_url
    assert app.sync_policy.self_heal and app.sync_policy.allow_empty
    assert app.retry.delays() == [90.0, 120.0]


def test_an_application_set_generates_one_app_per_element() -> None:
    spec = parse(
        """
        application_set:
          name: shop
          progressive: true
          health_timeout_seconds: 2m
          generator:
            list:
              elements:
                - {name: dev, cluster: dev-cluster, namespace: shop-dev, path: envs/dev}
                - {name: prod, cluster: prod-cluster, namespace: shop, path: envs/prod}
          template:
            repo: manifests
            sync_policy: {automated: true, self_heal: true}
        """
    )
    assert isinstance(spec, ApplicationSet) and spec.progressive
    assert spec.health_timeout_seconds == 120
    dev, prod = spec.applications()
    assert (dev.name, dev.destination.cluster, dev.path) == ("shop-dev", "dev-cluster", "envs/dev")
    assert (prod.name, prod.destination.namespace) == ("shop-prod", "shop")
    assert prod.sync_policy.self_heal and prod.repo == "manifests"


def test_problems_name_the_file_the_line_and_the_key() -> None:
    with pytest.raises(ApplicationSpecError) as caught:
        parse(
            """
            application:
              name: shop
              repo: manifests
              path: ../outside
              destination: {cluster: c, namespace: Not_A_Namespace}
              sync_policy:
                automated: true
                self_heel: true
              retry: {backoff: {duration: soon}}
            """
        )
    error = caught.value
    assert isinstance(error, ConfigError)
    text = str(error)
    assert text.startswith(f"invalid application file {FILE} (4 problems)")
    assert f"{FILE}:4: application.path: path '../outside' leaves the workspace" in text
    assert (
        f"{FILE}:5: application.destination.namespace: namespace 'Not_A_Namespace' is not" in text
    )
    assert f"{FILE}:8: application.sync_policy.self_heel: unknown key 'self_heel'" in text
    assert "(did you mean 'self_heal'?)" in text
    assert f"{FILE}:9: application.retry.backoff.duration: not a duration: 'soon'" in text


def test_exactly_one_kind_and_unique_elements() -> None:
    with pytest.raises(ApplicationSpecError, match="exactly one of 'application'"):
        parse("{}\n")
    with pytest.raises(ApplicationSpecError, match="element name 'dev' appears twice"):
        parse(
            """
            application_set:
              name: shop
              generator: {list: {elements: [
                {name: dev, cluster: c, namespace: a, path: a},
                {name: dev, cluster: c, namespace: b, path: b}]}}
              template: {repo: manifests}
            """
        )
    with pytest.raises(ApplicationSpecError, match=r"shop.yaml:2: not valid YAML"):
        parse_application_file("application: [\n", FILE)


def test_found_by_name_in_deployments_or_by_path(tmp_path: Path) -> None:
    path, app = find_application("example-app", ROOT / "deployments" / "applications")
    assert path.name == "example-app.yaml" and isinstance(app, Application)
    assert app.sync_policy.self_heal and app.kind == "kustomize"
    with pytest.raises(ApplicationSpecError, match=r"no application file nope.yaml .*example-app"):
        find_application("nope", ROOT / "deployments" / "applications")
    with pytest.raises(ApplicationSpecError, match="application file not found"):
        find_application(str(tmp_path / "missing.yaml"))
