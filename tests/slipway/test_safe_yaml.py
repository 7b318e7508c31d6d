"""Every YAML reader refuses alias bombs and deep nesting, and reads what kubectl reads.

Each bomb is replayed in a child process whose address space is capped
(``RLIMIT_AS``): before the loaders checked the event stream, the pipeline file
below (439 bytes) took 2.3 GB and was still expanding after 120 s. A child that
runs out of memory dies with a MemoryError traceback instead of the clean error
these tests expect, so a regression fails here rather than eating the machine.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from slipway.exceptions import ManifestRenderError, SpecError
from slipway.safe_yaml import (
    MANIFEST_LIMITS,
    SPEC_LIMITS,
    YamlLimits,
    YamlProblem,
    load_manifests,
    load_round_trip,
)
from slipway.spec_loader import parse_pipeline
from slipway.tasks.manifests_render import render_manifests

MEMORY_CAP = 768 * 1024 * 1024  # bytes of address space for a child: imports need ~110 MB
CHILD_DEADLINE = 300  # s; a guard against a hang, not a timing target
KUBECTL = shutil.which("kubectl")


def _laughs(levels: int, width: int = 10, indent: str = "") -> list[str]:
    """``&a0 [lol x width]``, then ``&aN [*aN-1 x width]``: width**levels nodes."""
    lines = [f"{indent}a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"{indent}a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return lines


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _run_capped(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CHILD_DEADLINE,
        preexec_fn=_cap_memory,
        check=False,
    )


def _load_in_child(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a memory-capped Python; it prints the error it expects."""
    return _run_capped([sys.executable, "-c", textwrap.dedent(code)], cwd)


def _render_in_child(root: Path, path: str, *kinds: str) -> subprocess.CompletedProcess[str]:
    """render_manifests in a memory-capped child; prints ``<kind> <error>`` per kind."""
    return _load_in_child(
        f"""
        from pathlib import Path
        from slipway.exceptions import ManifestRenderError
        from slipway.tasks.manifests_render import render_manifests
        for kind in {kinds!r}:
            try:
                render_manifests(Path("."), {path!r}, kind)
            except ManifestRenderError as exc:
                print(kind, exc)
        """,
        root,
    )


def _clean_refusal(proc: subprocess.CompletedProcess[str], text: str) -> str:
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output and "MemoryError" not in output, output[-2000:]
    assert text in output, output[-2000:]
    return output


# --- the bombs of the reports, replayed ---------------------------------------------------


def test_pipeline_file_bomb_is_refused_by_slipway_validate(tmp_path: Path) -> None:
    lines = ["version: 1", "app: bomb", *_laughs(7)]
    lines.append("stages: [{name: s, run: 'true', env: {X: *a6}}]")
    (tmp_path / "slipway.yaml").write_text("\n".join(lines) + "\n")
    assert (tmp_path / "slipway.yaml").stat().st_size < 500

    slipway = Path(sys.executable).with_name("slipway")
    proc = _run_capped([str(slipway), "validate", "slipway.yaml"], tmp_path)

    assert proc.returncode == 1
    output = _clean_refusal(proc, "refusing what looks like an alias bomb")
    assert "slipway.yaml:6: aliases expand to more than 10000 extra nodes (at *a2)" in output


def test_application_file_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["name: bomb", "repo: https://git.example.com/ops/manifests.git", "path: apps/bomb"]
    lines += ["destination: {cluster: prod, namespace: bomb}", "labels:", *_laughs(8, indent="  ")]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")

    proc = _load_in_child(
        """
        from pathlib import Path
        from slipway.application_spec import ApplicationSpecError, load_application_file
        try:
            load_application_file(Path("bomb.yaml"))
        except ApplicationSpecError as exc:
            print(exc)
        """,
        tmp_path,
    )

    assert proc.returncode == 0
    _clean_refusal(proc, "bomb.yaml:9: aliases expand to more than 10000 extra nodes")


