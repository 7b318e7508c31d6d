"""``--stage X`` (the ``stages`` parameter): X and everything it needs.

Re-running one stage the way GitHub's "re-run job" does — that job alone, on the
earlier results of its needs — only works where those results are kept, and here they
are: a needed stage whose result is cached is reused (its workspace changes put back),
one that is not runs. So the selection is X plus its needs, transitively; the stage
cache decides which of them actually run. Stages X does not need show as skipped.
"""

from __future__ import annotations

from slipway.spec import Pipeline, PipelineOverrides
from slipway.spec_loader import dependencies


def with_needs(pipeline: Pipeline, overrides: PipelineOverrides) -> PipelineOverrides:
    """The overrides with ``only`` grown by what its stages need (directly or not)."""
    if overrides.only is None:
        return overrides
    group_of = {m.name: s.name for s in pipeline.stages for m in s.parallel or []}
    deps = dependencies(pipeline)
    pending = [group_of.get(name, name) for name in overrides.only]
    needed: set[str] = set()
    while pending:
        for dep in deps.get(pending.pop(), []):
            if dep not in needed:
                needed.add(dep)
                pending.append(dep)
    chosen = set(overrides.only) | needed
    ordered = [s.name for s in pipeline.all_stages() if s.name in chosen]
    return overrides.model_copy(update={"only": ordered})
