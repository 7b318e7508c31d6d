"""Rendering manifests: plain folders and the kustomize subset (checked against kubectl)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from slipway.exceptions import ManifestRenderError, UnsafeInputError
from slipway.tasks.manifests_render import render_manifests, split_image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "example-app"
KUBECTL = shutil.which("kubectl")
DIGEST = "sha256:" + "ab" * 32

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      serviceAccountName: web
      initContainers:
        - name: migrate
          image: registry.local:5000/team/web:1.0
      containers:
        - name: web
          image: registry.local:5000/team/web:1.0
          envFrom:
            - configMapRef: {name: settings}
          env:
            - name: TOKEN
              valueFrom:
                secretKeyRef: {name: credentials, key: token}
        - name: sidecar
          image: nginx
      volumes:
        - name: config
          configMap: {name: settings}
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: 8080}
"""
EXTRAS = f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  MODE: fast
---
apiVersion: v1
kind: Secret
metadata:
  name: credentials
stringData:
  token: not-a-real-token
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: cleanup
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: cleanup
              image: registry.local:5000/team/web@sha256:{"0" * 64}
---
apiVersion: v1
kind: Namespace
metadata:
  name: shared-tools
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: reader
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: web-reads
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: reader
subjects:
  - kind: ServiceAccount
    name: web
  - kind: ServiceAccount
    name: default
    namespace: elsewhere
  - kind: User
    name: bob
