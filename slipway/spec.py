"""The pipeline file an application repository carries (its Jenkinsfile).

The models are strict (unknown keys are errors) because a typo such as
``timout: 60`` silently ignored is worse than a failed run. Semantic checks that
span several stages (unique names, ``needs`` references, cycles) live in
:mod:`slipway.spec_loader`, which also maps every problem back to a key path and a
line of the file.

Stage commands are shell text written by the repository's owners, exactly like a
Jenkins ``sh`` step. Values that other people control (branch names, commit
messages, tags) never get interpolated into them: they reach commands only as
environment variables (``SLIPWAY_BRANCH``, ``SLIPWAY_COMMIT``...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from slipway.deploy_spec import DeploySpec
from slipway.spec_types import (  # noqa: F401  (re-exported for stage spec modules)
    ENV_NAME_PATTERN,
    NAME_PATTERN,
    EnvMap,
    Name,
    RelGlobs,
    RelPath,
    StrictModel,
    StrList,
)
from slipway.tasks.containers import ContainerSpec
from slipway.tasks.dependency_cache import DependencyCaches
from slipway.tasks.images import ImageBuildSpec
from slipway.tasks.quality_gate import QualityGateSpec
from slipway.tasks.security_scan import SecurityScanSpec


class When(StrictModel):
    """Condition evaluated before a stage runs; every key given must hold.

    ``branch`` and ``changeset`` are globs (``*`` stays inside a path segment,
    ``**`` crosses them); ``env`` compares environment variables for equality.
    """

    branch: StrList | None = Field(
        default=None, description="Branch globs; the stage runs when any matches."
    )
    env: EnvMap | None = Field(
        default=None, description="Variables that must equal these values (pipeline env)."
    )
    changeset: RelGlobs | None = Field(
        default=None,
        description="Globs over files changed since the base commit; any match is enough.",
    )
    changeset_ignore: RelGlobs | None = Field(
        default=None,
        description="Globs of changed files that do not count (GitHub's paths-ignore): holds "
        "when some changed file matches none of them.",
    )
    all_of: list[When] | None = Field(default=None, alias="allOf")
    any_of: list[When] | None = Field(default=None, alias="anyOf")
    not_: When | None = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _not_empty(self) -> When:
        if not self.model_fields_set:
            raise ValueError(
                "empty condition: give branch, env, changeset, changeset_ignore, allOf, anyOf "
                "or not"
            )
        return self


def _retries_from_int(value: Any) -> Any:
    return {"attempts": value} if isinstance(value, int) and not isinstance(value, bool) else value


class RetryPolicy(StrictModel):
    """Prefect task retries: ``attempts`` more tries, waiting delay * backoff**n."""

    attempts: int = Field(default=0, ge=0, le=10, description="Retries after the first try.")
    delay: float = Field(default=1.0, ge=0, le=3600, description="Seconds before the first retry.")
    backoff: float = Field(
        default=2.0, ge=1, le=10, description="Each further delay is multiplied by this factor."
    )

    def delays(self) -> list[float]:
        return [round(self.delay * self.backoff**n, 3) for n in range(self.attempts)]


Retries = Annotated[RetryPolicy, BeforeValidator(_retries_from_int)]


BLOCK_REF_PATTERN = r"^[a-z0-9][a-z0-9-]*/[a-z0-9][a-z0-9-]*$"  # Prefect's slug rules
# names a stage's secrets may not take: slipway sets them (besides SLIPWAY_*)
RESERVED_SECRET_NAMES = ("PATH", "HOME", "CI")


class SecretRef(StrictModel):
    """One secret a stage asks for: a field of a saved Prefect block.

    ``block`` is Prefect's block slug, ``<block-type-slug>/<block-name>`` (what
    ``prefect block ls`` shows, e.g. ``docker-registry-credentials/prod``); ``field``
    a dotted path into it (``password``, ``webhook.url``); default ``value`` (Prefect's
    ``secret`` block).
    """

    block: str = Field(
        pattern=BLOCK_REF_PATTERN,
        description="Block slug: <block-type-slug>/<block-name>, e.g. secret/db-password.",
    )
    field: str = Field(
        default="value",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="Dotted path of the field in the block (default: value).",
    )


class PushImageSpec(StrictModel):
    """Push the image an earlier ``build_image`` stage built, to that stage's registry."""

    from_stage: Name = Field(alias="from", description="The build_image stage to push.")


STAGE_KINDS = ("run", "parallel", "quality_gate", "security_scan", "build_image", "push_image")


