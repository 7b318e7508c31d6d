"""SlackNotifier: Prefect's block standards, one-destination validation, secret listing."""

from __future__ import annotations

import pydantic
import pytest
from prefect_slack import SlackCredentials, SlackWebhook

from slipway.blocks.notifications import SlackNotifier
from tests.blocks.block_suite import OfflineBlockTestSuite

WEBHOOK_SECRET = "Zq8xWebhookPathSecret0042"
WEBHOOK_URL = f"https://hooks.slack.com/services/T0SLIPWAY/B0SLIPWAY/{WEBHOOK_SECRET}"
BOT_TOKEN = "xoxb-1234-5678-BotTokenSecret"


class TestSlackNotifierStandards(OfflineBlockTestSuite):
    # The suite asks for a fixture named `block`; a plain `block = SlackNotifier`
    # class attribute would shadow the fixture and leave pytest with none.
    @pytest.fixture
    def block(self) -> type[SlackNotifier]:
        return SlackNotifier


def test_webhook_notifier_defaults() -> None:
    notifier = SlackNotifier(webhook=SlackWebhook(url=WEBHOOK_URL))

    assert notifier.api_url == "https://slack.com/api/"
    assert notifier.notify_on == ["success", "failure"]
    assert notifier.timeout_seconds == 10
    assert notifier.channel is None


def test_bot_notifier_with_channel() -> None:
    notifier = SlackNotifier(
        credentials=SlackCredentials(token=BOT_TOKEN),
        channel="#deploys",
        api_url="http://127.0.0.1:9/api",
        notify_on=["failure"],
    )

    assert notifier.api_url == "http://127.0.0.1:9/api/"  # slack-sdk appends method names
    assert notifier.notify_on == ["failure"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({}, "neither is set", id="neither"),
        pytest.param(
            {
                "webhook": SlackWebhook(url=WEBHOOK_URL),
                "credentials": SlackCredentials(token=BOT_TOKEN),
                "channel": "#deploys",
            },
            "both are set",
            id="both",
        ),
    ],
)
def test_exactly_one_destination(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        SlackNotifier(**kwargs)

    text = str(caught.value)
    assert "'webhook'" in text and "'credentials'" in text and message in text


def test_credentials_need_a_channel() -> None:
    with pytest.raises(pydantic.ValidationError, match="'channel' is required"):
        SlackNotifier(credentials=SlackCredentials(token=BOT_TOKEN))


def test_webhook_rejects_a_channel() -> None:
    with pytest.raises(pydantic.ValidationError, match="'channel'.*cannot be used with 'webhook'"):
        SlackNotifier(webhook=SlackWebhook(url=WEBHOOK_URL), channel="#deploys")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_url", "slack.com/api"),
        ("api_url", "ftp://slack.com/api/"),
        ("timeout_seconds", 0),
        ("timeout_seconds", -1),
        ("notify_on", ["sucess"]),
    ],
)
def test_bad_field_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        SlackNotifier(webhook=SlackWebhook(url=WEBHOOK_URL), **{field: value})

    assert field in str(caught.value)


def test_validation_errors_do_not_echo_raw_secrets() -> None:
    """A config given as plain dicts holds the raw secrets; the error must not show them."""
    with pytest.raises(pydantic.ValidationError) as caught:
        SlackNotifier(webhook={"url": WEBHOOK_URL}, credentials={"token": BOT_TOKEN})

    text = str(caught.value)
    assert WEBHOOK_SECRET not in text and BOT_TOKEN not in text


def test_secret_values_of_a_webhook_include_its_path_secret() -> None:
    notifier = SlackNotifier(webhook=SlackWebhook(url=WEBHOOK_URL))

    assert notifier.secret_values() == [WEBHOOK_URL, WEBHOOK_SECRET]


def test_secret_values_of_a_generic_webhook_url_are_the_url_only() -> None:
    """Only Slack-shaped paths have a secret last segment; "hook" is ordinary text."""
    notifier = SlackNotifier(webhook=SlackWebhook(url="https://proxy.example/hook"))

    assert notifier.secret_values() == ["https://proxy.example/hook"]


def test_secret_values_of_a_bot_notifier_are_the_token() -> None:
    notifier = SlackNotifier(credentials=SlackCredentials(token=BOT_TOKEN), channel="C0123")

    assert notifier.secret_values() == [BOT_TOKEN]


def test_repr_and_dump_keep_secrets_masked() -> None:
    notifier = SlackNotifier(webhook=SlackWebhook(url=WEBHOOK_URL))

    assert WEBHOOK_SECRET not in repr(notifier)
    assert WEBHOOK_SECRET not in notifier.model_dump_json()
