"""Evaluating ``when`` conditions before a stage runs.

The answer carries a reason in plain words, because a skipped stage must say why
it was skipped (in the log, the UI state message and the summary).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wcmatch import glob

from slipway.spec import When

_GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.BRACE


@dataclass(frozen=True)
class ConditionContext:
    """What a condition can look at: the ref being built and its changes."""

    branch: str | None
    env: Mapping[str, str]
    changed_files: Sequence[str]


@dataclass(frozen=True)
class Verdict:
    holds: bool
    reason: str


def branch_matches(branch: str | None, patterns: Sequence[str]) -> bool:
    return branch is not None and any(
        glob.globmatch(branch, p, flags=_GLOB_FLAGS) for p in patterns
    )


def changed_matches(files: Sequence[str], patterns: Sequence[str]) -> list[str]:
    return [f for f in files if any(glob.globmatch(f, p, flags=_GLOB_FLAGS) for p in patterns)]


def evaluate(when: When, ctx: ConditionContext) -> Verdict:
    """All keys of one ``when`` mapping must hold (like Jenkins' ``when`` block).

    ``changeset`` holds when *any* changed file matches (GitHub's ``paths``), so
    ``not: {changeset: [...]}`` holds only when *no* changed file matches;
    ``changeset_ignore`` holds when *some* changed file matches none of its globs
    (GitHub's ``paths-ignore``: skip a docs-only change, run for anything else).
    """
    checks: list[Verdict] = []
    if when.branch is not None:
        ok = branch_matches(ctx.branch, when.branch)
        shown = ", ".join(when.branch)
        checks.append(
            Verdict(ok, f"branch {ctx.branch!r} {'matches' if ok else 'does not match'} {shown}")
        )
    if when.env is not None:
        for name, wanted in when.env.items():
            actual = ctx.env.get(name)
            ok = actual == wanted
            checks.append(
                Verdict(
                    ok,
                    (
                        f"env {name}={actual!r}"
                        if actual is not None
                        else f"env {name} is unset (wanted {wanted!r})"
                    )
                    + ("" if ok or actual is None else f" is not {wanted!r}"),
                )
            )
    if when.changeset is not None:
        hits = changed_matches(ctx.changed_files, when.changeset)
        shown = ", ".join(when.changeset)
        checks.append(
            Verdict(
                bool(hits),
                f"changeset matches {shown} ({hits[0]}{' ...' if len(hits) > 1 else ''})"
                if hits
                else f"no changed file matches {shown}",
            )
        )
    if when.changeset_ignore is not None:
        counted = [f for f in ctx.changed_files if not changed_matches([f], when.changeset_ignore)]
        shown = ", ".join(when.changeset_ignore)
        checks.append(
            Verdict(
                bool(counted),
                f"{counted[0]}{' ...' if len(counted) > 1 else ''} changed outside {shown}"
                if counted
                else f"every changed file matches changeset_ignore {shown}"
                if ctx.changed_files
                else "no file changed",
            )
        )
    if when.all_of is not None:
        parts = [evaluate(c, ctx) for c in when.all_of]
        failed = [p for p in parts if not p.holds]
        checks.append(
            Verdict(not failed, f"allOf: {failed[0].reason}" if failed else "allOf: all hold")
        )
    if when.any_of is not None:
        parts = [evaluate(c, ctx) for c in when.any_of]
        passed = [p for p in parts if p.holds]
        checks.append(
            Verdict(
                bool(passed),
                f"anyOf: {passed[0].reason}"
                if passed
                else "anyOf: none holds (" + "; ".join(p.reason for p in parts) + ")",
            )
        )
    if when.not_ is not None:
        inner = evaluate(when.not_, ctx)
        checks.append(Verdict(not inner.holds, f"not ({inner.reason})"))
    failed = [c for c in checks if not c.holds]
    if failed:
        return Verdict(False, failed[0].reason)
    return Verdict(True, "; ".join(c.reason for c in checks))