class Stage(StrictModel):
    """A step of the pipeline: exactly one of its kinds (``STAGE_KINDS``).

    ``run`` commands (on the worker, or in a ``container``), a ``parallel`` group,
    or one of the built-in stages: ``quality_gate``, ``security_scan``,
    ``build_image``, ``push_image``.
    """

    name: Name = Field(description="Unique stage name, shown in the Prefect UI.")
    run: StrList | None = Field(
        default=None, description="Shell commands, run in order with `bash -e`; owner-written."
    )
    parallel: list[Stage] | None = Field(
        default=None,
        description="Stages run at the same time; the group fails after all have finished.",
    )
    quality_gate: QualityGateSpec | None = Field(
        default=None, description="SonarQube's quality gate, or the local coverage/lint gate."
    )
    security_scan: SecurityScanSpec | None = Field(
        default=None, description="Code, secret, config and image scans under one policy."
    )
    build_image: ImageBuildSpec | None = Field(
        default=None, description="Build the Dockerfile into an image (and push it if asked)."
    )
    push_image: PushImageSpec | None = Field(
        default=None, description="Push the image of an earlier build_image stage."
    )
    container: ContainerSpec | None = Field(
        default=None, description="Run the 'run' commands in a container of this image."
    )
    work_pool: Name | None = Field(
        default=None,
        description="Run the 'run' commands on a worker of this Prefect work pool (like a "
        "Jenkins agent label), from a fresh checkout of the same commit there "
        "(flows/stage_runner.py); default: in the pipeline's own process.",
    )
    dir: RelPath = Field(default=".", description="Working directory inside the workspace.")
    env: EnvMap = Field(default_factory=dict, description="Extra environment variables.")
    secrets: dict[Annotated[str, Field(pattern=ENV_NAME_PATTERN)], SecretRef] = Field(
        default_factory=dict,
        description="Environment variables this stage alone gets from block fields "
        "(masked in all output), e.g. {REGISTRY_PASSWORD: {block: "
        "docker-registry-credentials/prod, field: password}}.",
    )
    timeout: float | None = Field(
        default=None, gt=0, le=86400, description="Seconds before the stage is killed."
    )
    retries: Retries | None = Field(default=None, description="Retry policy (or a count).")
    needs: StrList | None = Field(
        default=None,
        description="Stages this one waits for; default: the stage before it. [] = none.",
    )
    when: When | None = Field(default=None, description="Run only when this holds.")
    run_if_needs_skipped: bool = Field(
        default=False,
        description="Run even when a stage this one needs was skipped (by `when`, or because "
        "its own needs were); default false: such a stage is skipped too, like a GitHub "
        "Actions job without `if: always()`.",
    )
    matrix: dict[str, Any] | None = Field(
        default=None,
        description="Run the stage once per combination of these axes ({python: ['3.12', "
        "'3.13']}), with optional include / exclude lists (GitHub Actions semantics); the "
        "values reach commands as MATRIX_<AXIS>. Checked and expanded by slipway.matrix.",
    )
    fail_fast: bool | None = Field(
        default=None,
        description="For matrix and parallel stages: once a member fails, members not yet "
        "started do not start (default: true for a matrix, false for parallel).",
    )
    max_parallel: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="For matrix and parallel stages: members running at once (default: no "
        "limit beyond the pipeline's max_parallel).",
    )
    artifacts: RelGlobs = Field(
        default_factory=list, description="Globs of files to archive with a sha256 fingerprint."
    )
    junit: RelGlobs = Field(default_factory=list, description="Globs of JUnit XML reports.")
    allow_empty: bool = Field(
        default=False,
        description="JUnit reports holding no test pass instead of failing the stage "
        "(default false: a suite that ran nothing is broken).",
    )
    cache: bool = Field(
        default=True,
        description="Reuse the result for the same commit, spec and inputs (its workspace "
        "changes are put back).",
    )
    dependency_cache: DependencyCaches = Field(
        default_factory=list,
        description="Folders restored before the commands and saved after, keyed on lock "
        "files, across commits and branches (tasks/dependency_cache.py); one or a list.",
    )
    allow_inconclusive: bool = Field(
        default=False,
        description="A gate or scan that could not decide (missing data, a scanner absent) "
        "passes with a warning instead of failing the stage (default false).",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Stage:
        kinds = [k for k in STAGE_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            found = f"found {', '.join(kinds)}" if kinds else "found none"
            raise ValueError(f"a stage needs exactly one of {', '.join(STAGE_KINDS)} ({found})")
        if self.container is not None and self.run is None:
            raise ValueError("'container' goes with 'run' only")
        if self.work_pool is not None:
            if self.run is None:
                raise ValueError("'work_pool' goes with 'run' only")
            if self.artifacts:
                # the archive is the runner machine's disk; nothing carries files back
                raise ValueError(
                    "'artifacts' cannot be archived from a 'work_pool' stage: its files stay "
                    "on the runner's machine (archive them in a local stage)"
                )
        if self.allow_empty and not self.junit:
            raise ValueError("'allow_empty' goes with 'junit' only")
        if self.matrix is not None and self.parallel is not None:
            raise ValueError("'matrix' and 'parallel' do not go together")
        if (self.fail_fast is not None or self.max_parallel is not None) and (
            self.matrix is None and self.parallel is None
        ):
            raise ValueError("'fail_fast' and 'max_parallel' go with 'matrix' or 'parallel' only")
        if self.dependency_cache:
            if self.run is None:
                raise ValueError("'dependency_cache' goes with 'run' only")
            if self.work_pool is not None:
                raise ValueError(
                    "'dependency_cache' cannot be used on a 'work_pool' stage: the cache is "
                    "on this machine"
                )
            home_paths = [p for c in self.dependency_cache for p in c.paths if p[0] == "~"]
            if self.container is not None and home_paths:
                raise ValueError(
                    f"dependency_cache path {home_paths[0]!r}: '~' is the worker's HOME, not "
                    "the container's; cache a workspace path in a container stage"
                )
        if self.secrets:
            if self.run is None:
                raise ValueError("'secrets' goes with 'run' only")
            for name in self.secrets:
                if name in self.env:
                    raise ValueError(f"secrets.{name}: also set in 'env' (give it once)")
                if name in RESERVED_SECRET_NAMES or name.startswith("SLIPWAY_"):
                    raise ValueError(f"secrets.{name}: a name slipway sets itself")
        if self.allow_inconclusive and self.kind not in ("quality_gate", "security_scan"):
            raise ValueError("'allow_inconclusive' goes with quality_gate or security_scan only")
        if self.parallel is not None:
            if not self.parallel:
                raise ValueError("'parallel' needs at least one stage")
            for child in self.parallel:
                if child.parallel is not None:
                    raise ValueError(f"stage {child.name!r}: parallel groups do not nest")
                if child.needs is not None:
                    raise ValueError(
                        f"stage {child.name!r}: stages inside 'parallel' cannot have 'needs'"
                    )
                if child.matrix is not None:
                    raise ValueError(
                        f"stage {child.name!r}: a matrix inside 'parallel' is not supported "
                        "(make it a stage of its own)"
                    )
        return self

    @property
    def is_group(self) -> bool:
        return self.parallel is not None

    @property
    def kind(self) -> str:
        return next(k for k in STAGE_KINDS if getattr(self, k) is not None)

    @property
    def cacheable(self) -> bool:
        """Images live in an engine and are never reused from a cache; a code scan is
        reused only on the same day under the same policy (allowances expire)."""
        if self.security_scan is not None:
            return self.cache and not self.security_scan.image
        return self.cache and self.kind in ("run", "quality_gate")


class Defaults(StrictModel):
    timeout: float = Field(default=3600, gt=0, le=86400, description="Seconds; default 1 h.")
    retries: Retries = Field(default_factory=RetryPolicy)


class Pipeline(StrictModel):
    """A whole pipeline file (``slipway.yaml`` at the repository root)."""

    version: Literal[1] = Field(default=1, description="Pipeline file format version.")
    app: Name = Field(description="Application name, used in runs, caches and messages.")
    env: EnvMap = Field(default_factory=dict, description="Environment for every stage.")
    defaults: Defaults = Field(default_factory=Defaults)
    max_parallel: int = Field(default=8, ge=1, le=64, description="Stages running at once.")
    docker_host: Name | None = Field(
        default=None,
        description="prefect-docker DockerHost block for image and container stages "
        "(default: the worker's DOCKER_HOST).",
    )
    stages: list[Stage] = Field(min_length=1)
    deploy: DeploySpec | None = Field(
        default=None,
        description="Continuous delivery after the stages passed: GitOps bump, environments, "
        "approval, analysis and rollback.",
    )

    def all_stages(self) -> list[Stage]:
        """Top-level stages and the members of parallel groups, in file order."""
        found: list[Stage] = []
        for stage in self.stages:
            found.append(stage)
            found.extend(stage.parallel or [])
        return found

    def stage(self, name: str) -> Stage:
        for stage in self.all_stages():
            if stage.name == name:
                return stage
        raise KeyError(name)


class PipelineOverrides(BaseModel):
    """What a deployment or `prefect deployment run` may change without editing the file."""

    model_config = ConfigDict(extra="forbid")

    only: list[str] | None = Field(
        default=None,
        description="Run only these stages and what they need (slipway/stage_selection.py); "
        "others show as skipped.",
    )
    skip: list[str] = Field(default_factory=list, description="Stages to skip.")
    env: EnvMap = Field(default_factory=dict, description="Variables added to the pipeline env.")
