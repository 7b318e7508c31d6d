"""Slack notifications, end to end over real HTTP.

slack-sdk's real clients (obtained from the prefect-slack blocks, as in production)
post to ``tests.servers.slack_receiver``; nothing in the client stack is mocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from prefect import flow
from prefect_slack import SlackCredentials, SlackWebhook

from slipway.blocks.notifications import SlackNotifier
from slipway.redact import Redactor
from slipway.tasks.notify import (
    NotificationResult,
    PipelineOutcome,
    build_message,
    notify_slack,
    send_pipeline_notification,
)
from tests.servers.slack_receiver import SlackReceiver, unused_port

WEBHOOK_SECRET = "Qw7rWebhookPathSecret9931"
WEBHOOK_PATH = f"/services/T0SLIPWAY/B0SLIPWAY/{WEBHOOK_SECRET}"
BOT_TOKEN = "xoxb-2718-2818-BotTokenSecret"
TIMEOUT = 1.0
# what "returns within the timeout" may overrun by: the deadline grace plus scheduling
MARGIN = 1.0
COMMIT = "3f786850e387550fdab836ed7e6dc881de23001b"
RUN_URL = "http://127.0.0.1:4200/runs/flow-run/0b6a1c8e-5f0e-4c2a-9d51-1d2f3e4a5b6c"

FAILED = PipelineOutcome(
    app="shop-api",
    branch="feature/checkout-v2",
    commit=COMMIT,
    status="failure",
    failed_stage="integration-tests",
    reason="3 of 120 tests failed: test_refund_twice",
    run_url=RUN_URL,
    duration_seconds=312.4,
    stages=(
        ("checkout", "passed"),
        ("build", "cached"),
        ("integration-tests", "failed"),
        ("deploy-staging", "not-run"),
        ("docs", "skipped"),
    ),
)
PASSED = replace(
    FAILED,
    status="success",
    failed_stage=None,
    reason=None,
    stages=(("checkout", "passed"), ("build", "passed")),
)


@pytest.fixture
def slack() -> Iterator[SlackReceiver]:
    with SlackReceiver(
        webhook_path=WEBHOOK_PATH,
        bot_token=BOT_TOKEN,
        channels={"#deploys": "C0DEPLOYS01"},
        hang_seconds=30,
    ) as receiver:
        yield receiver


def webhook_notifier(slack: SlackReceiver, **kwargs: object) -> SlackNotifier:
    return SlackNotifier(
        webhook=SlackWebhook(url=slack.webhook_url), timeout_seconds=TIMEOUT, **kwargs
    )


def bot_notifier(
    slack: SlackReceiver, token: str = BOT_TOKEN, channel: str = "#deploys", **kwargs: object
) -> SlackNotifier:
    return SlackNotifier(
        credentials=SlackCredentials(token=token),
        channel=channel,
        api_url=slack.api_url,
        timeout_seconds=TIMEOUT,
        **kwargs,
    )


def message_text(body: dict) -> str:
    """Everything a reader of the message would see, as one string."""
    return body["text"] + "\n" + json.dumps(body["blocks"])


# --- the message -----------------------------------------------------------------------


def test_build_message_names_everything_a_reader_needs() -> None:
    text, blocks = build_message(FAILED)

    everything = text + json.dumps(blocks)
    for needed in (
        "shop-api",
        "feature/checkout-v2",
        COMMIT[:7],
        "integration-tests",
        "test_refund_twice",
        RUN_URL,
        "failure",
    ):
        assert needed in everything, needed
    assert COMMIT not in everything  # the short form only
    assert blocks[0]["type"] == "header"
    assert f"<{RUN_URL}|" in text  # the fallback text links the run on its own
    stages = next(b for b in blocks if b["type"] == "context")["elements"][0]["text"]
    assert ":recycle: build (cached)" in stages and ":fast_forward: docs (skipped)" in stages


def test_build_message_for_success_has_no_failure_details() -> None:
    text, blocks = build_message(PASSED)

    assert "passed" in text and "Failed stage" not in json.dumps(blocks)
    assert "Reason" not in json.dumps(blocks)


def test_user_text_cannot_mention_or_link() -> None:
    """Branch names and reasons are user-controlled: <!channel> must not page anyone."""
    outcome = replace(FAILED, branch="fix/<!channel>", reason="see <http://evil|here> & more")

    text, blocks = build_message(outcome)

    mrkdwn = text + json.dumps([b for b in blocks if b["type"] != "header"])
    assert "<!channel>" not in mrkdwn and "<http://evil|" not in mrkdwn
    assert "&lt;!channel&gt;" in mrkdwn and "&amp; more" in mrkdwn


def test_long_reason_is_clipped_to_block_kit_limits() -> None:
    text, blocks = build_message(replace(FAILED, reason="x" * 10_000, app="a" * 300))

    assert len(blocks[0]["text"]["text"]) <= 150
    for block in blocks:
        if "text" in block and block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
    assert len(text) < 1000


# --- delivery --------------------------------------------------------------------------


def test_webhook_delivery_posts_the_message(slack: SlackReceiver) -> None:
    result = send_pipeline_notification(webhook_notifier(slack), FAILED, Redactor())

    assert result == NotificationResult(delivered=True, skipped=False, error=None)
    [request] = slack.received
    assert request.path == WEBHOOK_PATH
    assert request.headers["content-type"].startswith("application/json")
    seen = message_text(request.body)
    for needed in (
        "shop-api",
        "feature/checkout-v2",
        COMMIT[:7],
        "integration-tests",
        "test_refund_twice",
        RUN_URL,
    ):
        assert needed in seen, needed


def test_bot_token_delivery_uses_chat_post_message(slack: SlackReceiver) -> None:
    result = send_pipeline_notification(bot_notifier(slack), PASSED, Redactor())

    assert result.delivered and result.error is None
    [request] = slack.received
    assert request.path == "/api/chat.postMessage"
    assert request.headers["authorization"] == f"Bearer {BOT_TOKEN}"
    assert request.body["channel"] == "#deploys"
    assert "shop-api" in request.body["text"] and RUN_URL in message_text(request.body)


def test_delivery_works_from_inside_a_running_event_loop(slack: SlackReceiver) -> None:
    """An async caller (an async flow, a task in a loop thread) must not break the bot path."""

    async def caller() -> NotificationResult:
        return send_pipeline_notification(bot_notifier(slack), FAILED, Redactor())

    assert asyncio.run(caller()).delivered
    assert len(slack.received) == 1


# --- secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["webhook", "bot"])
def test_secrets_never_leave_in_messages_or_logs(
    slack: SlackReceiver, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.DEBUG)  # slack-sdk logs the webhook URL at DEBUG
    notifier = webhook_notifier(slack) if kind == "webhook" else bot_notifier(slack)
    secret = WEBHOOK_SECRET if kind == "webhook" else BOT_TOKEN
    # the notifier's secret echoed by a tool's error output, whole URL and bare
    leaky = replace(
        FAILED,
        reason=f"push to {slack.webhook_url} failed; token={BOT_TOKEN}; key {WEBHOOK_SECRET}",
        failed_stage=f"deploy-{secret}",
    )
    redactor = Redactor()

    delivered = send_pipeline_notification(notifier, leaky, redactor)
    # the same secret against an address where nothing listens: the failure path
    # logs more, and at DEBUG slack-sdk logs the webhook URL it tried
    failed = send_pipeline_notification(_failing_notifier(slack, kind, "down"), leaky, redactor)

    assert delivered.delivered and not failed.delivered
    [request] = slack.received
    body = request.raw.decode()
    assert "***" in body and "shop-api" in body  # the message went out, masked
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "not delivered" in logged and "Sending a request" in logged
    assert secret not in body
    assert secret not in logged
    assert secret not in (failed.error or "")


# --- failures --------------------------------------------------------------------------


def _failing_notifier(slack: SlackReceiver, kind: str, failure: str) -> SlackNotifier:
    if failure == "down":
        base = f"http://127.0.0.1:{unused_port()}"
        if kind == "webhook":
            return SlackNotifier(
                webhook=SlackWebhook(url=base + WEBHOOK_PATH), timeout_seconds=TIMEOUT
            )
        return SlackNotifier(
            credentials=SlackCredentials(token=BOT_TOKEN),
            channel="#deploys",
            api_url=base + "/api/",
            timeout_seconds=TIMEOUT,
        )
    slack.mode = {"500": "error_500", "hang": "hang", "trickle": "trickle"}.get(failure, "normal")
    if failure == "invalid_auth":
        return bot_notifier(slack, token="xoxb-not-the-right-one")
    if failure == "channel_not_found":
        return bot_notifier(slack, channel="#nowhere")
    if failure == "no_service":
        return SlackNotifier(
            webhook=SlackWebhook(url=slack.base_url + "/services/T0/B0/revoked"),
            timeout_seconds=TIMEOUT,
        )
    return webhook_notifier(slack) if kind == "webhook" else bot_notifier(slack)


@pytest.mark.parametrize(
    ("kind", "failure", "error_says"),
    [
        ("webhook", "down", "cannot reach Slack"),
        ("bot", "down", "cannot reach Slack"),
        ("webhook", "500", "HTTP 500"),
        ("bot", "500", "HTTP 500"),
        ("webhook", "hang", "no answer from Slack within"),
        ("bot", "hang", "no answer from Slack within"),
        # bytes keep coming, so urllib's per-read timeout never fires: our deadline does
        ("webhook", "trickle", "no answer from Slack within 1.5 s"),
        ("bot", "trickle", "no answer from Slack within"),
        ("bot", "invalid_auth", "invalid_auth"),
        ("bot", "channel_not_found", "channel_not_found"),
        ("webhook", "no_service", "HTTP 404: no_service"),
    ],
)
def test_undeliverable_notification_is_logged_not_raised(
    slack: SlackReceiver, caplog: pytest.LogCaptureFixture, kind: str, failure: str, error_says: str
) -> None:
    notifier = _failing_notifier(slack, kind, failure)

    started = time.monotonic()
    result = send_pipeline_notification(notifier, FAILED, Redactor())
    elapsed = time.monotonic() - started

    assert not result.delivered and not result.skipped
    assert result.error and error_says in result.error
    assert elapsed < TIMEOUT + MARGIN, f"took {elapsed:.2f} s"
    warnings = [
        r
        for r in caplog.records
        if r.name == "slipway.tasks.notify" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1 and "not delivered" in warnings[0].getMessage()
    if failure in ("500", "hang", "trickle"):
        assert slack.received, "the request reached the server before it failed"


def test_a_broken_notifier_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """Even a notifier that skipped validation (model_construct) cannot fail the run."""
    broken = SlackNotifier.model_construct(
        webhook=None,
        credentials=None,
        channel=None,
        notify_on=["failure"],
        timeout_seconds=TIMEOUT,
        api_url="https://slack.com/api/",
    )

    result = send_pipeline_notification(broken, FAILED, Redactor())

    assert not result.delivered and result.error
    assert any(r.levelno == logging.WARNING for r in caplog.records)


# --- notify_on -------------------------------------------------------------------------


def test_notify_on_failure_only_skips_success(slack: SlackReceiver) -> None:
    notifier = webhook_notifier(slack, notify_on=["failure"])

    skipped = send_pipeline_notification(notifier, PASSED, Redactor())
    sent = send_pipeline_notification(notifier, FAILED, Redactor())

    assert skipped == NotificationResult(delivered=False, skipped=True, error=None)
    assert sent.delivered and not sent.skipped
    assert len(slack.received) == 1 and "failed" in slack.received[0].body["text"]


def test_notify_on_success_only_skips_failure(slack: SlackReceiver) -> None:
    notifier = bot_notifier(slack, notify_on=["success"])

    assert send_pipeline_notification(notifier, FAILED, Redactor()).skipped
    assert send_pipeline_notification(notifier, PASSED, Redactor()).delivered
    assert len(slack.received) == 1


def test_empty_notify_on_mutes_the_notifier(slack: SlackReceiver) -> None:
    notifier = webhook_notifier(slack, notify_on=[])

    for outcome in (PASSED, FAILED):
        assert send_pipeline_notification(notifier, outcome, Redactor()).skipped
    assert slack.received == []


# --- inside a Prefect flow -------------------------------------------------------------


def test_notify_slack_task_in_a_flow(
    prefect_harness: None, slack: SlackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine's path: load the saved block, notify from a task; failures don't fail it.

    ``prefect_harness`` (tests/conftest.py) is the session's one
    ``prefect_test_harness``; a second harness here would cost ~10 s and override the
    first one's settings for every later test.
    """
    webhook_notifier(slack).save("slipway-test-notifier", overwrite=True)
    dead = SlackNotifier(
        webhook=SlackWebhook(url=f"http://127.0.0.1:{unused_port()}{WEBHOOK_PATH}"),
        timeout_seconds=TIMEOUT,
    )

    @flow
    def pipeline() -> tuple[NotificationResult, NotificationResult]:
        redactor = Redactor()
        notifier = SlackNotifier.load("slipway-test-notifier")
        sent = notify_slack(notifier, FAILED, redactor)
        lost = notify_slack(dead, FAILED, redactor)
        return sent, lost

    sent, lost = pipeline()

    assert sent.delivered and not lost.delivered
    assert notify_slack.name == "notify-slack" and notify_slack.retries == 0
    [request] = slack.received
    assert "integration-tests" in message_text(request.body)
    run_warnings = [
        r for r in caplog.records if r.name == "prefect.task_runs" and r.levelno == logging.WARNING
    ]
    assert any("not delivered" in r.getMessage() for r in run_warnings)
    assert WEBHOOK_SECRET not in caplog.text
