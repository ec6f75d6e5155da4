"""Notifications to people: one adapter per channel, all of the shape in `base`."""

from trading.notify import slack, telegram
from trading.notify.base import (
    Message,
    NotifyError,
    TemporaryNotifyError,
    announce_channels,
    deliver,
    enabled_channels,
    register,
)

register(slack.Slack())
register(telegram.Telegram())

__all__ = [
    "Message",
    "NotifyError",
    "TemporaryNotifyError",
    "announce_channels",
    "deliver",
    "enabled_channels",
]
