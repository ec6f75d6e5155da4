"""The shape every notification channel has, and the registry of channels.

A channel is an object with a `name`, `configured()` (is its token and destination set?) and
`send(message)`, which raises `TemporaryNotifyError` for what a retry may cure (timeouts, 429,
5xx) and `NotifyError` for what it will not (a bad token, an unknown chat). Adding Discord or
email is one more module like `slack.py`, registered in `trading/notify/__init__.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


class NotifyError(Exception):
    """The channel refused the message; sending it again will not help."""


class TemporaryNotifyError(NotifyError):
    """The channel could not take the message now (timeout, rate limit, server error): retry."""


@dataclass(frozen=True)
class Message:
    """What a person reads: a title, labelled facts, and how urgent it is."""

    title: str
    facts: tuple[tuple[str, str], ...] = ()
    severity: str = "info"  # info | warning | critical | resolved

    def as_text(self) -> str:
        """The plain-text rendering every channel can show."""
        return "\n".join([self.title, *(f"{label}: {value}" for label, value in self.facts)])

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "facts": [list(fact) for fact in self.facts], "severity": self.severity}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        facts = tuple((str(label), str(value)) for label, value in data.get("facts", []))
        return cls(title=str(data["title"]), facts=facts, severity=str(data.get("severity", "info")))


class Channel(Protocol):
    name: str

    def configured(self) -> bool: ...

    def send(self, message: Message) -> None: ...


_channels: dict[str, Channel] = {}


def register(channel: Channel) -> Channel:
    _channels[channel.name] = channel
    return channel


def channel(name: str) -> Channel:
    """The registered channel called `name`. Raises KeyError for an unknown one."""
    return _channels[name]


def enabled_channels() -> list[str]:
    """Names of the channels whose configuration is complete, in registration order."""
    return [name for name, candidate in _channels.items() if candidate.configured()]


def announce_channels() -> None:
    """Say once, at start-up, which channels are on and which are off (never their tokens)."""
    for name, candidate in _channels.items():
        if candidate.configured():
            log.info("notifications: %s is on", name)
        else:
            log.info("notifications: %s is off (no token or destination configured)", name)


def deliver(name: str, message: Message) -> bool:
    """Send `message` through channel `name`. Returns False when the channel refused it for good
    or is not configured (both logged); raises TemporaryNotifyError when a retry may help."""
    target = channel(name)
    if not target.configured():
        log.warning("notification %r not sent: %s is off", message.title, name)
        return False
    try:
        target.send(message)
    except TemporaryNotifyError:
        log.warning("notification %r: %s temporarily unavailable", message.title, name)
        raise
    except NotifyError as exc:
        log.error("notification %r refused by %s: %s", message.title, name, exc)
        return False
    log.info("notification %r sent via %s", message.title, name)
    return True


def is_temporary_status(status: int) -> bool:
    """HTTP statuses worth retrying: rate limits and server-side trouble."""
    return status == 429 or status >= 500
