"""Error reports and debug pages that show no secret, even with DEBUG on.

Django's own filter masks settings whose names look secret, but only while DEBUG is off does it
touch a traceback's local variables, and it never looks inside values: a `REDIS_URL` with a
password, `DATABASE_URL` in the request's environment, or psycopg's connection arguments in a
frame are shown as they are. `SecretMaskingFilter` is always active and masks URL passwords,
libpq `password=` options and every known secret value (see logs.secret_values) wherever they
appear in settings, the request's META and the frames' variables. `MaskingExceptionReporter`
passes the finished page or text through the same masking, as a last line.
"""

from __future__ import annotations

import html
import reprlib
from typing import Any

from django.http import HttpRequest
from django.utils.safestring import SafeString, mark_safe
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

from trading.observability.logs import MASK, redact, secret_values

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 4096


class _Shown:
    """A value the debug page prints as the masked text of its repr."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class SecretMaskingFilter(SafeExceptionReporterFilter):
    """SafeExceptionReporterFilter, active whatever DEBUG says, that also masks secrets inside
    values: strings, the members of dicts, lists and tuples, and the repr of any other object."""

    def is_active(self, request: HttpRequest | None) -> bool:
        return True

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        return redact(cleansed) if isinstance(cleansed, str) else cleansed

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: Any) -> Any:
        variables = super().get_traceback_frame_variables(request, tb_frame)
        return [(name, self.masked_variable(name, value)) for name, value in variables]

    def masked_variable(self, name: str, value: Any) -> Any:
        """A frame variable as it may be shown: masked whole when its name looks secret."""
        if isinstance(value, str | dict | list | tuple):
            return self.cleanse_setting(name, value)
        try:
            text = _short.repr(value)
        except Exception:  # a broken __repr__ must not break the error page
            return _Shown(f"<{type(value).__name__} with an unprintable repr>")
        masked = redact(text)
        return _Shown(masked) if masked != text else value


class MaskingExceptionReporter(ExceptionReporter):
    """The debug page and the text report, with every known secret masked in the final output."""

    # Django renders both as safe strings; masking only replaces text in them (escaped in HTML).
    def get_traceback_html(self) -> SafeString:
        return mark_safe(mask_output(super().get_traceback_html(), escaped=True))

    def get_traceback_text(self) -> SafeString:
        return mark_safe(mask_output(super().get_traceback_text(), escaped=False))


def mask_output(text: str, escaped: bool) -> str:
    """`text` with URL passwords and every known secret masked, also in their HTML-escaped form
    when `escaped` (the page escapes what it shows)."""
    text = redact(text)
    if escaped:
        for secret in secret_values():
            text = text.replace(html.escape(secret), MASK)
    return text
