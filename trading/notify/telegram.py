"""Telegram through the Bot API's sendMessage, over plain HTTP with the standard library.

TELEGRAM_API_URL points it elsewhere (a local server in tests). The bot token is part of the
request path, so no error text built here contains the URL.
"""

from __future__ import annotations

import json
import urllib.request
from urllib.error import HTTPError

from django.conf import settings

from trading.notify.base import Message, NotifyError, TemporaryNotifyError, is_temporary_status


class Telegram:
    name = "telegram"

    def configured(self) -> bool:
        return bool(settings.TELEGRAM_BOT_TOKEN and settings.TELEGRAM_CHAT_ID)

    def send(self, message: Message) -> None:
        body = {
            "chat_id": settings.TELEGRAM_CHAT_ID,
            "text": message.as_text(),
            "disable_web_page_preview": True,
        }
        request = urllib.request.Request(
            f"{settings.TELEGRAM_API_URL.rstrip('/')}/bot{settings.TELEGRAM_BOT_TOKEN}/sendMessage",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=settings.NOTIFY_TIMEOUT_SECONDS) as response:
                answer = json.loads(response.read() or b"{}")
        except HTTPError as exc:
            error = TemporaryNotifyError if is_temporary_status(exc.code) else NotifyError
            raise error(f"telegram answered {exc.code}") from None
        except OSError as exc:  # URLError, refused connections and timeouts alike
            raise TemporaryNotifyError(f"telegram unreachable: {type(exc).__name__}") from None
        except json.JSONDecodeError:
            raise TemporaryNotifyError("telegram answered with something other than JSON") from None
        if not answer.get("ok"):
            raise NotifyError(f"telegram refused the message: {answer.get('description', 'no reason given')}")
