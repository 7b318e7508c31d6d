"""The dora-report flow on Prefect's test harness, over a real manifests repository.

The history is made by the real bump and revert code at fixed dates
(:func:`tests.tasks.test_dora.build_history`); the pipeline run a bump names is a real
flow run record of the ``pipeline`` flow on the harness API, which is where the flow
finds the app repository of a bump without a source commit time.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from slipway.exceptions import ConfigError
from slipway.flows.dora import dora_report
from slipway.flows.pipeline import pipeline
from slipway.tasks.dora import DoraReport
from tests.flows.prefect_api import artifacts, logs
from tests.tasks.test_dora import UNTIL, build_history


async def _pipeline_run(repository: str) -> str:
    """A flow run record of the real pipeline flow (never executed), as a deploy left it."""
    async with get_client() as client:
        run = await client.create_flow_run(pipeline, parameters={"repository": repository})
    return str(run.id)


def test_dora_report_publishes_table_and_chart(
    flow_env: Path, slipway_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_url = (tmp_path / "remotes" / "shop.git").as_uri()
    cart_run = asyncio.run(_pipeline_run(app_url))
    h = build_history(tmp_path, monkeypatch, cart_run_id=cart_run)
    block = f"manifests-{uuid.uuid4().hex[:8]}"
    h.block.save(block)

    state = asyncio.run(
        dora_report(
            manifests=block,
            weeks=2,
            until=UNTIL,
            # shop's repository given; cart's found through its pipeline run
            repositories={"shop": app_url},
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    report: DoraReport = state.result()
    rows = {(r.app, r.week): r for r in report.rows}
    shop, cart = rows["shop", "2024-W11"], rows["cart", "2024-W12"]
    assert (shop.deployments, shop.failed, shop.change_failure_rate) == (2, 1, 0.5)
    assert shop.time_to_restore.median == 30 * 60
    assert shop.lead_time_unknown == 0 and cart.lead_time_unknown == 0
    assert rows["shop", "2024-W12"].deployments == 0  # the staging bump does not count
    by_app = {d.app: d for d in report.deploys if d.build == "1"}
    assert by_app["cart"].lead_source == "app-repository"
    assert by_app["cart"].lead_time == (
        UNTIL.replace(day=18, hour=9) - h.app_commits[2][1]  # W12 Monday 09:00
    )
    assert {d.lead_source for d in report.deploys if d.app == "shop"} == {
        "trailer",
        "app-repository",
    }

    run_id = state.state_details.flow_run_id
    found = artifacts(run_id)
    table = found["dora-production"]
    assert table.type == "table" and '"app": "cart"' in table.data
    summary = found["dora-production-summary"]
    assert summary.type == "markdown"
    prefix = "![DORA metrics per week: production](data:image/png;base64,"
    assert prefix in summary.data
    encoded = summary.data.split(prefix, 1)[1].split(")", 1)[0]
    png = slipway_home / "reports" / "dora" / str(run_id) / "dora-production.png"
    assert base64.b64decode(encoded) == png.read_bytes()
    assert not (png.parent / "git").exists()  # the clones are gone, the chart stays
    assert "2 deploy(s) have no source commit time" not in logs(run_id)


def test_dora_report_degrades_and_refuses(
    flow_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = build_history(tmp_path, monkeypatch, cart_run_id=str(uuid.uuid4()))
    block = f"manifests-{uuid.uuid4().hex[:8]}"
    h.block.save(block)
    # shop's repository unreachable, cart's pipeline run unknown to the API: the
    # report still comes, with those lead times unknown and said so in the log
    gone = (tmp_path / "gone.git").as_uri()
    state = asyncio.run(
        dora_report(
            manifests=block,
            weeks=1,
            until=UNTIL - timedelta(days=7),
            app="shop",
            repositories={"shop": gone},
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    report: DoraReport = state.result()
    (week,) = report.rows
    assert (week.week, week.deployments, week.lead_time_unknown) == ("2024-W11", 2, 1)
    assert "not readable" in logs(state.state_details.flow_run_id)

    with pytest.raises(ConfigError, match="'qa' is not in manifests block"):
        asyncio.run(dora_report(manifests=block, environment="qa"))
    with pytest.raises(ConfigError, match="no such block"):
        asyncio.run(dora_report(manifests="no-such-manifests"))
