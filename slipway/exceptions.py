"""The one error tree of slipway.

Every error a pipeline raises on purpose is a :class:`SlipwayError`. The tree says
whether trying again can help, so retry policies and people can decide quickly::

    SlipwayError
    ├── ConfigError (ValueError)          bad input: fix the file or the parameter
    │   ├── SpecError                     pipeline file invalid (lists every problem)
    │   ├── UnsafeInputError              a ref, path or name that could escape or inject
    │   ├── BranchNotAllowed              this branch may not reach that environment
    │   ├── RepositoryNotAllowed          a deployment's run may not build that repository
    │   ├── SuspendNotSupported           suspend needs a run started from a deployment
    │   └── ApprovalInputRefused          a decision that does not fit the approval form
    ├── StageCancelled                    the run was cancelled (Ctrl-C, SIGTERM); not a failure
    ├── PermanentError                    retrying the same thing gives the same answer
    │   ├── CheckoutError                 ref missing, authentication refused
    │   │   └── CommitNotOnBranch         the commit is not reachable from the branch's head
    │   ├── StageFailed                   a command exited non-zero
    │   │   └── StageTimeout              a command ran past its timeout
    │   ├── ReportError                   a report (JUnit, coverage) is unreadable or unsafe
    │   │   └── ScannerReportError        SonarQube's report-task.txt missing or foreign
    │   ├── QualityGateError              the gate could not be evaluated
    │   │   ├── GateTimeout               compute-engine task not done in time
    │   │   ├── GateAuthError             token refused (401/403)
    │   │   └── AnalysisFailed            compute-engine task FAILED / CANCELED
    │   ├── ScannerError                  a security scanner broke
    │   ├── ScannerUnavailable            a scanner cannot run here (skipped)
    │   ├── ImageBuildError               a Dockerfile step or the engine failed
    │   │   └── ImageBuildTimeout         the build ran past its timeout
    │   ├── RegistryError                 credentials refused, unknown host, denied
    │   ├── ApprovalClosed                the run asking for approval has ended
    │   ├── TriggerRefused                a push event not signed by the receiver, stale or replayed
    │   ├── ManifestRepoError             the manifests repo refused (auth, branch, hook)
    │   ├── RevertConflict                a revert collides with later changes
    │   ├── ManifestRenderError           manifests cannot be rendered (bad YAML, kustomize)
    │   ├── DeployError                   the cluster refused an object (403, 422, conflict)
    │   │   ├── RolloutFailed             a rollout failed (ProgressDeadlineExceeded, ...)
    │   │   ├── RolloutTimeout            a rollout did not finish in time
    │   │   └── SyncFailed                a GitOps sync failed after its retries
    │   └── DeployBusy                    another deploy of the app holds the slot
    └── TemporaryError                    a retry may succeed (network, busy server)
        ├── RemoteUnavailable             a server could not be reached
        ├── ApprovalNotDelivered          the run did not pause for the decision in time
        ├── PushContention                every push lost the race to other pushers
        └── ClusterUnreachable            the Kubernetes API did not answer

Third-party errors (git, HTTP, docker) are translated once, where they are raised,
with ``raise ... from exc`` and a short message that never holds a secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class SlipwayError(Exception):
    """Root of every error slipway raises on purpose."""


class ConfigError(SlipwayError, ValueError):
    """The input is wrong; nothing was run or changed."""


@dataclass(frozen=True)
class SpecProblem:
    """One problem in a pipeline file: where (key path and line) and what."""

    path: str
    message: str
    line: int | None = None

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        location = f" {self.path}:" if self.path else ""
        return f"{where}:{location} {self.message}"


class SpecError(ConfigError):
    """A pipeline file failed validation; ``problems`` lists each one."""

    def __init__(self, file: str, problems: list[SpecProblem]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  {p.render(file)}" for p in problems)
        count = len(problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"invalid pipeline file {file} ({count} {noun}):\n{lines}")


class UnsafeInputError(ConfigError):
    """A user-controlled value (ref, path, name) was refused before use."""


class StageCancelled(SlipwayError):
    """A stage was stopped because its run is being cancelled; its processes are gone."""

    def __init__(self, stage: str, message: str = "cancelled") -> None:
        self.stage = stage
        super().__init__(f"stage {stage!r} cancelled: {message}")


class PermanentError(SlipwayError):
    """Retrying the same operation cannot succeed."""


class CheckoutError(PermanentError):
    """The repository or the ref could not be checked out."""


class CommitNotOnBranch(CheckoutError):
    """A run claimed a branch its commit is not on; nothing ran as that branch."""

    def __init__(self, commit: str, branch: str, ref: str | None = None) -> None:
        self.commit = commit
        self.branch = branch
        asked = f" ({ref!r})" if ref and ref != commit else ""
        super().__init__(
            f"commit {commit}{asked} is not on branch {branch!r}: it is not reachable from "
            f"the branch's head, so it cannot run as {branch!r}"
        )


class StageFailed(PermanentError):
    """A stage's command exited with a non-zero status."""

    def __init__(self, stage: str, message: str, *, output_tail: str = "") -> None:
        self.stage = stage
        self.output_tail = output_tail  # the command's last output lines (redacted)
        super().__init__(f"stage {stage!r} failed: {message}")