"""

# A base, a middle layer and an overlay: images by digest, prefixes and suffixes,
# labels everywhere kustomize puts them, replicas by the original name.
FIXTURE = {
    "base/kustomization.yaml": """\
        resources:
          - deployment.yaml
          - service.yaml
          - extras.yaml
        commonLabels:
          team: payments
        """,
    "base/deployment.yaml": DEPLOYMENT,
    "base/service.yaml": SERVICE,
    "base/extras.yaml": EXTRAS,
    "middle/kustomization.yaml": """\
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        resources:
          - ../base
        nameSuffix: -v2
        images:
          - name: nginx
            newName: mirror.local/nginx
            newTag: "1.27"
        """,
    "overlays/prod/kustomization.yaml": f"""\
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        namespace: prod
        namePrefix: prod-
        resources:
          - ../../middle
        commonLabels:
          env: prod
        labels:
          - pairs: {{tier: backend}}
          - pairs: {{release: stable}}
            includeSelectors: true
        commonAnnotations:
          owner: "payments-team"
        replicas:
          - name: web
            count: 4
        images:
          - name: registry.local:5000/team/web
            digest: {DIGEST}
          - name: mirror.local/nginx
            newTag: "1.27.1"
        """,
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def kubectl_kustomize(folder: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc is not None]


# --- kustomize, compared with kubectl --------------------------------------------------------


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: nothing to compare with")
@pytest.mark.parametrize(
    ("root", "path"),
    [
        (EXAMPLE, "k8s/overlays/staging"),
        (EXAMPLE, "k8s/overlays/production"),
        (EXAMPLE, "k8s/base"),
        (None, "overlays/prod"),
        (None, "middle"),
    ],
)
def test_same_output_as_kubectl_kustomize(root: Path | None, path: str, tmp_path: Path) -> None:
    base = root or write_tree(tmp_path, FIXTURE)
    assert render_manifests(base, path, "kustomize") == kubectl_kustomize(base / path)


def test_example_overlays(tmp_path: Path) -> None:
    staging = render_manifests(EXAMPLE, "k8s/overlays/staging", "kustomize")
    assert [(o["kind"], o["metadata"]["namespace"]) for o in staging] == [
        ("Service", "staging"),
        ("Deployment", "staging"),
    ]
    deployment = staging[1]
    assert deployment["spec"]["replicas"] == 1
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.local/example-app:latest"
    production = render_manifests(EXAMPLE, "k8s/overlays/production", "kustomize")
    assert production[1]["spec"]["replicas"] == 3


def test_fixture_overlay(tmp_path: Path) -> None:
    write_tree(tmp_path, FIXTURE)
    objects = render_manifests(tmp_path, "overlays/prod", "kustomize")
    by_kind = {o["kind"]: o for o in objects}
    assert [o["kind"] for o in objects] == [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "CronJob",
    ]
    assert by_kind["Namespace"]["metadata"] == {
        "name": "prod",  # kustomize renames a Namespace object to the namespace
        "labels": {"team": "payments", "env": "prod", "tier": "backend", "release": "stable"},
        "annotations": {"owner": "payments-team"},
    }
    dep = by_kind["Deployment"]
    assert dep["metadata"]["name"] == "prod-web-v2" and dep["metadata"]["namespace"] == "prod"
    assert dep["spec"]["replicas"] == 4
    selector = {"app": "web", "team": "payments", "env": "prod", "release": "stable"}
    assert dep["spec"]["selector"]["matchLabels"] == selector
    assert dep["spec"]["template"]["metadata"]["labels"] == selector  # no includeTemplates
    assert dep["spec"]["template"]["metadata"]["annotations"] == {"owner": "payments-team"}
    pod = dep["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["initContainers"] + pod["containers"]] == [
        f"registry.local:5000/team/web@{DIGEST}",
        f"registry.local:5000/team/web@{DIGEST}",
        "mirror.local/nginx:1.27.1",
    ]
    assert pod["serviceAccountName"] == "prod-web-v2"
    assert pod["containers"][0]["envFrom"][0]["configMapRef"]["name"] == "prod-settings-v2"
    secret_ref = pod["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
    assert secret_ref["name"] == "prod-credentials-v2"
    assert pod["volumes"][0]["configMap"]["name"] == "prod-settings-v2"
    assert by_kind["Service"]["spec"]["selector"] == selector
    binding = by_kind["RoleBinding"]
    assert binding["roleRef"]["name"] == "prod-reader-v2"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prod-web-v2", "namespace": "prod"},
        {"kind": "ServiceAccount", "name": "default", "namespace": "prod"},
        {"kind": "User", "name": "bob"},
    ]
    cron = by_kind["CronJob"]["spec"]["jobTemplate"]
    assert cron["spec"]["template"]["spec"]["containers"][0]["image"].endswith(DIGEST)
    assert cron["spec"]["template"]["metadata"]["labels"]["env"] == "prod"


def test_resources_can_be_single_files(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "app/kustomization.yaml": "resources: [../shared/service.yaml]\nnamespace: a\n",
            "shared/service.yaml": SERVICE,
        },
    )
    (service,) = render_manifests(tmp_path, "app", "kustomize")
    assert service["metadata"] == {"name": "web", "namespace": "a"}


# --- kustomize errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kustomization", "message"),
    [
        (
            "resources: [s.yaml]\npatches:\n  - path: p.yaml\n",
            r"app/kustomization.yaml: unsupported kustomize key 'patches'",
        ),
        (
            "resources: [s.yaml]\nconfigMapGenerator: []\nhelmCharts: []\n",
            r"unsupported kustomize key 'configMapGenerator' \(also 'helmCharts'\)",
        ),
        (
            "resources: [s.yaml]\nimages:\n  - name: x\n    newTag: v1\n    tagSuffix: y\n",
            r"app/kustomization.yaml: unsupported kustomize key images\[0\].'tagSuffix'",
        ),
        (
            "resources: [s.yaml]\nimages:\n  - name: x\n    newTag: 1.20\n",
            r"images\[0\]: newTag must be a string",
        ),
        (
            "resources: [s.yaml]\nreplicas:\n  - name: nothing\n    count: 2\n",
            r"replicas\[0\]: no Deployment, StatefulSet or ReplicaSet 'nothing'",
        ),
        ("resources: [missing.yaml]\n", r"resources entry 'missing.yaml' does not exist"),
        (
            "resources:\n  - https://github.com/org/repo//k8s?ref=v1\n",
            r"remote resources are not supported",
        ),
        ("resources: [s.yaml, s.yaml]\n", r"Service 'web' is defined twice"),
        ("resources: [s.yaml]\ncommonLabels: {version: 2}\n", r"commonLabels.version must be"),
        ("kind: Component\nresources: [s.yaml]\n", r"unsupported kind 'Component'"),
        ("resources: [sub]\n", r"app/sub: no kustomization.yaml"),
    ],
)
def test_unsupported_or_broken_kustomizations(
    tmp_path: Path, kustomization: str, message: str
) -> None:
    write_tree(
        tmp_path,
        {
            "app/kustomization.yaml": kustomization,
            "app/s.yaml": SERVICE,
            "app/sub/plain.yaml": SERVICE,
        },
    )
    with pytest.raises(ManifestRenderError, match=message):
        render_manifests(tmp_path, "app", "kustomize")


def test_kustomization_cycle(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "a/kustomization.yaml": "resources: [../b]\n",
            "b/kustomization.yaml": "resources: [../a]\n",
        },
    )
    with pytest.raises(ManifestRenderError, match=r"kustomization cycle: a -> b -> a"):
        render_manifests(tmp_path, "a", "kustomize")


def test_kustomize_needs_a_folder(tmp_path: Path) -> None:
    write_tree(tmp_path, {"service.yaml": SERVICE})
    with pytest.raises(ManifestRenderError, match="needs a folder"):
        render_manifests(tmp_path, "service.yaml", "kustomize")
    with pytest.raises(ManifestRenderError, match=r"\.: no kustomization.yaml"):
        render_manifests(tmp_path, ".", "kustomize")


# --- paths -------------------------------------------------------------------------------


def test_paths_outside_the_repository_are_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_tree(tmp_path, {"outside/service.yaml": SERVICE})
    write_tree(
        repo,
        {
            "app/kustomization.yaml": "resources: [../../outside/service.yaml]\n",
            "plain/ok.yaml": SERVICE,
        },
    )
    (repo / "plain" / "link.yaml").symlink_to(tmp_path / "outside" / "service.yaml")
    (repo / "linked").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafeInputError, match="leads outside the manifests repository"):
        render_manifests(repo, "../outside", "plain")
    with pytest.raises(UnsafeInputError, match="/etc"):
        render_manifests(repo, "/etc", "plain")
    with pytest.raises(UnsafeInputError, match=r"resources entry '../../outside/service.yaml'"):
        render_manifests(repo, "app", "kustomize")
    with pytest.raises(UnsafeInputError, match="link.yaml"):
        render_manifests(repo, "plain", "plain")
    with pytest.raises(UnsafeInputError):
        render_manifests(repo, "linked", "plain")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ManifestRenderError, match=r"manifest path 'k8s' does not exist"):
        render_manifests(tmp_path, "k8s", "plain")


# --- plain folders -----------------------------------------------------------------------


def test_plain_folder_recursive_sorted_multi_document(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "k8s/b-service.yml": SERVICE,
            "k8s/a/deployment.yaml": "---\n" + DEPLOYMENT + "---\n# nothing here\n---\n",
            "k8s/c-extras.yaml": EXTRAS,
            "k8s/kustomization.yaml": "resources: [nothing.yaml]\n",
            "k8s/README.md": "not yaml: [",
            "k8s/list.yaml": """\
                apiVersion: v1
                kind: List
                items:
                  - {apiVersion: v1, kind: ConfigMap, metadata: {name: one}}
                  - {apiVersion: v1, kind: ConfigMap, metadata: {name: two}}
                """,
        },
    )
    objects = render_manifests(tmp_path, "k8s", "plain")
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Deployment", "web"),
        ("Service", "web"),
        ("ConfigMap", "settings"),
        ("Secret", "credentials"),
        ("ServiceAccount", "web"),
        ("CronJob", "cleanup"),
        ("Namespace", "shared-tools"),
        ("Role", "reader"),
        ("RoleBinding", "web-reads"),
        ("ConfigMap", "one"),
        ("ConfigMap", "two"),
    ]
    (single,) = render_manifests(tmp_path, "k8s/b-service.yml", "plain")
    assert single["kind"] == "Service"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Service\nmetadata: {name: web}\n", r"bad.yaml \(document 1\): missing apiVersion"),
        (
            SERVICE + "---\napiVersion: v1\nkind: Service\nmetadata: {}\n",
            r"bad.yaml \(document 2\): missing metadata.name",
        ),
        ("- just\n- a list\n", r"document 1\): expected a Kubernetes object"),
        ("apiVersion: v1\nkind: [\n", r"k8s/bad.yaml: line \d+: invalid YAML"),
        ("!!python/object/apply:os.system ['true']\n", r"invalid YAML"),
        (
            "apiVersion: v1\nkind: List\nitems:\n  - {kind: ConfigMap}\n",
            r"\(document 1\) items\[0\]: missing apiVersion, metadata.name",
        ),
    ],
)
def test_plain_errors_name_the_file_and_document(tmp_path: Path, text: str, message: str) -> None:
    write_tree(tmp_path, {"k8s/bad.yaml": text})
    with pytest.raises(ManifestRenderError, match=message):
        render_manifests(tmp_path, "k8s", "plain")


def test_oversized_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path, {"k8s/big.yaml": SERVICE})
    # a 10-byte limit instead of writing a file past the real one (same check, same path)
    monkeypatch.setattr("slipway.tasks.manifests_render.MAX_FILE_BYTES", 10)
    with pytest.raises(ManifestRenderError, match="k8s/big.yaml: larger than"):
        render_manifests(tmp_path, "k8s", "plain")


def test_unknown_kind_of_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestRenderError, match="unknown manifest kind 'helm'"):
        render_manifests(tmp_path, ".", "helm")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("nginx", ("nginx", "", "")),
        ("nginx:1.27", ("nginx", "1.27", "")),
        ("registry.local:5000/team/web", ("registry.local:5000/team/web", "", "")),
        ("registry.local:5000/team/web:1.0", ("registry.local:5000/team/web", "1.0", "")),
        (f"web@{DIGEST}", ("web", "", DIGEST)),
        (f"host:1/web:v1@{DIGEST}", ("host:1/web", "v1", DIGEST)),
    ],
)
def test_split_image_like_kustomize(image: str, parts: tuple[str, str, str]) -> None:
    assert split_image(image) == parts
