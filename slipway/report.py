"""What a pipeline run reports: per-stage outcomes and the run as a whole.

A skipped stage is never shown as passed: the statuses keep "skipped" (a ``when``
condition or an override said so), "not-run" (something it needs failed) and
"cached" (an earlier run's result was reused) apart from "passed".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from slipway.tasks.artifacts import ArchivedFile
from slipway.tasks.images import BuiltImage, LocalImage
from slipway.tasks.junit_reports import SuiteReport
from slipway.tasks.quality_gate import QualityGateResult
from slipway.tasks.security_scan import ScanResult

StageStatus = Literal["passed", "failed", "skipped", "cached", "not-run"]
ICONS: dict[str, str] = {
    "passed": "✅ passed",
    "failed": "❌ failed",
    "skipped": "⏭️ skipped",
    "cached": "♻️ cached",
    "not-run": "⛔ not run",
}


@dataclass(frozen=True)
class StageOutcome:
    name: str
    status: StageStatus
    seconds: float = 0.0
    reason: str = ""
    group: str | None = None
    artifacts: tuple[ArchivedFile, ...] = ()
    tests: SuiteReport | None = None
    gate: QualityGateResult | None = None
    scan: ScanResult | None = None
    image: LocalImage | None = None
    pushed: BuiltImage | None = None
    # the stage's own work (its commands, the build, the scan) without orchestration;
    # ``seconds`` is the wall time from submission to end
    own_seconds: float | None = None
    # a failed command's last output lines (redacted), for the summary artifact
    output_tail: str = ""
    # a reused stage: what it took when it ran (``seconds`` is what reusing took now)
    original_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "cached", "skipped")

    @property
    def seconds_text(self) -> str:
        """``0.12 s``, or for a reused stage ``0.12 s (ran 4.55 s)``: now, then."""
        text = f"{self.seconds:.2f} s"
        if self.original_seconds is not None:
            text += f" (ran {self.original_seconds:.2f} s)"
        return text


DeployStatus = Literal[
    "deployed", "rolled-back", "rejected", "skipped", "superseded", "failed", "not-run"
]
DEPLOY_ICONS: dict[str, str] = {
    "deployed": "🚀 deployed",
    "rolled-back": "↩️ rolled back",
    "rejected": "⛔ rejected",
    "skipped": "⏭️ skipped",
    "superseded": "⏭️ superseded",
    "failed": "❌ failed",
    "not-run": "⛔ not run",
}


@dataclass(frozen=True)
class EnvironmentOutcome:
    """What became of the release in one environment."""

    name: str
    status: DeployStatus
    reason: str = ""
    seconds: float = 0.0
    image: str | None = None
    manifests_commit: str | None = None
    revert_commit: str | None = None
    revision: int | None = None
    approver: str | None = None
    smoke: str | None = None
    analysis: str | None = None
    rollback_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("deployed", "skipped", "superseded")


@dataclass(frozen=True)
class PipelineReport:
    app: str
    sha: str
    branch: str | None
    status: Literal["success", "failure"]
    stages: tuple[StageOutcome, ...] = field(default_factory=tuple)
    failed_stage: str | None = None
    reason: str | None = None
    run_url: str | None = None
    seconds: float = 0.0
    environments: tuple[EnvironmentOutcome, ...] = ()
    workspace: str | None = None  # where the run's workspace was kept, if it was

    def stage(self, name: str) -> StageOutcome:
        for outcome in self.stages:
            if outcome.name == name:
                return outcome
        raise KeyError(name)

    @property
    def test_reports(self) -> list[SuiteReport]:
        return [s.tests for s in self.stages if s.tests is not None]

    @property
    def artifacts(self) -> list[tuple[str, ArchivedFile]]:
        return [(s.name, a) for s in self.stages for a in s.artifacts]

    @property
    def pushed_image(self) -> BuiltImage | None:
        """The image later stages deploy (by digest), if this run pushed one."""
        return next((s.pushed for s in reversed(self.stages) if s.pushed is not None), None)


def stage_line(stage: StageOutcome) -> str:
    """One row of the CLI's stage table: name, status, time, test counts, reason."""
    indent = "    " if stage.group else "  "
    counts = f"  [{stage.tests.counts_text()}]" if stage.tests is not None else ""
    note = f"  {stage.reason}" if stage.reason else ""
    return (
        f"{indent}{stage.name:<18} {ICONS[stage.status]:<12} {stage.seconds_text:>9}{counts}{note}"
    )


def _cell(text: str, limit: int = 200) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary_markdown(report: PipelineReport) -> str:
    verdict = "succeeded" if report.status == "success" else "failed"
    lines = [
        f"# {report.app} @ `{report.sha[:12]}` {verdict}",
        "",
        f"Branch `{report.branch or '-'}`, {report.seconds:.1f} s.",
    ]
    if report.failed_stage:
        lines += [
            "",
            f"**Failed stage `{report.failed_stage}`**: {_cell(report.reason or '', 500)}",
        ]
    lines += ["", "| stage | status | time | note |", "|---|---|---:|---|"]
    for s in report.stages:
        name = f"↳ {s.name}" if s.group else s.name
        note = "; ".join(p for p in (s.tests.counts_text() if s.tests else "", s.reason) if p)
        lines.append(f"| {name} | {ICONS[s.status]} | {s.seconds_text} | {_cell(note)} |")
    if report.environments:
        lines += ["", "| environment | status | seconds | revision | approver | note |"]
        lines.append("|---|---|---:|---:|---|---|")
        for e in report.environments:
            lines.append(
                f"| {e.name} | {DEPLOY_ICONS[e.status]} | {e.seconds:.2f} | {e.revision or '-'} "
                f"| {_cell(e.approver or '-')} | {_cell(e.reason)} |"
            )
    for s in report.stages:
        if s.status == "failed" and s.output_tail:
            lines += ["", f"### `{s.name}`: last lines of output", "", *_fenced(s.output_tail)]
    return "\n".join(lines)


def _fenced(text: str) -> list[str]:
    """A code block that no run of backticks in ``text`` can close early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", text, fence]