def test_configmap_bomb_is_refused_by_the_manifest_renderer(tmp_path: Path) -> None:
    """The 600-byte ConfigMap that became 152 MB, through plain and kustomize renders."""
    lines = ["apiVersion: v1", "kind: ConfigMap", "metadata:", "  name: laughs"]
    lines += ["  annotations:", *_laughs(9, width=9, indent="    "), "data: {}"]
    folder = tmp_path / "apps" / "bomb"
    folder.mkdir(parents=True)
    (folder / "configmap.yaml").write_text("\n".join(lines) + "\n")
    (folder / "kustomization.yaml").write_text("resources: [configmap.yaml]\n")
    assert (folder / "configmap.yaml").stat().st_size < 700

    proc = _render_in_child(tmp_path, "apps/bomb", "plain", "kustomize")

    assert proc.returncode == 0
    for kind in ("plain", "kustomize"):
        _clean_refusal(
            proc,
            f"{kind} apps/bomb/configmap.yaml: line 11: aliases expand to more than 100000",
        )


def test_kustomization_bomb_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(
        "\n".join(["resources: []", "commonAnnotations:", *_laughs(9, indent="  ")]) + "\n"
    )

    proc = _render_in_child(tmp_path, "base", "kustomize")

    assert proc.returncode == 0
    _clean_refusal(
        proc, "kustomize base/kustomization.yaml: line 7: aliases expand to more than 100000"
    )


def test_a_hundred_thousand_brackets_deep_is_refused_in_a_child(tmp_path: Path) -> None:
    """libyaml composes in C: without the depth check this overflows the C stack."""
    depth = 100_000
    (tmp_path / "deep.yaml").write_text("[" * depth + "]" * depth + "\n")

    proc = _render_in_child(tmp_path, "deep.yaml", "plain")

    assert proc.returncode == 0
    # libyaml's scanner has its own limit at 1000 and says so first; either is clean.
    _clean_refusal(proc, "plain deep.yaml: line 1: invalid YAML: exceeded maximum nesting depth")


def test_nesting_over_the_manifest_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 300 + "]" * 300 + "\n")

    with pytest.raises(ManifestRenderError, match="^deep.yaml: line 1: nested more than 200"):
        render_manifests(tmp_path, "deep.yaml", "plain")


# --- deep nesting ---------------------------------------------------------------------------


def test_a_when_nested_400_deep_is_a_spec_error_with_its_line() -> None:
    lines = ["version: 1", "app: a", "stages:", "  - name: s", "    run: 'true'", "    when:"]
    lines += [" " * (6 + 2 * i) + "not:" for i in range(400)]
    lines.append(" " * (6 + 2 * 400) + "branch: main")

    with pytest.raises(SpecError) as err:
        parse_pipeline("\n".join(lines) + "\n")

    (problem,) = err.value.problems
    assert (problem.line, problem.message) == (68, "nested more than 64 levels deep")


def test_a_when_nested_within_the_limit_still_works() -> None:
    when = "{not: " * 58 + "{branch: main}" + "}" * 58
    text = f"version: 1\napp: a\nstages:\n  - name: s\n    run: 'true'\n    when: {when}\n"

    assert parse_pipeline(text).stages[0].when is not None


# --- what anchors may still do -------------------------------------------------------------


def test_anchors_that_share_settings_are_allowed() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        app: anchors
        x-retries: &retries {attempts: 2, delay: 5}
        stages:
          - {name: unit, run: pytest, retries: *retries}
          - {name: lint, run: ruff check ., retries: *retries}
        """
    )
    tree = load_round_trip(text)
    assert tree["stages"][1]["retries"] == {"attempts": 2, "delay": 5}


def test_manifest_anchors_and_merge_keys_load_as_kubectl_would() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: web
          labels: &labels {app: web, tier: frontend}
        spec:
          selector: {matchLabels: *labels}
          template:
            metadata: {labels: {<<: *labels, track: stable}}
            spec:
              containers: [{name: web, image: web:1}]
        """
    )
    (deployment,) = load_manifests(text)
    assert deployment["spec"]["template"]["metadata"]["labels"] == {
        "app": "web",
        "tier": "frontend",
        "track": "stable",
    }


