"""The DORA report as a PNG: four panels, one line (or bar group) per app, weeks along x.

matplotlib with its Agg backend (no display, no GUI toolkit: a worker has neither),
through the object API (``Figure``), never ``pyplot``: pyplot keeps global state
that a long-lived worker running many reports would accumulate.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from slipway.tasks.dora import DoraReport, WeekMetrics

_HOUR = 3600.0


def _series(report: DoraReport, app: str) -> list[WeekMetrics]:
    return [r for r in report.rows if r.app == app]


def render_chart(report: DoraReport, path: Path, *, dpi: int = 100) -> Path:
    """Draw the report into ``path`` (PNG, about 1100 x 750 px at the default dpi).

    Panels: deploys per week (bars), change failure rate (%), median lead time and
    median time to restore (hours, weeks without a value left as gaps). An empty
    report still gives a chart, saying there were no deploys.
    """
    figure = Figure(figsize=(11, 7.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True)
    weeks = list(report.weeks)
    x = list(range(len(weeks)))
    apps = report.apps
    width = 0.8 / max(len(apps), 1)
    (deploys, failure), (lead, restore) = axes
    for i, app in enumerate(apps):
        rows = _series(report, app)
        offset = (i - (len(apps) - 1) / 2) * width
        deploys.bar([p + offset for p in x], [r.deployments for r in rows], width, label=app)
        failure.plot(x, [_pct(r.change_failure_rate) for r in rows], marker="o", label=app)
        lead.plot(x, [_hours(r.lead_time.median) for r in rows], marker="o", label=app)
        restore.plot(x, [_hours(r.time_to_restore.median) for r in rows], marker="o", label=app)
    deploys.set_title("Deployment frequency (deploys per week)")
    failure.set_title("Change failure rate (%)")
    lead.set_title("Lead time for changes, median (hours)")
    restore.set_title("Time to restore, median (hours)")
    failure.set_ylim(-5, 105)
    for ax in (deploys, failure, lead, restore):
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_xticks(x, weeks, rotation=45, ha="right", fontsize=8)
    for ax in (lead, restore):
        ax.set_ylim(bottom=0)
    if apps:
        deploys.legend(fontsize=8, loc="upper left")
    else:
        deploys.text(0.5, 0.5, "no deploys", ha="center", va="center", transform=deploys.transAxes)
    figure.suptitle(f"DORA metrics, {report.environment}: {report.weeks[0]} to {report.weeks[-1]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _pct(value: float | None) -> float:
    return float("nan") if value is None else value * 100


def _hours(seconds: float | None) -> float:
    return float("nan") if seconds is None else seconds / _HOUR