class StageTimeout(StageFailed):
    """A stage's command was killed at its timeout."""


class ReportError(PermanentError):
    """A test report could not be read safely."""


class TemporaryError(SlipwayError):
    """A retry may succeed."""


class RemoteUnavailable(TemporaryError):
    """A remote server (git, registry, API) could not be reached."""


# --- stage families -------------------------------------------------------------


class ImageBuildError(PermanentError):
    """The build failed: a Dockerfile step, the build context or the engine refused it."""


class ImageBuildTimeout(ImageBuildError):
    """The build ran past its timeout and was abandoned."""


class RegistryError(PermanentError):
    """The registry refused: wrong credentials, unknown host, access denied, bad name."""


class QualityGateError(PermanentError):
    """The quality gate could not be evaluated; asking again gives the same answer."""


class GateTimeout(QualityGateError):
    """The compute-engine task was still queued or running when the timeout ran out."""


class GateAuthError(QualityGateError):
    """SonarQube refused the token (401) or its permissions (403)."""


class AnalysisFailed(QualityGateError):
    """The compute-engine task ended FAILED or CANCELED: there is no analysis to gate."""


class ScannerReportError(ReportError):
    """report-task.txt is missing, unreadable, or names another project."""


class ScannerError(PermanentError):
    """A scanner ran but broke; ``findings`` holds what it reported before breaking."""

    def __init__(self, message: str, findings: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.findings = list(findings)


class ScannerUnavailable(PermanentError):
    """A scanner cannot run here at all (not installed, nothing to scan); the scan skips it."""


class BranchNotAllowed(ConfigError):
    """The branch may not reach the environment under its approval policy."""


class RepositoryNotAllowed(ConfigError):
    """A run of a deployment names a repository outside its allowlist (never a block)."""


class SuspendNotSupported(ConfigError):
    """The run cannot be suspended: it was not started from a deployment."""


class ApprovalInputRefused(ConfigError):
    """The server refused the decision as input (it does not match the form)."""


class ApprovalClosed(PermanentError):
    """The run can no longer take a decision: it ended, or its pause timed out."""


class TriggerRefused(PermanentError):
    """A run's push event is not the receiver's: unsigned, forged, stale or replayed."""


class ApprovalNotDelivered(TemporaryError):
    """The run did not wait for a decision within approve_run's timeout."""


class ManifestRepoError(PermanentError):
    """git refused: authentication, a missing branch, a hook or a protected branch."""


class RevertConflict(PermanentError):
    """A revert collides with later changes to the same lines; a person must decide."""


class PushContention(TemporaryError):
    """Every attempt lost the race to other pushers; a later retry may get through."""


class ManifestRenderError(PermanentError):
    """The environment's manifests cannot be rendered (bad YAML, unsupported kustomize)."""


class DeployError(PermanentError):
    """The cluster refused to take an object (forbidden, invalid, conflict)."""


class RolloutFailed(DeployError):
    """A rollout failed; the message carries the reason the cluster gave."""


class RolloutTimeout(DeployError):
    """A rollout did not finish within the stage's deadline."""


class DeployBusy(PermanentError):
    """Another deploy of the same application and environment holds the slot."""


class SyncFailed(DeployError):
    """A GitOps sync ended with an error: it failed after its retries, or it refused to
    prune because the manifests rendered nothing (allow_empty off)."""


class ClusterUnreachable(TemporaryError):
    """The Kubernetes API did not answer (wrong address, down, TLS refused)."""


def retry_temporary_errors(task: object, task_run: object, state: object) -> bool:
    """A Prefect ``retry_condition_fn``: retry what the tree calls temporary, nothing else.

    A wrong ref, password or gate will not get better on a second try; a lost push
    race or an unreachable server may.
    """
    try:
        state.result()  # type: ignore[attr-defined]
    except TemporaryError:
        return True
    except Exception:
        return False
    return False
