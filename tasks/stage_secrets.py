"""The secrets of a run: registered for masking up front, handed to the stages that ask.

A pipeline file names blocks in many places (a registry for ``build_image``, a
SonarQube server, the GitOps repository, clusters, Prometheus) and a ``run`` stage
may ask for single fields of blocks in its ``secrets:``. Right after the file is
loaded, :func:`load_run_secrets` loads every one of them, registers every secret
they hold with the run's redactor (so output is masked from the first stage on, not
from the stage that happens to use the block), and resolves each stage's
``secrets:`` into the values that stage alone gets in its environment.

A block the file names for a built-in stage but that cannot be loaded is left to
that stage to report (its own error says what and where); a block a stage asks a
secret of must exist: the run fails before any stage starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prefect.blocks.core import Block
from prefect_docker import DockerHost, DockerRegistryCredentials
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials
from pydantic import BaseModel

from slipway.blocks.gitops import ManifestsRepository
from slipway.blocks.prometheus import PrometheusServer
from slipway.blocks.sonarqube import SonarQubeServer
from slipway.exceptions import ConfigError
from slipway.redact import Redactor, block_secret_values
from slipway.spec import Pipeline, SecretRef


@dataclass(frozen=True)
class BlockUse:
    """A block the pipeline file names: one of ``types`` called ``name``, at ``where``."""

    types: tuple[type[Block], ...]
    name: str
    where: str


def blocks_named(pipeline: Pipeline, *, cluster: str | None = None) -> list[BlockUse]:
    """Every credentials-holding block the file (and the run's ``cluster``) names."""
    clusters = (KubernetesCredentials, KubernetesClusterConfig)
    uses: list[BlockUse] = []
    if pipeline.docker_host:
        uses.append(BlockUse((DockerHost,), pipeline.docker_host, "docker_host"))
    for stage in pipeline.all_stages():
        where = f"stage {stage.name}"
        if stage.build_image is not None and stage.build_image.registry:
            uses.append(BlockUse((DockerRegistryCredentials,), stage.build_image.registry, where))
        gate = stage.quality_gate
        if gate is not None and gate.sonarqube is not None:
            uses.append(BlockUse((SonarQubeServer,), gate.sonarqube.server, where))
    deploy = pipeline.deploy
    if deploy is not None:
        uses.append(BlockUse((ManifestsRepository,), deploy.manifests, "deploy.manifests"))
        if deploy.prometheus:
            uses.append(BlockUse((PrometheusServer,), deploy.prometheus, "deploy.prometheus"))
        for environment in deploy.environments:
            name = environment.cluster or cluster
            if name:
                where = f"deploy.environments.{environment.name}.cluster"
                uses.append(BlockUse(clusters, name, where))
    return uses


async def _load_any(use: BlockUse) -> Block | None:
    for block_type in use.types:
        try:
            return await block_type.aload(use.name)
        except (ValueError, RuntimeError):  # not found / not valid: its stage says so
            continue
    return None


async def _load_ref(stage: str, variable: str, ref: SecretRef) -> Block:
    where = f"stage {stage}: secrets.{variable}"
    try:
        return await Block.aload(ref.block)
    except ValueError:
        raise ConfigError(f"{where}: no block {ref.block!r} on the Prefect server") from None
    except KeyError:
        kind = ref.block.split("/", 1)[0]
        raise ConfigError(f"{where}: unknown block type {kind!r} in {ref.block!r}") from None
    except RuntimeError:  # failed validation; pydantic's text may echo the values
        raise ConfigError(f"{where}: block {ref.block!r} does not load (invalid)") from None


def field_value(block: BaseModel, path: str, *, where: str) -> str:
    """The value at the dotted ``path`` of ``block`` as text, unwrapped if secret."""
    value: object = block
    for part in path.split("."):
        if not isinstance(value, BaseModel) or part not in type(value).model_fields:
            raise ConfigError(f"{where}: the block has no field {path!r}")
        value = getattr(value, part)
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()  # type: ignore[union-attr]
    if isinstance(value, bytes):
        value = value.decode()
    if value is None:
        raise ConfigError(f"{where}: field {path!r} of the block is empty")
    if not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: field {path!r} is not a single value")
    return str(value)


async def load_run_secrets(
    pipeline: Pipeline, redactor: Redactor, *, cluster: str | None = None
) -> dict[str, dict[str, str]]:
    """Register every secret of every block the run names; return each stage's secrets.

    Raises:
        ConfigError: a block a stage's ``secrets:`` names is missing, invalid or
            lacks the field.
    """
    for use in blocks_named(pipeline, cluster=cluster):
        block = await _load_any(use)
        if block is not None:
            redactor.add(*block_secret_values(block))
    by_stage: dict[str, dict[str, str]] = {}
    for stage in pipeline.all_stages():
        if stage.secrets:
            by_stage[stage.name] = await resolve_stage_secrets(stage.name, stage.secrets, redactor)
    return by_stage


async def resolve_stage_secrets(
    stage: str, secrets: Mapping[str, SecretRef], redactor: Redactor
) -> dict[str, str]:
    """One stage's ``secrets:`` as environment values, each registered for masking
    (with the rest of its block) before it is returned."""
    values: dict[str, str] = {}
    for variable, ref in secrets.items():
        block = await _load_ref(stage, variable, ref)
        redactor.add(*block_secret_values(block))
        where = f"stage {stage}: secrets.{variable} ({ref.block})"
        values[variable] = field_value(block, ref.field, where=where)
        redactor.add(values[variable])  # a plain field asked for as a secret is one too
    return values
