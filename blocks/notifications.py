"""Where pipeline notifications go: one Slack destination, configured once per team.

prefect-slack already provides the credential blocks (an incoming webhook, a bot
token); this block only adds what a pipeline needs on top of them: which of the two
to use, the channel a bot posts to, which outcomes are worth a message, and how long
a notification may hold up the pipeline. Delivery itself lives in
``slipway.tasks.notify``: blocks hold configuration and hand out secrets, never
pipeline logic.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from prefect_slack import SlackCredentials, SlackWebhook
from pydantic import ConfigDict, Field, field_validator, model_validator

NotifyOn = Literal["success", "failure"]

# Path prefixes of Slack's incoming-webhook and workflow-trigger URLs; their last
# segment is the secret, and it is masked on its own because servers and proxies
# echo paths without the host (``POST /services/T0/B0/<secret> 404``).
_SLACK_WEBHOOK_PATH_PREFIXES = ("services", "triggers", "workflows")


class SlackNotifier(Block):
    """Sends slipway pipeline outcomes to one Slack channel.

    Exactly one of ``webhook`` (an incoming webhook, bound to its channel when it was
    created) or ``credentials`` (a bot token, which then needs ``channel``) is set.

    Examples:
        Load a saved notifier and send a pipeline outcome:
        ```python
        from slipway.blocks.notifications import SlackNotifier
        from slipway.redact import Redactor
        from slipway.tasks.notify import send_pipeline_notification

        slack_notifier = SlackNotifier.load("BLOCK_NAME")
        send_pipeline_notification(slack_notifier, outcome, Redactor())
        ```

        Configure one with a bot token:
        ```python
        from prefect_slack import SlackCredentials
        from slipway.blocks.notifications import SlackNotifier

        SlackNotifier(
            credentials=SlackCredentials(token="xoxb-..."),
            channel="#deploys",
            notify_on=["failure"],
        ).save("BLOCK_NAME")
        ```
    """

    # A rejected config may hold a raw webhook URL or token (given as a dict, or read
    # back from a block document); validation errors must not echo it.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Slipway Slack Notifier"
    _logo_url = "https://cdn.sanity.io/images/3ugk85nk/production/c1965ecbf8704ee1ea20d77786de9a41ce1087d1-500x500.png"  # noqa: E501
    _documentation_url = "https://docs.prefect.io/integrations/prefect-slack"

    webhook: SlackWebhook | None = Field(
        default=None,
        description=(
            "Incoming webhook to post to (posts land in the channel the webhook was "
            "created for). Default: none; set this or credentials, not both."
        ),
    )
    credentials: SlackCredentials | None = Field(
        default=None,
        description=(
            "Bot token used with the Web API method chat.postMessage. "
            "Default: none; set this or webhook, not both."
        ),
    )
    channel: str | None = Field(
        default=None,
        description=(
            "Channel name or ID the bot posts to, e.g. '#deploys' or 'C0123456789'. "
            "Required with credentials; not allowed with a webhook. Default: none."
        ),
    )
    api_url: str = Field(
        default="https://slack.com/api/",
        description=(
            "Base URL of the Slack Web API, for an egress proxy, Enterprise Grid or a "
            "local test server. Used with credentials only. Default: https://slack.com/api/."
        ),
    )
    notify_on: list[NotifyOn] = Field(
        default_factory=lambda: ["success", "failure"],
        description=(
            "Pipeline outcomes that send a message; an empty list mutes the notifier. "
            "Default: both success and failure."
        ),
    )
    timeout_seconds: float = Field(
        default=10,
        gt=0,
        le=300,
        description=(
            "Longest time, in seconds, one notification may take before it is given "
            "up (and logged) so a slow Slack never holds up the pipeline. Default: 10."
        ),
    )

    @field_validator("api_url")
    @classmethod
    def _api_url_is_http(cls, value: str) -> str:
        """slack-sdk joins method names onto the base URL, so it must be absolute."""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"api_url must be an absolute http(s) URL, got {value!r}")
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _exactly_one_destination(self) -> SlackNotifier:
        """A notifier with two destinations would leave which one is used to chance."""
        if (self.webhook is None) == (self.credentials is None):
            state = "both are set" if self.webhook is not None else "neither is set"
            raise ValueError(
                f"set exactly one of 'webhook' (incoming webhook) or 'credentials' "
                f"(bot token) on SlackNotifier; {state}"
            )
        if self.credentials is not None and not self.channel:
            raise ValueError(
                "'channel' is required when 'credentials' (bot token) is set: "
                "chat.postMessage needs to know where to post"
            )
        if self.webhook is not None and self.channel:
            raise ValueError(
                f"'channel' ({self.channel!r}) cannot be used with 'webhook': an incoming "
                "webhook always posts to the channel it was created for"
            )
        return self

    def secret_values(self) -> list[str]:
        """The unwrapped secrets this notifier holds, for ``Redactor.add``.

        The webhook's last path segment is listed on its own as well, since error
        messages and access logs often carry the path without the host.
        """
        values: list[str] = []
        if self.webhook is not None:
            url = self.webhook.url.get_secret_value()
            values.append(url)
            segments = [s for s in urlsplit(url).path.split("/") if s]
            if len(segments) >= 3 and segments[0] in _SLACK_WEBHOOK_PATH_PREFIXES:
                values.append(segments[-1])
        if self.credentials is not None:
            values.append(self.credentials.token.get_secret_value())
        return values
