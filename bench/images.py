"""Issue 3's image benchmarks: the example app's image build and push, cold and warm,
and the whole CI flow's wall time against its critical path.

Nothing is a stand-in: the image is built and pushed by slipway's own
:func:`~slipway.tasks.images.build_image` and :func:`~slipway.tasks.images.push_image`
on a real Docker engine (:func:`slipway.local_docker.ensure_engine`: ``$DOCKER_HOST``,
slipway's private ``dockerd`` or a new one, left running like ``examples/run`` leaves
it) into Debian's ``docker-registry``; the CI flow is the example app's full pipeline,
image stages included, on the benchmark's private Prefect server.

Cold build = the example image's tags removed from the engine (every reference
whose repository is ``example-app``, whatever the registry host) and the build cache
pruned, the base image kept; warm = the same build again right after. Cold push =
into a registry started empty for that repetition; warm push = the same image again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from prefect_docker import DockerHost

from bench.harness import BenchError, free_port, median
from bench.measure import Bench, pipeline_timeline, r3
from slipway.example import EXAMPLE_DIR
from slipway.exceptions import ConfigError, RemoteUnavailable
from slipway.local_docker import (
    BASE_IMAGE,
    ensure_base_image,
    ensure_engine,
    registry_answers,
    start_registry,
)
from slipway.report import PipelineReport
from slipway.spec import Pipeline
from slipway.spec_loader import dependencies, load_pipeline
from slipway.tasks.images import ImageBuildSpec, LocalImage, build_image, push_image

IMAGE_REPS = 3  # a cold build on the vfs driver is ~45 s: three is what is affordable
EXAMPLE_REPOSITORY = "example-app"
PIPELINE_REGISTRY_PORT = 5000  # what the example's slipway.yaml pushes to
SOURCE_URL = "file:///slipway/bench/example-app"
CONTAINER_PROBES = 2

_STEP_LINE = re.compile(r"^Step (\d+)/(\d+) : (\S+)\s*(.*)$")
# Dockerfile instructions that write files into a new layer; the others only change
# the image's configuration (the classic builder still runs a container for each).
_WRITES_LAYER = {"RUN", "COPY", "ADD"}


# --- the engine and the registries ---------------------------------------------------------


@dataclass
class Engine:
    url: str
    client: docker.DockerClient
    started_here: bool
    setup_seconds: float
    base_image_seconds: float

    def describe(self) -> dict[str, Any]:
        info = self.client.info()
        base = self.client.api.inspect_image(BASE_IMAGE)
        return {
            "url": self.url,
            "started_by_the_bench": self.started_here,
            "server_version": info.get("ServerVersion"),
            "storage_driver": info.get("Driver"),
            "engine_setup_seconds": r3(self.setup_seconds),
            "base_image_seconds": r3(self.base_image_seconds),
            "base_image": BASE_IMAGE,
            "base_image_mb": round(int(base.get("Size") or 0) / 1e6, 1),
        }


def open_engine() -> Engine:
    """The engine slipway would use, with the offline base image on it."""
    t0 = time.perf_counter()
    url, started = ensure_engine()
    t1 = time.perf_counter()
    ensure_base_image(url)
    t2 = time.perf_counter()
    client = DockerHost(base_url=url).get_client()
    return Engine(url, client, started is not None, t1 - t0, t2 - t1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def registry_on(folder: Path, port: int) -> Iterator[str]:
    """Debian's docker-registry, empty, on 127.0.0.1:port; stopped afterwards."""
    proc = start_registry(folder, port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


@contextmanager
def pipeline_registry(folder: Path) -> Iterator[dict[str, Any]]:
    """A registry on 127.0.0.1:5000: the one answering there, else ours until the end."""
    host = f"127.0.0.1:{PIPELINE_REGISTRY_PORT}"
    if registry_answers(host):
        yield {"host": host, "started_by_the_bench": False}
        return
    with registry_on(folder, PIPELINE_REGISTRY_PORT):
        yield {"host": host, "started_by_the_bench": True}


@contextmanager
def docker_host(url: str) -> Iterator[None]:
    """``DOCKER_HOST`` for the pipeline's image stages (DockerHost() reads it)."""
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = url
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous


# --- cold state ------------------------------------------------------------------------


def repository_path(reference: str) -> str:
    """``127.0.0.1:5000/example-app:build-3`` -> ``example-app`` (no host, tag or digest)."""
    name = reference.split("@", 1)[0]
    if ":" in name[name.rfind("/") + 1 :]:
        name = name.rsplit(":", 1)[0]
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return rest
    return name


def forget_example_images(client: docker.DockerClient) -> dict[str, Any]:
    """Remove every image of the example's repository (and with it the untagged
    intermediate images of its build: the classic builder's layer cache), then prune
    the build cache. The base image stays."""
    removed = kept = 0
    for image in client.images.list():
        refs = [*image.tags, *(image.attrs.get("RepoDigests") or [])]
        if not any(repository_path(ref) == EXAMPLE_REPOSITORY for ref in refs):
            continue
        try:
            client.api.remove_image(image.id, force=True)
            removed += 1
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError:
            kept += 1  # e.g. the parent of another repository's image
    pruned = client.api.prune_builds() or {}
    return {
        "images_removed": removed,
        "images_kept": kept,
        "build_cache_reclaimed_bytes": int(pruned.get("SpaceReclaimed") or 0),
    }


# --- the build context ----------------------------------------------------------------------


def prepare_context(scratch: Path, publish: Any) -> tuple[Path, float]:
    """The example app as the pipeline's image stage sees it: a clone of what
    ``publish_example`` publishes (so ``wheels/.gitkeep`` is there, and nothing that git
    ignores), with ``wheels/`` filled the way the pipeline's build stage fills it.
    Returns the folder and the seconds ``pip download`` took."""
    url = publish(home=scratch / "slipway-home")
    target = scratch / "example-app"
    subprocess.run(
        ["git", "clone", "--quiet", url, str(target)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
        + ["--disable-pip-version-check", "-d", "wheels", "-r", "requirements.txt"],
        cwd=target,
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    seconds = time.perf_counter() - t0
    if not list((target / "wheels").glob("*.whl")):
        raise BenchError("pip download left no wheel in the example's build context")
    return target, seconds


# --- timed builds and pushes ------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    seconds: float
    lines: tuple[tuple[float, str], ...]  # (seconds since the call, log line)


def _capture() -> tuple[list[tuple[float, str]], Any, float]:
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    return lines, lambda text: lines.append((time.perf_counter() - t0, text)), t0


def timed_build(
    client: docker.DockerClient,
    spec: ImageBuildSpec,
    workspace: Path,
    revision: str,
    number: str,
    created: datetime,
) -> tuple[LocalImage, Timed]:
    lines, log, t0 = _capture()
    image = build_image(
        client,
        spec,
        workspace=workspace,
        revision=revision,
        build_number=number,
        source_url=SOURCE_URL,
        log=log,
        created=created,
    )
    return image, Timed(time.perf_counter() - t0, tuple(lines))


def timed_push(client: docker.DockerClient, image: LocalImage, registry_url: str) -> Timed:
    lines, log, t0 = _capture()
    push_image(client, image, registry=None, registry_url=registry_url, log=log)
    return Timed(time.perf_counter() - t0, tuple(lines))


def cache_hits(timed: Timed) -> int:
    return sum(1 for _, text in timed.lines if "Using cache" in text)


def build_steps(timed: Timed) -> list[dict[str, Any]]:
    """Each Dockerfile step with the seconds until the next one started (the last one
    until "Successfully built"), from the arrival times of the streamed lines."""
    starts: list[tuple[float, str, str]] = []
    cached: set[int] = set()
    end = timed.seconds
    for at, text in timed.lines:
        found = _STEP_LINE.match(text)
        if found:
            starts.append((at, found.group(3).upper(), f"{found.group(3)} {found.group(4)}"))
        elif "Using cache" in text and starts:
            cached.add(len(starts) - 1)
        elif text.startswith("Successfully built"):
            end = at
    steps = []
    for i, (at, instruction, text) in enumerate(starts):
        until = starts[i + 1][0] if i + 1 < len(starts) else end
        steps.append(
            {
                "step": i + 1,
                "instruction": instruction,
                "text": text if len(text) <= 60 else text[:57] + "...",
                "seconds": until - at,
                "cached": i in cached,
            }
        )
    return steps


def probe_container_create(client: docker.DockerClient) -> dict[str, Any]:
    """What one container of the base image costs the engine: on vfs, creating it copies
    the image's whole root filesystem (the classic builder does this for every step)."""
    create: list[float] = []
    remove: list[float] = []
    for _ in range(CONTAINER_PROBES):
        t0 = time.perf_counter()
        container = client.api.create_container(BASE_IMAGE, command=["true"])
        t1 = time.perf_counter()
        client.api.remove_container(container["Id"], force=True)
        create.append(t1 - t0)
        remove.append(time.perf_counter() - t1)
    return {
        "create_seconds": [r3(x) for x in create],
        "remove_seconds": [r3(x) for x in remove],
        "create_median_seconds": r3(median(create)),
        "remove_median_seconds": r3(median(remove)),
    }


def _revision() -> tuple[str, datetime]:
    """slipway's HEAD and its commit time: a real revision, and a fixed ``created``
    label so that the warm rebuild is the same image (as the pipeline does)."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["git", "log", "-1", "--format=%H %ct"], cwd=root, capture_output=True, text=True
    )
    try:
        sha, stamp = done.stdout.split()
        return sha, datetime.fromtimestamp(int(stamp), UTC)
    except ValueError:
        return "0" * 40, datetime(2026, 1, 1, tzinfo=UTC)


def _untag(client: docker.DockerClient, references: list[str]) -> None:
    for ref in references:
        try:
            client.api.remove_image(ref)
        except docker.errors.APIError:
            pass


def measure_build_push(bench: Bench, engine: Engine, scratch: Path, publish: Any) -> dict[str, Any]:
    client = engine.client
    workspace, pip_seconds = prepare_context(scratch, publish)
    revision, created = _revision()
    cold: list[float] = []
    warm: list[float] = []
    push_cold: list[float] = []
    push_warm: list[float] = []
    hits_cold: list[int] = []
    hits_warm: list[int] = []
    same_image: list[bool] = []
    forgotten: list[dict[str, Any]] = []
    steps_by_rep: list[list[dict[str, Any]]] = []
    layers_pushed: list[int] = []
    size = 0
    for i in range(1, IMAGE_REPS + 1):
        forgotten.append(forget_example_images(client))
        port = free_port()
        spec = ImageBuildSpec(
            repository=EXAMPLE_REPOSITORY, push=False, registry_url=f"127.0.0.1:{port}"
        )
        image, first = timed_build(client, spec, workspace, revision, f"bench-{i}-cold", created)
        again, second = timed_build(client, spec, workspace, revision, f"bench-{i}-warm", created)
        cold.append(first.seconds)
        warm.append(second.seconds)
        hits_cold.append(cache_hits(first))
        hits_warm.append(cache_hits(second))
        same_image.append(again.image_id == image.image_id)
        steps_by_rep.append(build_steps(first))
        size = image.size_bytes
        assert spec.registry_url is not None
        with registry_on(scratch / f"registry-{i}", port):
            pushed = timed_push(client, image, spec.registry_url)
            repushed = timed_push(client, image, spec.registry_url)
        push_cold.append(pushed.seconds)
        push_warm.append(repushed.seconds)
        layers_pushed.append(sum(1 for _, text in pushed.lines if text.endswith(": Pushed")))
        # the registry is gone: its tags on the engine are of no use to anyone
        _untag(client, [f"{spec.registry_url}/{ref}" for ref in image.references])
        bench.say(
            f"example image {i}/{IMAGE_REPS}: cold build {first.seconds:.1f} s "
            f"({hits_cold[-1]} cached steps), warm {second.seconds:.2f} s; "
            f"push to an empty registry {pushed.seconds:.1f} s, again {repushed.seconds:.2f} s"
        )
    steps = []
    for n, step in enumerate(steps_by_rep[0]):
        same = [rep[n] for rep in steps_by_rep if len(rep) > n]
        steps.append(
            {
                **step,
                "seconds": r3(median([s["seconds"] for s in same])),
                "cached": sum(1 for s in same if s["cached"]),  # in how many cold builds
            }
        )
    config_steps = [s for s in steps if s["instruction"] not in _WRITES_LAYER]
    label_steps = [s for s in steps if s["instruction"] == "LABEL"]
    return {
        "repetitions": IMAGE_REPS,
        "context_wheel_download_seconds": r3(pip_seconds),
        "image_mb": round(size / 1e6, 1),
        "cold_state": forgotten,
        "build_cold_seconds": [r3(x) for x in cold],
        "build_cold": r3(median(cold)),
        "build_cold_cached_steps": hits_cold,
        "build_warm_seconds": [r3(x) for x in warm],
        "build_warm": r3(median(warm)),
        "build_warm_cached_steps": hits_warm,
        "warm_is_same_image": all(same_image),
        "push_cold_seconds": [r3(x) for x in push_cold],
        "push_cold": r3(median(push_cold)),
        "push_cold_layers_uploaded": layers_pushed,
        "push_warm_seconds": [r3(x) for x in push_warm],
        "push_warm": r3(median(push_warm)),
        "push_tags": 2,
        "cold_steps": steps,
        "cold_steps_definition": "median over the cold builds of the seconds from a step's "
        "'Step k/N' line to the next one (the last: to 'Successfully built')",
        "cold_config_only_steps": len(config_steps),
        "cold_config_only_seconds": r3(sum(s["seconds"] for s in config_steps)),
        "cold_layer_steps_seconds": r3(
            sum(s["seconds"] for s in steps if s["instruction"] in _WRITES_LAYER)
        ),
        "cold_label_steps": len(label_steps),
        "cold_label_seconds": r3(sum(s["seconds"] for s in label_steps)),
        "container_create_probe": probe_container_create(client),
    }


# --- the CI flow against its critical path -------------------------------------------------


def stage_weights(pipeline: Pipeline, report: PipelineReport) -> dict[str, float]:
    """Top-level stage -> its own work time: a parallel group's is its longest member's;
    a skipped stage (own_seconds None) counts 0."""
    own = {s.name: s.own_seconds or 0.0 for s in report.stages}
    weights: dict[str, float] = {}
    for stage in pipeline.stages:
        if stage.parallel:
            weights[stage.name] = max((own.get(m.name, 0.0) for m in stage.parallel), default=0.0)
        else:
            weights[stage.name] = own.get(stage.name, 0.0)
    return weights


def critical_path(deps: dict[str, list[str]], weights: dict[str, float]) -> tuple[float, list[str]]:
    """The longest path through the stage graph, by weight, and its stages in order."""
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}

    def visit(name: str) -> float:
        if name not in finish:
            before, previous = 0.0, None
            for dep in deps.get(name, []):
                if dep in weights and visit(dep) > before:
                    before, previous = finish[dep], dep
            finish[name] = before + weights[name]
            via[name] = previous
        return finish[name]

    for name in weights:
        visit(name)
    if not finish:
        return 0.0, []
    last: str | None = max(finish, key=lambda n: finish[n])
    total = finish[last]
    path: list[str] = []
    while last is not None:
        path.append(last)
        last = via[last]
    return total, path[::-1]


def _rebuilt_steps(client: docker.DockerClient, image_id: str, since: float) -> list[str]:
    """The image's history entries created during the run: the steps not taken from cache."""
    found = []
    for entry in client.api.history(image_id):
        if int(entry.get("Created") or 0) >= int(since) - 1:
            text = str(entry.get("CreatedBy") or "")
            if text.startswith("/bin/sh -c #(nop) "):
                text = text.removeprefix("/bin/sh -c #(nop) ").strip()
                found.append(text.split()[0] if text else "?")
            else:
                found.append("RUN")
    return found[::-1]


def measure_ci_flow(bench: Bench, engine: Engine, publish: Any, layer_cache: str) -> dict[str, Any]:
    """The example app's whole pipeline, image stages included, in a fresh sandbox."""
    if layer_cache == "cold":
        forget_example_images(engine.client)
    box = bench.boxes.fresh(f"ci-flow-{layer_cache}")
    url = publish(home=box.home)
    with docker_host(engine.url):
        # CI only (environments=[]): the example's deploy: needs its CD blocks and a
        # cluster; bench.delivery measures the CD half.
        measured = bench.pipeline(f"ci_flow_{layer_cache}", url, box, environments=[])
    report = measured.run.report
    pipeline = load_pipeline(EXAMPLE_DIR / "slipway.yaml", display_name="slipway.yaml")
    if any(s.status == "cached" for s in report.stages):
        raise BenchError("the CI-flow run reused cached stages: not a fresh run")
    image_stages = ("image", "image-scan", "push")
    not_run = [n for n in image_stages if report.stage(n).status != "passed"]
    if not_run or report.pushed_image is None:
        raise BenchError(f"the CI-flow run did not run its image stages: {not_run}")
    weights = stage_weights(pipeline, report)
    path_seconds, path = critical_path(dependencies(pipeline), weights)
    groups = {s.name: s for s in pipeline.stages if s.parallel}
    critical = set(path)
    for name in path:
        if name in groups:  # the member that made the group's time
            members = [s for s in report.stages if s.group == name]
            if members:
                critical.add(max(members, key=lambda s: s.own_seconds or 0.0).name)
    leaves = [s for s in report.stages if s.name not in groups]
    sequential = sum(s.own_seconds or 0.0 for s in leaves)
    timeline = pipeline_timeline(measured.run)
    stage_spans = [t for t in timeline.tasks if t.name not in ("checkout", "load-spec")]
    first_start = min(t.start for t in stage_spans)
    last_end = max(t.end for t in stage_spans)
    image = report.stage("image").image
    rebuilt = _rebuilt_steps(engine.client, image.image_id, measured.run.called_at) if image else []
    wall = measured.wall
    return {
        "layer_cache": layer_cache,
        "wall_seconds": r3(wall),
        "stalled_seconds": r3(measured.stalled),
        "flow_seconds": r3(report.seconds),
        "critical_path_seconds": r3(path_seconds),
        "critical_path": path,
        "ratio": r3(wall / path_seconds) if path_seconds else None,
        "ratio_without_stalls": r3(measured.wall_without_stalls / path_seconds)
        if path_seconds
        else None,
        "sequential_seconds": r3(sequential),
        "sequential_over_wall": r3(sequential / wall),
        "outside_critical_path_seconds": r3(wall - path_seconds),
        "until_first_stage_seconds": r3(first_start - measured.run.called_at),
        "after_last_stage_seconds": r3(measured.run.returned_at - last_end),
        "image_steps_rebuilt": rebuilt,
        "pushed": report.pushed_image.ref if report.pushed_image else None,
        "stages": [
            {
                "name": s.name,
                "group": s.group,
                "status": s.status,
                "seconds": r3(s.seconds),
                "own_seconds": r3(s.own_seconds) if s.own_seconds is not None else None,
                "path_weight": r3(weights[s.name]) if s.name in weights else None,
                "critical": s.name in critical,
            }
            for s in report.stages
        ],
    }


# --- everything -----------------------------------------------------------------------------


def measure_images(bench: Bench, scratch: Path, publish: Any) -> dict[str, Any]:
    """The image build/push figures and the CI flow against its critical path (twice:
    with the layer cache the build benchmark leaves, then with none)."""
    bench.say("Docker engine and offline base image (examples/base-image/build if missing)")
    try:
        engine = open_engine()
    except (ConfigError, RemoteUnavailable) as exc:
        bench.say(f"image benchmarks not run: {exc}")
        return {"unavailable": str(exc)}
    try:
        data: dict[str, Any] = {
            "engine": engine.describe(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
        }
        bench.say(
            f"engine {engine.url} ({data['engine']['storage_driver']} driver), "
            f"base image {data['engine']['base_image_mb']:.0f} MB"
        )
        data["build_push"] = measure_build_push(bench, engine, scratch / "build-push", publish)
        with pipeline_registry(scratch / f"registry-{PIPELINE_REGISTRY_PORT}") as registry:
            data["pipeline_registry"] = registry
            data["ci_flow"] = {}
            for layer_cache in ("warm", "cold"):
                flow = measure_ci_flow(bench, engine, publish, layer_cache)
                data["ci_flow"][layer_cache] = flow
                bench.say(
                    f"CI flow ({layer_cache} layer cache): wall {flow['wall_seconds']:.1f} s, "
                    f"critical path {flow['critical_path_seconds']:.1f} s "
                    f"({' → '.join(flow['critical_path'])}), "
                    f"all stages' own time {flow['sequential_seconds']:.1f} s"
                )
        data["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        return data
    finally:
        engine.client.close()
