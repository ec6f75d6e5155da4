"""Log record filters for the one JSON logging configuration (`LOGGING` in settings).

`CorrelationFilter` stamps every record with the correlation id of the work in progress, so one
search shows an opportunity's whole story: its dispatch, the task, both orders, the trade and any
notification. The id lives in a context variable: it follows asyncio tasks, and Celery carries it
to the worker in a task header (see arbsite/celery.py).

`RedactionFilter` masks secrets before a record is formatted: the values of settings and
environment variables whose names contain KEY, SECRET, TOKEN or PASSWORD, the password part
of any URL (`redis://:pw@host`, `postgres://user:pw@host`) and of a libpq connection string
(`password=pw`).
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.signals import setting_changed

MASK = "***"
CORRELATION_HEADER = "arb_correlation_id"
# A name segment ending in KEY, SECRET, TOKEN or PASSWORD: SECRET_KEY, SLACK_BOT_TOKEN, APIKEY,
# DATABASES.default.PASSWORD; not global_keyprefix.
SECRET_NAME = re.compile(r"(?:^|[_.-])[a-z]*(?:key|secret|token|password|passwd)s?(?:$|[_.-])", re.I)
# scheme://[user]:password@ — the password stops at the last "@" before the host part.
URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:)[^\s/?#]*(?=@)")
# A libpq connection string's password option: password=secret or password='se cret'.
CONNINFO_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.I)
# Shorter values (flags, "1", "on") would mask ordinary words in every message.
MIN_SECRET_LENGTH = 4

_correlation: ContextVar[str | None] = ContextVar("correlation_id", default=None)
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def opportunity_correlation(opportunity_id: int) -> str:
    """The correlation id of everything done for one opportunity."""
    return f"opp-{opportunity_id}"


def current_correlation() -> str | None:
    return _correlation.get()


@contextmanager
def correlation(correlation_id: str | None) -> Iterator[None]:
    """Log lines inside the block (and Celery tasks sent from it) carry `correlation_id`."""
    token = _correlation.set(correlation_id)
    try:
        yield
    finally:
        _correlation.reset(token)


def set_correlation(correlation_id: str | None) -> None:
    """For code with separate start and end hooks (Celery's task_prerun/task_postrun)."""
    _correlation.set(correlation_id)


class CorrelationFilter(logging.Filter):
    """Adds `correlation_id` (None outside any correlated work) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = _correlation.get()
        return True


class RedactionFilter(logging.Filter):
    """Masks secret values and URL passwords in the message, its arguments, extra fields and any
    traceback. The message is formatted here, so the formatter sees only the masked text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):
            record.msg = {key: redact(value) for key, value in record.msg.items()}
        else:
            record.msg = redact(_message(record))
            record.args = None
        if record.exc_info:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):
        # Arguments that do not fit the format: keep both, visibly, rather than lose the line.
        return f"{record.msg} (unformattable arguments: {record.args!r})"


def redact(value: Any) -> Any:
    """`value` with every known secret and URL password replaced by MASK (strings only; other
    values are returned as they are)."""
    if not isinstance(value, str):
        return value
    text = URL_PASSWORD.sub(rf"\g<head>{MASK}", value)
    text = CONNINFO_PASSWORD.sub(rf"\g<head>{MASK}", text)
    for secret in secret_values():
        if secret in text:
            text = text.replace(secret, MASK)
    return text


@cache
def secret_values() -> tuple[str, ...]:
    """Secret values from the environment and the settings, longest first (so a secret that
    contains another is masked whole). Cached: `forget_secrets` when settings change."""
    found: set[str] = set()
    for name, value in [*os.environ.items(), *_settings_items()]:
        found.update(_secrets_in(name, value))
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True))


def forget_secrets(**_: Any) -> None:
    secret_values.cache_clear()


# Settings change at run time only under tests (override_settings, pytest-django's `settings`).
setting_changed.connect(forget_secrets)


def _secrets_in(name: str, value: Any) -> Iterator[str]:
    """The secret strings inside one setting or variable: all of it when its name says secret;
    otherwise the secret-named members of a dict and the passwords of URLs."""
    if isinstance(value, str):
        if SECRET_NAME.search(name):
            yield value
        elif "://" in value and "@" in value:
            yield from _password_of(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secrets_in(f"{name}.{key}", item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _secrets_in(name, item)


def _password_of(url: str) -> Iterator[str]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        yield password


def _settings_items() -> list[tuple[str, Any]]:
    if not settings.configured:
        return []
    return [(name, getattr(settings, name)) for name in dir(settings) if name.isupper()]
