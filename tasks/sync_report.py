"""What a person reads about a sync: the Markdown artifact, the plan, the Slack message.

The artifact leads with the verdict (sync status, health, revision, what was applied,
reverted and pruned), then one section per object that was out of sync: why (drift,
changed in git, missing, not in git), what was done about it or why not, the fields
that differed, and a unified diff (``-`` the cluster, ``+`` git). A first sync of a
thousand objects would make an unreadable page, so at most :data:`MAX_DIFFS` diffs of
at most :data:`MAX_DIFF_LINES` lines are shown; the rest are counted. Secret values
never appear (:mod:`slipway.tasks.sync_diff` masks them); the caller redacts the
whole text as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slipway.tasks.sync import ObjectResult, SyncResult

MAX_DIFFS = 50
MAX_DIFF_LINES = 200
MAX_FIELDS = 8

_REASONS = {
    "missing": "missing from the cluster",
    "changed in git": "changed in git",
    "drift": "changed in the cluster by hand (drift)",
    "tracking": "tracking labels missing or stale",
    "not in git": "no longer in git",
}
_ACTIONS = {
    "created": "created",
    "updated": "applied",
    "reverted": "**reverted** to git",
    "pruned": "pruned",
    "skipped": "not applied",
    "none": "",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fields(fields: Sequence[str]) -> str:
    shown = ", ".join(f"`{f}`" for f in fields[:MAX_FIELDS])
    more = len(fields) - MAX_FIELDS
    return shown + (f" and {more} more" if more > 0 else "")


def _diff_block(text: str) -> list[str]:
    lines = text.rstrip("\n").splitlines()
    if len(lines) > MAX_DIFF_LINES:
        cut = len(lines) - MAX_DIFF_LINES
        lines = [*lines[:MAX_DIFF_LINES], f"... {cut} more lines"]
    fence = "````" if any(line.startswith("```") for line in lines) else "```"
    return [f"{fence}diff", *lines, fence]


def object_sections(objects: Sequence[ObjectResult], *, verbs: bool = True) -> list[str]:
    """One section per object: heading, reason, action, fields, diff."""
    out: list[str] = []
    for index, obj in enumerate(objects):
        if index == MAX_DIFFS:
            rest = objects[MAX_DIFFS:]
            out += [
                "",
                f"... and {len(rest)} more objects: " + ", ".join(str(o.ref) for o in rest[:20]),
            ]
            if len(rest) > 20:
                out[-1] += ", ..."
            break
        heading = f"#### {obj.ref.kind} `{obj.ref.name}`"
        if obj.ref.namespace:
            heading += f" in `{obj.ref.namespace}`"
        out += ["", heading, ""]
        said = _REASONS.get(obj.reason, obj.reason)
        if verbs:
            action = _ACTIONS.get(obj.action, obj.action)
            note = f" ({obj.note})" if obj.note else ""
            said += f"; {action}{note}" if action else ""
            said += f"; now {obj.status}, {obj.health}"
        out.append(f"{said[0].upper()}{said[1:]}.")
        real = [f for f in obj.diff.fields if not f.startswith("<")]
        if real:
            out += ["", f"Fields: {_fields(real)}"]
        if obj.diff.text:
            out += ["", *_diff_block(obj.diff.text)]
    return out


def sync_markdown(result: SyncResult) -> str:
    """The sync's artifact: verdict, counts, then each object that was out of sync."""
    title = "Dry run of the sync" if result.dry_run else "Sync"
    rows: list[tuple[str, Any]] = [
        ("sync status", f"**{result.sync_status}**"),
        ("health", f"**{result.health}**"),
        ("cluster / namespace", f"{result.cluster} / {result.namespace}"),
        ("revision", f"{result.target_revision} ({result.revision[:12] or 'not read'})"),
        ("objects in git", sum(1 for o in result.objects if o.reason != "not in git")),
        ("out of sync before", len(result.out_of_sync)),
        ("applied", len(result.applied) - len(result.reverted)),
        ("reverted (drift)", len(result.reverted)),
        ("drift not reverted", len(result.unrepaired_drift)),
        ("pruned", len(result.pruned)),
        ("attempts", result.attempts),
        ("seconds", f"{result.seconds:.2f}"),
    ]
    lines = [f"### {title} of `{result.app}`", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    lines += ["| | |", "|---|---|", *(f"| {k} | {_cell(str(v))} |" for k, v in rows)]
    unhealthy = [
        o
        for o in result.objects
        if o.health.status not in ("Healthy",) and o.reason != "not in git"
    ]
    if unhealthy:
        lines += ["", "| not healthy | health |", "|---|---|"]
        lines += [
            f"| {_cell(str(o.ref))} | {_cell(str(o.health))} |" for o in unhealthy[:MAX_DIFFS]
        ]
    changed = result.out_of_sync
    if changed:
        lines += ["", "#### What differed from git"]
        lines += object_sections(changed)
    else:
        lines += ["", "Every object matched git on the fields git sets."]
    return "\n".join(lines) + "\n"


def plan_markdown(
    environment: str,
    revision: str,
    image: str | None,
    changes: Sequence[ObjectResult],
    total: int,
) -> str:
    """What a deploy to ``environment`` will change, for the approval form."""
    lines = [f"### What changes in {environment}", ""]
    source = f"manifests at `{revision[:12]}`"
    if image:
        source += f" with the image bumped to `{image}`"
    if not changes:
        lines.append(f"Nothing: the {total} objects of the {source} match the cluster.")
        return "\n".join(lines) + "\n"
    noun = "object changes" if len(changes) == 1 else "objects change"
    lines.append(f"{len(changes)} of {total} {noun} ({source}); `-` the cluster now, `+` after:")
    lines += object_sections(changes, verbs=False)
    return "\n".join(lines) + "\n"


def slack_summary(result: SyncResult) -> tuple[str, str]:
    """(title, body) for a notification about drift, a failed sync or bad health."""
    if result.error:
        title = f"Sync of {result.app} failed"
    elif result.unrepaired_drift:
        title = f"Drift in {result.app}: {len(result.unrepaired_drift)} objects differ from git"
    elif result.reverted:
        title = f"Drift in {result.app} reverted ({len(result.reverted)} objects)"
    else:
        title = f"{result.app} is {result.health}"
    body = [f"*{result.cluster} / {result.namespace}*: {result.sync_status}, {result.health}"]
    if result.error:
        body.append(f"Error: {result.error}")
    for obj in result.drift[:10]:
        fields = ", ".join(f for f in obj.diff.fields[:4] if not f.startswith("<"))
        verb = "reverted" if obj.action == "reverted" else "not reverted (self_heal off)"
        body.append(f"• {obj.ref}: {fields} — {verb}")
    for obj in [o for o in result.objects if o.health.status == "Degraded"][:5]:
        body.append(f"• {obj.ref}: {obj.health}")
    return title, "\n".join(body)
