"""Local stand-ins for Slack's Web API and Telegram's Bot API: real HTTP servers on 127.0.0.1
that record every request they receive and answer the way the real services do. Test modules
import the fixtures (`chat_fixture`, `eager_tasks_fixture`) to use them as `chat`, `eager_tasks`."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.deadlines import Deadline

SLACK_TOKEN = "xoxb-test-slack-token-0000"
TELEGRAM_TOKEN = "123456:test-telegram-token"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class ChatServer:
    """Answers every POST with `status` (200 by default) and keeps what it was sent."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.status = 200
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> ChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def texts(self) -> list[str]:
        return [str(message.body.get("text", "")) for message in self.messages()]

    def wait_for(self, count: int, timeout: float = 15) -> list[Received]:
        """The messages once at least `count` have arrived (or whatever arrived by the timeout, in
        reference seconds, scaled)."""
        deadline = Deadline(timeout)
        while len(self.messages()) < count and not deadline.passed():
            time.sleep(0.05)
        return self.messages()

    def reply(self, path: str) -> dict[str, Any]:
        if self.status != 200:
            return {"ok": False, "error": "internal_error", "description": "Internal Server Error"}
        if self.kind == "slack":
            return {"ok": True, "channel": "C1", "ts": f"{time.time():.6f}"}
        return {"ok": True, "result": {"message_id": len(self.received)}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    server.received.append(Received(self.path, dict(self.headers), json.loads(raw or b"{}")))
                payload = json.dumps(server.reply(self.path)).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the recorded requests are what tests look at

        return Handler


@dataclass
class Chat:
    slack: ChatServer
    telegram: ChatServer

    def settings_env(self) -> dict[str, str]:
        """Environment for a child process that should send to these servers."""
        return {
            "SLACK_BOT_TOKEN": SLACK_TOKEN,
            "SLACK_CHANNEL": "#trading",
            "SLACK_API_URL": f"{self.slack.url}/api/",
            "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
            "TELEGRAM_CHAT_ID": "-1001",
            "TELEGRAM_API_URL": self.telegram.url,
        }


@pytest.fixture(name="chat")
def chat_fixture(settings) -> Iterator[Chat]:
    """Both fake services running, and this process's settings pointed at them."""
    servers = Chat(ChatServer("slack").start(), ChatServer("telegram").start())
    for name, value in servers.settings_env().items():
        setattr(settings, name, value)
    yield servers
    servers.slack.stop()
    servers.telegram.stop()


@pytest.fixture(name="eager_tasks")
def eager_tasks_fixture() -> Iterator[None]:
    """Run enqueued tasks in this process, so a test sees the message as soon as it is sent."""
    from arbsite.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def telegram_path_token(path: str) -> str | None:
    match = re.match(r"/bot([^/]+)/sendMessage", path)
    return match.group(1) if match else None
