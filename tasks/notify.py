"""Pipeline notifications to Slack: tell the team how a pipeline ended, never fail it.

A notification is a side channel. Slack being slow, down, or misconfigured must not
turn a green pipeline red or hold up a rollback, so :func:`send_pipeline_notification`
never raises: every failure (connection refused, HTTP 4xx/5xx, ``{"ok": false}``, a
server that never answers) becomes ``NotificationResult(delivered=False, error=...)``
and one warning in the run's log.

How it keeps those promises:

- Deadline. One attempt (slack-sdk's own connection retry is switched off), run in
  a short-lived daemon thread that the caller waits on for ``timeout_seconds`` plus
  a small grace. The clients' timeouts are set too, but are not enough on their
  own: urllib's applies per socket operation, so a server trickling bytes never
  trips it.
- Event loops. For a bot token, prefect-slack hands out slack-sdk's
  ``AsyncWebClient``. The caller may be a Prefect task in a worker thread, or code
  already running inside an event loop, where ``asyncio.run`` would fail; the
  delivery thread never has a loop of its own, so ``asyncio.run`` is always safe
  there, whatever the caller's thread is doing.
- Secrets. The notifier's secrets are added to the run's redactor first. The
  outcome's text is redacted before the message is built (escaping or clipping
  could otherwise hide a secret from the redactor) and the finished message again;
  log lines and the returned error are redacted before they are written, and
  slack-sdk's own log lines go through a masking filter (at DEBUG level it logs the
  webhook URL, which *is* the webhook's secret).
- Mentions. Branch names, stage names and failure reasons are user-controlled;
  ``&``, ``<`` and ``>`` are escaped so a branch called ``<!channel>`` cannot page
  a whole workspace.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from slack_sdk.errors import SlackApiError

from slipway.blocks.notifications import SlackNotifier
from slipway.redact import Redactor

_LOG = logging.getLogger(__name__)

# Extra wait past the clients' own timeout, so their more precise error usually wins.
_DEADLINE_GRACE_SECONDS = 0.5
# Longest error text kept in a result or a log line: enough to act on, short enough
# that a server echoing a whole request back cannot flood the log.
_MAX_ERROR_CHARS = 300
# Block Kit limits: header text 150 characters, section text 3000, field text 2000.
_HEADER_CHARS = 150
_SECTION_CHARS = 3000
_FIELD_CHARS = 2000
_FALLBACK_REASON_CHARS = 200

_STATUS_ICONS = {"success": ":white_check_mark:", "failure": ":x:"}
_STAGE_ICONS = {
    "passed": ":white_check_mark:",
    "failed": ":x:",
    "skipped": ":fast_forward:",
    "cached": ":recycle:",
    "not-run": ":white_circle:",
}


@dataclass(frozen=True)
class PipelineOutcome:
    """How one pipeline run ended, as the notification reports it.

    Attributes:
        app: application name, as in the pipeline spec.
        branch: branch the run built.
        commit: full commit SHA (the message shows the first 7 characters).
        status: ``"success"`` or ``"failure"``.
        failed_stage: the stage that stopped the pipeline, if any.
        reason: why it failed, one or a few lines; may hold text from tools, so it is
            redacted before it goes out.
        run_url: link to the flow run in the Prefect UI.
        duration_seconds: wall-clock time of the run, in seconds.
        stages: ``(stage name, status)`` pairs in pipeline order; status is one of
            passed / failed / skipped / cached / not-run (others are shown as-is).
    """

    app: str
    branch: str
    commit: str
    status: Literal["success", "failure"]
    failed_stage: str | None
    reason: str | None
    run_url: str | None
    duration_seconds: float
    stages: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NotificationResult:
    """What became of one notification; ``error`` is already redacted and short."""

    delivered: bool
    skipped: bool = False
    error: str | None = None


# --- message ---------------------------------------------------------------------------


def build_message(outcome: PipelineOutcome) -> tuple[str, list[dict[str, Any]]]:
    """The fallback text and Block Kit blocks for ``outcome``.

    The fallback text is what Slack shows in notifications and to clients that
    cannot render blocks, so it carries the essentials on its own. The text is not
    redacted here: :func:`send_pipeline_notification` redacts the outcome first.

    Example:
        ```python
        text, blocks = build_message(outcome)
        WebhookClient(url).send(text=text, blocks=blocks)
        ```
    """
    failed = outcome.status != "success"
    icon = _STATUS_ICONS.get(outcome.status, ":grey_question:")
    commit = outcome.commit[:7]
    if failed:
        at_stage = f" at {outcome.failed_stage}" if outcome.failed_stage else ""
        headline = f"{outcome.app} failed{at_stage} on {outcome.branch}"
    else:
        headline = f"{outcome.app} passed on {outcome.branch}"

    text = f"{icon} {_escape(headline)} ({commit})"
    if failed and outcome.reason:
        text += ": " + _escape(_clip(outcome.reason, _FALLBACK_REASON_CHARS))
    if outcome.run_url:
        text += f" {_link(outcome.run_url, 'View run')}"

    details = [
        f"*App*\n{_escape(outcome.app)}",
        f"*Branch*\n`{_escape(outcome.branch)}`",
        f"*Commit*\n`{_escape(commit)}`",
        f"*Status*\n{icon} {_escape(outcome.status)}",
        f"*Duration*\n{_format_duration(outcome.duration_seconds)}",
    ]
    if outcome.failed_stage:
        details.append(f"*Failed stage*\n`{_escape(outcome.failed_stage)}`")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _clip(f"{icon} {headline}", _HEADER_CHARS),
                "emoji": True,
            },
        },
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": _clip(d, _FIELD_CHARS)} for d in details],
        },
    ]
    if outcome.reason:
        reason = _clip(_escape(outcome.reason), _SECTION_CHARS - len("*Reason*\n"))
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Reason*\n{reason}"}}
        )
    if outcome.stages:
        summary = "   ".join(
            f"{_STAGE_ICONS.get(status, ':grey_question:')} {_escape(name)} ({_escape(status)})"
            for name, status in outcome.stages
        )
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _clip(summary, _FIELD_CHARS)}],
            }
        )
    if outcome.run_url:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _link(outcome.run_url, "Open the run in Prefect"),
                },
            }
        )
    return text, blocks


def _escape(text: str) -> str:
    """Slack's mrkdwn escaping: these three characters make links and mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, label: str) -> str:
    # "|" separates URL and label inside <...>; a literal one has to be percent-encoded.
    return f"<{_escape(url).replace('|', '%7C')}|{_escape(label)}>"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _format_duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


