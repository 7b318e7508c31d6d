"""Walking the stage graph: what may start now, what must wait, what never runs.

Stages start as soon as everything they need has passed (or was reused from the
cache), in file order, up to ``max_parallel`` at once — so cheap stages placed
first fail fast. A failed stage marks everything that needs it, directly or not,
as "not-run"; independent stages carry on. Members of a parallel group all run to
the end; the group fails afterwards if any member failed — unless the group says
``fail_fast`` (a matrix does by default, like GitHub Actions): then members not yet
started when one fails do not start ("not-run"). ``max_parallel`` on a group caps
how many of its members run at once.

A stage whose ``needs:`` names a stage skipped by a condition (``when``, or because
its own needs were) is skipped too, like a GitHub Actions job whose needed job was
skipped, unless it says ``run_if_needs_skipped: true`` (GitHub's ``if: always()``
role). The implicit dependency on the stage before (no ``needs:``) is order, as
between Jenkins stages: a skip does not travel along it. A stage left out by a run
parameter (``stages`` / ``skip_stages``) does not propagate either: the person
chose that one stage, not its dependents.

The walker itself knows nothing of Prefect: it is driven by the flow, which
submits the leaves it hands out and reports back how each ended.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from slipway.report import StageOutcome
from slipway.spec import Pipeline, Stage
from slipway.spec_loader import dependencies


@dataclass(frozen=True)
class Decision:
    """Whether a stage should run; ``reason`` says why not."""

    run: bool
    reason: str = ""
    # whether the stages that need a skipped one are skipped as well (a ``when``
    # condition: yes; a run parameter choosing stages: no)
    propagates: bool = True


class StageWalker:
    """Hands out runnable leaf stages and records their outcomes."""

    def __init__(self, pipeline: Pipeline, decide: Callable[[Stage], Decision]) -> None:
        self.pipeline = pipeline
        self.decide = decide
        self.deps = dependencies(pipeline)
        self.outcomes: dict[str, StageOutcome] = {}
        self._started: set[str] = set()
        self._queue: list[Stage] = []  # leaves ready to start, in file order
        self._running: set[str] = set()
        self._group_of = {c.name: s for s in pipeline.stages for c in (s.parallel or [])}
        self._skips_propagate: set[str] = set()  # skipped stages whose dependents skip too
        self._cancelled: list[StageOutcome] = []  # fail-fast members, reported by advance()

    # --- bookkeeping ----------------------------------------------------
    @property
    def done(self) -> bool:
        """Every stage has an outcome, and advance() has handed out every one it settled."""
        return not self._cancelled and all(s.name in self.outcomes for s in self.pipeline.stages)

    @property
    def running(self) -> int:
        return len(self._running)

    def record(self, outcome: StageOutcome) -> None:
        self.outcomes[outcome.name] = outcome
        self._running.discard(outcome.name)
        group = self._group_of.get(outcome.name)
        if group is not None:
            if outcome.status == "failed" and group.fail_fast:
                self._stop_members(group, outcome.name)
            self._close_group(group)

    def _stop_members(self, group: Stage, failed: str) -> None:
        """Fail fast: the group's members still queued never start."""
        names = {m.name for m in group.parallel or []}
        stopped = [s for s in self._queue if s.name in names]
        self._queue = [s for s in self._queue if s.name not in names]
        reason = f"fail_fast: {failed!r} failed"
        for member in stopped:
            outcome = StageOutcome(member.name, "not-run", 0.0, reason, group=group.name)
            self.outcomes[member.name] = outcome
            self._cancelled.append(outcome)

    def _close_group(self, group: Stage) -> None:
        members = group.parallel or []
        if group.name in self.outcomes or any(m.name not in self.outcomes for m in members):
            return
        outcomes = [self.outcomes[m.name] for m in members]
        failed = [o for o in outcomes if o.status == "failed"]
        seconds = max((o.seconds for o in outcomes), default=0.0)
        if failed:
            reason = "; ".join(f"{o.name}: {o.reason}" for o in failed)
            self.outcomes[group.name] = StageOutcome(group.name, "failed", seconds, reason)
        elif all(o.status == "skipped" for o in outcomes):
            self.outcomes[group.name] = StageOutcome(
                group.name, "skipped", 0.0, "every member skipped"
            )
            if all(m.name in self._skips_propagate for m in members):
                self._skips_propagate.add(group.name)
        elif all(o.status in ("cached", "skipped") for o in outcomes):
            self.outcomes[group.name] = StageOutcome(
                group.name, "cached", seconds, "every member reused"
            )
        else:
            self.outcomes[group.name] = StageOutcome(group.name, "passed", seconds)

    # --- scheduling -----------------------------------------------------
    def advance(self) -> list[StageOutcome]:
        """Resolve stages that will not run; queue leaves that may. Returns new non-runs."""
        settled, self._cancelled = self._cancelled, []
        for stage in self.pipeline.stages:
            if stage.name in self._started or stage.name in self.outcomes:
                continue
            deps = self.deps[stage.name]
            if any(d not in self.outcomes for d in deps):
                continue
            self._started.add(stage.name)
            broken = [d for d in deps if self.outcomes[d].status in ("failed", "not-run")]
            if broken:
                reason = f"needs {broken[0]!r}, which " + (
                    "failed"
                    if self.outcomes[broken[0]].status == "failed"
                    else f"did not run ({self._root_failure(broken[0])} failed)"
                )
                settled += self._settle(stage, "not-run", reason)
                continue
            # only through `needs:`: the implicit "stage before" is order, as in Jenkins
            explicit = stage.needs or []
            skipped = [d for d in explicit if d in self._skips_propagate]
            if skipped and not stage.run_if_needs_skipped:
                reason = f"needs {skipped[0]!r}, which was skipped"
                settled += self._settle(stage, "skipped", reason, propagates=True)
                continue
            decision = self.decide(stage)
            if not decision.run:
                settled += self._settle(stage, "skipped", decision.reason, decision.propagates)
                continue
            if stage.parallel is None:
                self._queue.append(stage)
                continue
            for member in stage.parallel:
                member_decision = self.decide(member)
                if member_decision.run:
                    self._queue.append(member)
                else:
                    settled += self._settle(
                        member, "skipped", member_decision.reason, member_decision.propagates
                    )
        return settled

    def _root_failure(self, name: str) -> str:
        """The failed stage at the start of a chain of stages that did not run."""
        seen: set[str] = set()
        while name not in seen:
            seen.add(name)
            if self.outcomes[name].status == "failed":
                return repr(name)
            broken = [
                d
                for d in self.deps.get(name, [])
                if self.outcomes.get(d) and not self.outcomes[d].ok
            ]
            if not broken:
                break
            name = broken[0]
        return repr(name)

    def _settle(
        self, stage: Stage, status: str, reason: str, propagates: bool = False
    ) -> list[StageOutcome]:
        outcomes = [StageOutcome(stage.name, status, 0.0, reason)]  # type: ignore[arg-type]
        if status == "skipped" and propagates:
            self._skips_propagate.update([stage.name, *(m.name for m in stage.parallel or [])])
        if stage.parallel is not None:
            outcomes = [
                StageOutcome(m.name, status, 0.0, reason, group=stage.name)  # type: ignore[arg-type]
                for m in stage.parallel
            ] + outcomes
        for outcome in outcomes:
            self.outcomes[outcome.name] = outcome
        for outcome in outcomes:
            group = self._group_of.get(outcome.name)
            if group is not None:
                self._close_group(group)
        return [o for o in outcomes if o.name in self.outcomes]

    def take(self, slots: int) -> list[Stage]:
        """Up to ``slots`` queued leaves, in file order, within their group's max_parallel."""
        busy = Counter(self._group_of[n].name for n in self._running if n in self._group_of)
        taken: list[Stage] = []
        waiting: list[Stage] = []
        for stage in self._queue:
            group = self._group_of.get(stage.name)
            limit = group.max_parallel if group is not None else None
            if len(taken) < slots and (group is None or limit is None or busy[group.name] < limit):
                taken.append(stage)
                if group is not None:
                    busy[group.name] += 1
            else:
                waiting.append(stage)
        self._queue = waiting
        self._running.update(s.name for s in taken)
        return taken

    def group_of(self, name: str) -> str | None:
        group = self._group_of.get(name)
        return group.name if group else None

    def ordered(self) -> list[StageOutcome]:
        """Outcomes in file order, members right after their group."""
        result = []
        for stage in self.pipeline.stages:
            if stage.name in self.outcomes:
                result.append(self.outcomes[stage.name])
            for member in stage.parallel or []:
                if member.name in self.outcomes:
                    o = self.outcomes[member.name]
                    result.append(
                        o if o.group else StageOutcome(**{**o.__dict__, "group": stage.name})
                    )
        return result
