"""Approval in the real Prefect UI: a person resumes a paused release in Chromium.

Real: a ``prefect server`` process serving its own UI (from the installed package,
offline), headless Chromium (Debian's) driven by Playwright, the deliver flow
running against that server, git (the manifests repository), Prometheus and the
example app as pods. Stand-in: the Kubernetes API (the ``stack`` fixture of
tests/flows/test_deliver.py).

A release goes to staging, then pauses for the production approval. The test logs
in on the UI's login form (the server runs with API authentication), opens the
paused run's page, presses Resume, checks that the form's Markdown description
says what is being approved (app, build, commit, image digest, CI verdicts), fills
the form in and submits it, and watches the page follow the run to its end.

Prefect 3.9 serves two UIs and a person meets both: the run links Prefect logs and
slipway sends (``/runs/flow-run/<id>``) open the V1 UI; the UI's front door (``/``)
opens V2, where Resume sits in the run's menu. So the approval goes through V1 and
the rejection through V2. V2's form controls carry accessible names; V1's labels
point at ids its inputs lack, so there a control is the one inside the innermost
block that shows its label.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal
from uuid import UUID

import git
import httpx
import pytest
from playwright.async_api import Locator, Page, expect
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError

from slipway.blocks.approval import ApprovalPolicy, EnvironmentApproval
from slipway.flows.deliver import Delivery
from tests.approvers import approver, code_for
from tests.conftest import API_AUTH_STRING
from tests.e2e.browser import chromium, chromium_page  # noqa: F401  (chromium: the fixture)
from tests.flows.prefect_api import artifacts
from tests.flows.test_deliver import (
    APP,
    GOOD,
    Running,
    Stack,
    production,
    running_image,
    selector_colour,
    stack,  # noqa: F401  (the fixture)
    staging,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.usefixtures("on_server"),
    pytest.mark.kube_standin_only("pod runner"),
]

APPROVER = "alice"
CI_SUMMARY = ("tests: 42 passed, 0 failed", "quality gate: OK", "security scan: no findings")
# Seconds: how long the run may take to pause for approval, and to finish afterwards.
PAUSE_TIMEOUT = 60
FINISH_TIMEOUT = 60

Role = Literal["switch", "textbox"]


# --- the Prefect UI, as a person uses it ---------------------------------------------------


@dataclass(frozen=True)
class PrefectUI:
    """One of the two UIs ``prefect server`` serves, at ``base`` (the API URL without /api)."""

    base: str
    version: Literal["v1", "v2"]  # v1: what run links open; v2: what the front door opens

    def run_page(self, run_id: UUID) -> str:
        prefix = "/v2" if self.version == "v2" else ""
        return f"{self.base}{prefix}/runs/flow-run/{run_id}"

    async def log_in(self, page: Page, auth_string: str) -> None:
        """The server has API authentication on: the person opens the UI's login page
        and types the auth string (``user:password``); the UI keeps it for the origin."""
        prefix = "/v2" if self.version == "v2" else ""
        await page.goto(f"{self.base}{prefix}/login")
        password = page.get_by_placeholder("admin:pass")
        await expect(password).to_be_visible()
        await password.fill(auth_string)
        await page.get_by_role("button", name="Login", exact=True).click()
        await expect(password).to_be_hidden()

    async def open_resume_form(self, page: Page, run_id: UUID) -> Locator:
        """Open the paused run's page and press Resume; returns the form's dialog."""
        await page.goto(self.run_page(run_id))
        await expect(page.get_by_text("Paused", exact=True).first).to_be_visible()
        if self.version == "v2":
            await page.get_by_role("main").get_by_role("button", name="Open menu").first.click()
            await page.get_by_role("menuitem", name="Resume").click()
        else:
            await page.get_by_role("button", name="Resume", exact=True).click()
        dialog = page.get_by_role("dialog").filter(has_text="Resume Flow Run")
        await expect(dialog).to_be_visible()
        return dialog

    def control(self, dialog: Locator, label: str, role: Role) -> Locator:
        """The form control (a textbox, a switch) whose label starts with the word ``label``."""
        name = re.compile(rf"^{re.escape(label)}\b")
        if self.version == "v2":
            return dialog.get_by_role(role, name=name)
        text, control = dialog.page.get_by_text(name), dialog.page.get_by_role(role)
        return dialog.locator("div").filter(has=text).filter(has=control).last.get_by_role(role)

    async def decide(
        self, dialog: Locator, *, approve: bool, approver: str, code: str, reason: str
    ) -> None:
        """Fill the approval form in (with the approver's current TOTP code) and submit it."""
        switch = self.control(dialog, "Approve", "switch")
        await expect(switch).not_to_be_checked()  # the form starts at "reject"
        if approve:
            await switch.click()
            await expect(switch).to_be_checked()
        await self.control(dialog, "Approver", "textbox").fill(approver)
        await self.control(dialog, "Code", "textbox").fill(code)
        await self.control(dialog, "Reason", "textbox").fill(reason)
        submit = "Resume" if self.version == "v2" else "Submit"
        await dialog.get_by_role("button", name=submit, exact=True).click()
        await expect(dialog).to_be_hidden()


def prefect_ui(api_url: str, version: Literal["v1", "v2"]) -> PrefectUI:
    return PrefectUI(base=api_url.rstrip("/").removesuffix("/api"), version=version)


async def expect_what_is_approved(dialog: Locator, delivery: Delivery) -> None:
    """The form's Markdown description, rendered (the heading is a heading, not ``##``):
    app, build, commit, image digest, CI verdicts, staging's outcome."""
    heading = f"Release {APP} build {delivery.build_number} to production"
    await expect(dialog.get_by_role("heading", name=heading)).to_be_visible()
    await expect(dialog).to_contain_text(delivery.source_commit[:12])
    await expect(dialog).to_contain_text(GOOD)  # the image, by digest
    for verdict in CI_SUMMARY:
        await expect(dialog).to_contain_text(verdict)
    await expect(dialog).to_contain_text("staging: deployed")  # the environments so far
    await expect(dialog).to_contain_text("What changes in production")  # the plan (diff)


async def decide_in_the_ui(
    ui: PrefectUI,
    run_id: UUID,
    delivery: Delivery,
    *,
    approve: bool,
    reason: str,
    chromium: str,  # noqa: F811
    evidence_dir: Path,
) -> None:
    """What the approver does: open the run, read the form, decide, see the run finish.

    The browser starts, loads the run's page and logs in while the release is still on
    its way to the pause (the page does not notice the pause by itself; the second
    load, with the UI's code cached, does), which saves seconds per test on a busy
    machine.
    """

    async def open_and_log_in(page: Page) -> None:
        await ui.log_in(page, API_AUTH_STRING)
        await page.goto(ui.run_page(run_id))

    async with chromium_page(chromium, evidence_dir) as page:
        await asyncio.gather(open_and_log_in(page), asyncio.to_thread(wait_for_form, run_id))
        dialog = await ui.open_resume_form(page, run_id)
        completed = page.get_by_text("Completed", exact=True).filter(visible=True)
        await expect(completed).to_have_count(0)  # so that seeing it later means something
        await expect_what_is_approved(dialog, delivery)
        await ui.decide(
            dialog, approve=approve, approver=APPROVER, code=code_for(APPROVER), reason=reason
        )
        await expect(completed.first).to_be_visible(timeout=FINISH_TIMEOUT * 1000)


# --- the release, through the API ------------------------------------------------------------


def start_release(stack: Stack) -> tuple[Running, Delivery]:  # noqa: F811
    """Staging, then production behind an approval (no metric analysis: not the subject)."""
    delivery = stack.delivery({"environments": [staging(), production(analysis=None)]}, GOOD)
    policy = EnvironmentApproval(
        approvers=[approver(APPROVER)], timeout_seconds=300, branches=["main"]
    )
    delivery = replace(
        delivery,
        # a person in a browser gets more than the flow tests' 20 s
        approvals=ApprovalPolicy(environments={"production": policy}),
        ci_summary=CI_SUMMARY,
    )
    return Running(delivery), delivery


def wait_for_form(run_id: UUID, timeout: float = PAUSE_TIMEOUT) -> None:
    """Wait until the run is paused with its form saved (the UI offers Resume only then)."""
    deadline = time.monotonic() + timeout
    seen = "not read yet"
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            seen = f"{state.name}: {state.message}" if state else "no state"
            if state is not None and state.is_final():
                pytest.fail(f"the run ended before asking for approval ({seen})")
            keyset = state.state_details.run_input_keyset if state else None
            if state is not None and state.is_paused() and keyset:
                try:
                    client.read_flow_run_input(run_id, keyset["schema"])
                    return
                except PrefectHTTPStatusError as exc:
                    if exc.response.status_code != 404:
                        raise
            time.sleep(0.2)
    pytest.fail(f"the run did not pause for approval within {timeout:g} s (last: {seen})")


def bumps(stack: Stack) -> list[dict[str, str]]:  # noqa: F811
    """The app's GitOps bump commits' trailers, newest first."""
    return [trailers for _summary, trailers in stack.log() if trailers.get("Slipway-App") == APP]


# --- tests ----------------------------------------------------------------------------------


def test_the_ui_is_served_offline_and_talks_to_its_own_server(on_server: str) -> None:
    """The UI ships in the prefect package; it asks /ui-settings where the API is, and
    ``prefect server start --port`` alone would answer 127.0.0.1:4200 (see
    slipway.local_server.start_server)."""
    base = prefect_ui(on_server, "v1").base
    html = {"Accept": "text/html"}  # how a browser asks; the UI answers only that
    page = httpx.get(f"{base}/runs/flow-run/{UUID(int=0)}", headers=html, timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower(), page.status_code
    settings = httpx.get(f"{base}/ui-settings", timeout=10).json()
    assert settings["api_url"] == on_server, settings
    assert settings["auth"] == "BASIC", settings  # the UI asks for the auth string first
    # and its API answers nothing without it
    anonymous = httpx.post(f"{on_server}/flow_runs/filter", json={}, timeout=10)
    assert anonymous.status_code == 401, anonymous.status_code


def test_an_approval_in_the_prefect_ui_releases_to_production(
    stack: Stack,  # noqa: F811
    on_server: str,
    chromium: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    running, delivery = start_release(stack)
    reason = "staging checked by hand"
    ui = prefect_ui(on_server, "v1")
    decide = decide_in_the_ui(
        ui,
        running.run_id,
        delivery,
        approve=True,
        reason=reason,
        chromium=chromium,
        evidence_dir=tmp_path,
    )
    asyncio.run(decide)

    outcomes = running.outcomes(FINISH_TIMEOUT)
    assert outcomes["staging"].status == "deployed", outcomes["staging"]
    assert outcomes["production"].status == "deployed", outcomes["production"]
    assert outcomes["production"].approver == APPROVER
    # the cluster: production runs the new image
    colour = selector_colour(stack, "production")
    assert running_image(stack, "production", f"{APP}-{colour}") == GOOD
    # git: the production bump names the approver typed into the form
    production_bump = bumps(stack)[0]
    assert production_bump["Slipway-Environment"] == "production"
    assert production_bump["Slipway-Image"] == GOOD
    assert production_bump["Slipway-Approver"] == APPROVER
    # the reason typed into the form is on the record (the approval artifact)
    recorded = [str(artifact.data) for artifact in artifacts(running.run_id).values()]
    assert any(reason in text for text in recorded), recorded


def test_a_rejection_in_the_prefect_ui_deploys_nothing_to_production(
    stack: Stack,  # noqa: F811
    on_server: str,
    chromium: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    running, delivery = start_release(stack)
    reason = "error budget spent"
    ui = prefect_ui(on_server, "v2")
    decide = decide_in_the_ui(
        ui,
        running.run_id,
        delivery,
        approve=False,
        reason=reason,
        chromium=chromium,
        evidence_dir=tmp_path,
    )
    asyncio.run(decide)

    outcomes = running.outcomes(FINISH_TIMEOUT)
    assert outcomes["staging"].status == "deployed", outcomes["staging"]
    rejected = outcomes["production"]
    assert rejected.status == "rejected", rejected
    assert f"rejected by {APPROVER}: {reason}" in rejected.reason
    # nothing reached production: no objects in the cluster, no bump in git
    assert not stack.apps().list_namespaced_deployment("production").items
    assert [trailers["Slipway-Environment"] for trailers in bumps(stack)] == ["staging"]
    manifest = git.Repo(stack.manifests_repo).git.show("main:production/deployment.yaml")
    assert GOOD not in manifest