# --- delivery --------------------------------------------------------------------------


def send_pipeline_notification(
    notifier: SlackNotifier, outcome: PipelineOutcome, redactor: Redactor
) -> NotificationResult:
    """Post ``outcome`` to Slack; never raises, never waits much past the timeout.

    Args:
        notifier: where to post and which outcomes to post.
        outcome: the pipeline result to report.
        redactor: the run's redactor; the notifier's secrets are added to it, and
            everything sent or logged passes through it.

    Returns:
        ``delivered=True`` when Slack accepted the message; ``skipped=True`` when
        ``notifier.notify_on`` excludes this status; otherwise ``delivered=False``
        with a redacted ``error``, also logged as a warning.

    Example:
        ```python
        result = send_pipeline_notification(SlackNotifier.load("team"), outcome, redactor)
        ```
    """
    logger = _logger()
    try:
        redactor.add(*notifier.secret_values())
        if outcome.status not in notifier.notify_on:
            logger.info(
                redactor.redact(
                    f"Slack notification for {outcome.app} skipped: status {outcome.status!r} "
                    f"is not in notify_on {list(notifier.notify_on)}"
                )
            )
            return NotificationResult(delivered=False, skipped=True)

        text, blocks = build_message(_redact_outcome(outcome, redactor))
    except Exception as exc:  # a notification must never fail the run
        error = _clip(redactor.redact(_describe_error(exc, notifier)), _MAX_ERROR_CHARS)
        logger.warning(redactor.redact(f"Slack notification was not built: {error}"))
        return NotificationResult(delivered=False, error=error)
    what = f"{outcome.app} {outcome.branch}@{outcome.commit[:7]} ({outcome.status})"
    return send_slack_message(notifier, text, blocks, redactor, what=what)


def send_slack_message(
    notifier: SlackNotifier,
    text: str,
    blocks: list[dict[str, Any]],
    redactor: Redactor,
    *,
    what: str,
) -> NotificationResult:
    """Post a built message (redacted here first); never raises, never waits past the
    notifier's timeout. ``what`` names the message in the log lines."""
    logger = _logger()
    try:
        redactor.add(*notifier.secret_values())
        text, blocks = redactor.redact(text), _redact_tree(blocks, redactor)
        deadline = notifier.timeout_seconds + _DEADLINE_GRACE_SECONDS
        _run_with_deadline(lambda: _post(notifier, text, blocks, redactor), deadline)
    except Exception as exc:  # a notification must never fail the run
        error = _clip(redactor.redact(_describe_error(exc, notifier)), _MAX_ERROR_CHARS)
        logger.warning(redactor.redact(f"Slack notification for {what} was not delivered: {error}"))
        return NotificationResult(delivered=False, error=error)
    logger.info(redactor.redact(f"Slack notification sent for {what}"))
    return NotificationResult(delivered=True)


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    """The run's logger inside a flow or task run (lines show in the Prefect UI), else ours."""
    try:
        return get_run_logger()
    except MissingContextError:
        return _LOG


def _redact_outcome(outcome: PipelineOutcome, redactor: Redactor) -> PipelineOutcome:
    changes: dict[str, Any] = {}
    for f in fields(outcome):
        value = getattr(outcome, f.name)
        if isinstance(value, str):
            changes[f.name] = redactor.redact(value)
    changes["stages"] = tuple(
        (redactor.redact(name), redactor.redact(status)) for name, status in outcome.stages
    )
    return replace(outcome, **changes)