@pytest.mark.parametrize(
    ("text", "problem", "line"),
    [
        ("a: &a [1, *a]\n", "alias *a refers to a node that contains it", 1),
        ("a: 1\nb: *nope\n", "alias *nope names no anchor before it", 2),
        ("--- &a [1]\n--- [*a]\n", "alias *a names no anchor before it", 2),
    ],
)
def test_cycles_and_unknown_aliases_are_refused(text: str, problem: str, line: int) -> None:
    for load in (load_manifests, load_round_trip):
        with pytest.raises(YamlProblem) as err:
            load(text)
        assert (err.value.problem, err.value.line) == (problem, line)


def test_the_limits_are_counted_exactly() -> None:
    """Four aliases of a ten-node list add 4 x 9 nodes: 36 passes at 36, fails at 35."""
    text = "base: &b [1, 2, 3, 4, 5, 6, 7, 8, 9]\nuse: [*b, *b, *b, *b]\n"
    load_manifests(text, YamlLimits(max_depth=3, max_alias_nodes=36))
    with pytest.raises(YamlProblem, match="more than 35 extra nodes"):
        load_manifests(text, YamlLimits(max_depth=3, max_alias_nodes=35))
    with pytest.raises(YamlProblem, match="nested more than 1 levels"):
        load_manifests(text, YamlLimits(max_depth=1, max_alias_nodes=36))
    assert SPEC_LIMITS.max_depth < MANIFEST_LIMITS.max_depth


# --- trailing tabs, as upstream manifests have them -----------------------------------------

GUESTBOOK = (
    "apiVersion: apps/v1\t\n"
    "kind: Deployment\n"
    "metadata:\n"
    "  name: redis-master\t\n"
    "  labels:\n"
    "    app: redis\t\t\n"
    "spec:\n"
    "  selector:\n"
    "    matchLabels:\n"
    "      app: redis\n"
    "      role: master\t\n"
    "  replicas: 1\t\n"
    "  template:\n"
    "    metadata:\n"
    "      labels:\n"
    "        app: redis\n"
    "        role: master\n"
    "    spec:\n"
    "      containers:\n"
    "      - name: master\t\n"
    "        image: registry.k8s.io/redis:e2e  # or just image: redis\t\n"
    "        args:\n"
    "        - |\n"
    "          --appendonly\tyes\t\n"
    "        ports:\n"
    "        - containerPort: 6379\t\n"
)


def test_trailing_tabs_load(tmp_path: Path) -> None:
    (tmp_path / "redis-master.yaml").write_text(GUESTBOOK)
    with pytest.raises(yaml.YAMLError, match="found character '\\\\t'"):
        yaml.safe_load(GUESTBOOK)  # the pure-Python scanner the renderer used to use

    (deployment,) = render_manifests(tmp_path, "redis-master.yaml", "plain")

    assert deployment["metadata"] == {"name": "redis-master", "labels": {"app": "redis"}}
    assert deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--appendonly\tyes\t\n"]  # inside a block scalar: content


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: nothing to compare with")
def test_trailing_tabs_render_as_kubectl_kustomize_does(tmp_path: Path) -> None:
    assert KUBECTL is not None
    (tmp_path / "redis-master.yaml").write_text(GUESTBOOK)
    (tmp_path / "kustomization.yaml").write_text("resources:\n- redis-master.yaml\t\n")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout

    assert render_manifests(tmp_path, ".", "kustomize") == [yaml.safe_load(out)]


def test_a_manifest_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: v1\nkind: [ConfigMap\n")

    with pytest.raises(ManifestRenderError, match=r"^bad.yaml: line 3: invalid YAML"):
        render_manifests(tmp_path, "bad.yaml", "plain")


def test_the_gitops_bump_reads_kustomizations_through_the_same_check() -> None:
    from slipway.exceptions import ConfigError
    from slipway.tasks.gitops import _compose

    text = "\n".join(["images: []", "x:", *_laughs(8, indent="  ")]) + "\n"
    with pytest.raises(ConfigError, match="line 7: aliases expand to more than 100000"):
        _compose(text, "overlays/prod/kustomization.yaml")
