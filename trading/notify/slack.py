"""Slack through slack-sdk's WebClient: chat.postMessage with a header and a section of facts.

SLACK_API_URL points the client elsewhere (a local server in tests). The token travels only in
the Authorization header; no error text built here contains it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from trading.notify.base import Message, NotifyError, TemporaryNotifyError, is_temporary_status

HEADER_LIMIT = 150  # Slack's limit for a plain_text header
FIELDS_PER_SECTION = 10  # Slack's limit for a section's fields
SEVERITY_MARK = {"critical": ":rotating_light:", "warning": ":warning:", "resolved": ":white_check_mark:"}


def blocks(message: Message) -> list[dict[str, Any]]:
    """Block Kit layout: the title as a header, then the facts two columns wide."""
    mark = SEVERITY_MARK.get(message.severity, "")
    title = f"{mark} {message.title}".strip()[:HEADER_LIMIT]
    layout: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}}
    ]
    facts = [{"type": "mrkdwn", "text": f"*{label}*\n{value}"} for label, value in message.facts]
    for start in range(0, len(facts), FIELDS_PER_SECTION):
        layout.append({"type": "section", "fields": facts[start : start + FIELDS_PER_SECTION]})
    return layout


class Slack:
    name = "slack"

    def configured(self) -> bool:
        return bool(settings.SLACK_BOT_TOKEN and settings.SLACK_CHANNEL)

    def send(self, message: Message) -> None:
        client = WebClient(
            token=settings.SLACK_BOT_TOKEN,
            base_url=settings.SLACK_API_URL,
            timeout=settings.NOTIFY_TIMEOUT_SECONDS,
        )
        try:
            client.chat_postMessage(
                channel=settings.SLACK_CHANNEL, text=message.as_text(), blocks=blocks(message)
            )
        except SlackApiError as exc:
            raise refusal(exc) from None
        except OSError as exc:  # URLError, refused connections and timeouts alike
            raise TemporaryNotifyError(f"slack unreachable: {type(exc).__name__}") from None


def refusal(exc: SlackApiError) -> NotifyError:
    """Our error for an answer Slack gave: temporary for 429 and 5xx, permanent otherwise."""
    status = exc.response.status_code
    reason = exc.response.get("error", "unknown")
    if is_temporary_status(status):
        return TemporaryNotifyError(f"slack answered {status}: {reason}")
    return NotifyError(f"slack answered {status}: {reason}")