def _redact_tree(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, str):
        return redactor.redact(value)
    if isinstance(value, list):
        return [_redact_tree(item, redactor) for item in value]
    if isinstance(value, dict):
        return {key: _redact_tree(item, redactor) for key, item in value.items()}
    return value


def _run_with_deadline(post: Callable[[], None], seconds: float) -> None:
    """Run ``post`` in a daemon thread and stop waiting for it after ``seconds``.

    A thread left behind ends by itself when the client's own timeout fires; being a
    daemon, it never keeps the process alive.
    """
    done: Future[None] = Future()

    def target() -> None:
        try:
            post()
        except Exception as exc:
            done.set_exception(exc)
        except BaseException as exc:
            # e.g. CancelledError from the private event loop: not the caller's own
            # cancellation, so it must not reach the caller as one.
            done.set_exception(RuntimeError(f"delivery thread stopped: {exc!r}"))
        else:
            done.set_result(None)

    threading.Thread(target=target, name="slipway-notify-slack", daemon=True).start()
    try:
        done.result(timeout=seconds)
    except TimeoutError:
        if done.done():  # the client's own timeout, raised inside the thread
            raise
        raise _DeadlineExceeded(seconds) from None


class _DeadlineExceeded(TimeoutError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer from Slack within {seconds:g} s")


def _post(
    notifier: SlackNotifier, text: str, blocks: list[dict[str, Any]], redactor: Redactor
) -> None:
    """One delivery attempt; raises on anything but Slack accepting the message."""
    if notifier.webhook is not None:
        client = notifier.webhook.get_client(sync_client=True)
        client.timeout = notifier.timeout_seconds  # typed int; urllib takes a float
        client.logger = _masked_logger(redactor)
        # One attempt. slack-sdk would retry a refused or reset connection once after
        # 0.5-1.5 s: that eats a short timeout and turns "cannot reach Slack" into a
        # vague time-out, and the pipeline does not retry notifications anyway.
        client.retry_handlers = []
        response = client.send(text=text, blocks=blocks)
        if response.status_code != 200:
            raise _WebhookRejected(response.status_code, str(response.body))
        return

    assert notifier.credentials is not None and notifier.channel  # the block's validator
    client = notifier.credentials.get_client()
    client.base_url = notifier.api_url
    client.timeout = notifier.timeout_seconds  # typed int; aiohttp takes a float
    client.retry_handlers = []  # one attempt, as for the webhook
    channel = notifier.channel

    async def post_message() -> None:
        # raises SlackApiError on {"ok": false} and on non-200 answers
        await client.chat_postMessage(
            channel=channel, text=text, blocks=blocks, unfurl_links=False, unfurl_media=False
        )

    # This thread was started by _run_with_deadline and has no event loop.
    asyncio.run(post_message())


class _WebhookRejected(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"incoming webhook answered HTTP {status}: {body[:100]}")


def _describe_error(exc: BaseException, notifier: SlackNotifier) -> str:
    """One short line for a failed delivery; the single place client errors are read."""
    if isinstance(exc, _DeadlineExceeded | _WebhookRejected):
        return str(exc)
    if isinstance(exc, SlackApiError):
        data = exc.response.data if exc.response is not None else None
        if isinstance(data, dict) and data.get("error"):
            return f"chat.postMessage failed: {data['error']}"
        status = exc.response.status_code if exc.response is not None else "?"
        return f"chat.postMessage answered HTTP {status}"
    if isinstance(exc, TimeoutError):
        return f"no answer from Slack within {notifier.timeout_seconds:g} s"
    if isinstance(exc, OSError):  # urllib's URLError, aiohttp's connection errors
        return f"cannot reach Slack: {getattr(exc, 'reason', None) or exc}"
    return f"{type(exc).__name__}: {exc}"


class _MaskingFilter(logging.Filter):
    """Redacts a record's final message; slack-sdk logs URLs and response bodies."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._redactor.redact(record.getMessage()), None
        return True


def _masked_logger(redactor: Redactor) -> logging.Logger:
    """A logger for one slack-sdk client whose lines are masked, then propagate as usual.

    Built directly rather than through ``logging.getLogger`` so that one per call is
    garbage once the call ends instead of living in the logging registry forever.
    """
    logger = logging.Logger(f"{__name__}.slack_sdk")
    logger.parent = _LOG
    logger.addFilter(_MaskingFilter(redactor))
    return logger


notify_slack = task(
    send_pipeline_notification,
    name="notify-slack",
    # A failed notification is logged and reported, not retried: retrying would only
    # delay the pipeline, and Slack outages rarely clear within a retry delay.
    retries=0,
    # Always post: a re-run must notify again, and the inputs hold secrets that a
    # cache key would have to hash.
    cache_policy=NO_CACHE,
)
