"""The emulator's REST side on the wire: requests and replies, the shape of a dialect, and the
threaded HTTP server that hands every request to a route (the Emulator's) and writes its reply.

One server on 127.0.0.1 hosts several venues, each under its own path prefix
(`http://127.0.0.1:PORT/<venue>/...`) and each speaking one dialect. A dialect is a module with
the same shape as `binance` and `kraken`: a route table from (method, path) to a handler, a table
of private (signed) routes whose handlers also get the caller's account, `authenticate(venue,
request)` that checks a signature the way that venue does, a `fault_reply(status)` that words
an injected error the way that venue does, and `new_order_client_id(request)` that names the
client order id of a new-order request, so that its arrival is timed before anything else. The
server itself knows nothing of any venue's format.

This module uses only the standard library, so it runs in a test process or a command alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from devtools.emulator.matching import Account
from devtools.emulator.venue import EmulatedVenue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # below the venue prefix, e.g. "/api/v3/depth"
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    raw_query: str = ""  # as sent: signatures cover the exact bytes, not the parsed pairs

    def header(self, name: str) -> str:
        """The header's value ("" when absent), its name matched regardless of case."""
        wanted = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == wanted), "")

    def form(self) -> dict[str, str]:
        """The URL-encoded body's fields."""
        return dict(parse_qsl(self.body.decode(errors="replace"), keep_blank_values=True))


@dataclass(frozen=True)
class Reply:
    """`body` is JSON-encodable, or a str served as plain text."""

    status: int
    body: Any


Handler = Callable[[EmulatedVenue, Request], Reply]


PrivateHandler = Callable[[EmulatedVenue, Request, Account], Reply]


class Dialect(Protocol):
    """The shape of a dialect module."""

    ROUTES: Mapping[tuple[str, str], Handler]
    PRIVATE_ROUTES: Mapping[tuple[str, str], PrivateHandler]

    def authenticate(self, venue: EmulatedVenue, request: Request) -> Account | Reply:
        """The signing account, or the venue's refusal. Called holding the venue's ledger."""
        ...

    def fault_reply(self, status: int) -> Reply: ...

    def new_order_client_id(self, request: Request) -> str | None:
        """The client order id of a new-order request; None for any other request (or an order
        sent without one)."""
        ...


# Answers one request: (method, path, query, headers, body, the query as sent) -> the reply, or
# None to answer nothing and close the connection.
Route = Callable[[str, str, Mapping[str, str], Mapping[str, str], bytes, str], Reply | None]


class RestServer(ThreadingHTTPServer):
    daemon_threads = True
    # A handler may be sleeping out an injected delay; stop() must not wait for it.
    block_on_close = False

    def __init__(self, address: tuple[str, int], route: Route) -> None:
        super().__init__(address, _RequestHandler)
        self.route = route
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """End every connection still open (kept alive between requests), as a venue that goes
        away does: its clients see the connection close and must connect again."""
        with self._open_lock:
            connections, self._open = self._open, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _RequestHandler(BaseHTTPRequestHandler):
    server: RestServer
    # Connections are kept alive between requests, as the venues keep them: a client pays for
    # connecting once, not on every order. A client that gave up on a delayed answer closes its
    # connection, and the handler's late answer finds it closed.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # an answer's headers and body go out without waiting for an ack

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def _answer(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.route(
            self.command, url.path, dict(parse_qsl(url.query)), dict(self.headers.items()), body, url.query
        )
        if reply is None:
            self.close_connection = True  # nothing to answer: the client sees the connection close
            return
        try:
            self._send(reply)
        except ConnectionError as exc:
            # The client gave up first (an injected delay outlasted its timeout): expected.
            log.debug("client left before the reply to %s %s: %s", self.command, self.path, exc)

    def _send(self, reply: Reply) -> None:
        if isinstance(reply.body, str):
            payload, content_type = reply.body.encode(), "text/plain; charset=utf-8"
        else:
            payload, content_type = json.dumps(reply.body).encode(), "application/json"
        self.send_response(reply.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)
