"""No secret in an error page: a real 500 debug page, rendered with the database unreachable."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from django.db import OperationalError, connection
from django.test import Client

from trading.observability import logs

DATABASE_PASSWORD = "db-pw-8f1e2c"
REDIS_PASSWORD = "redis-pw-47aa01"
BROKER_PASSWORD = "broker-pw-c93d55"
PASSWORDS = (DATABASE_PASSWORD, REDIS_PASSWORD, BROKER_PASSWORD)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unreachable_database(transactional_db: None, settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The default connection pointed at a closed port with a password; the URLs of Redis and the
    broker carry passwords too, and DATABASE_URL is in the environment, as runserver passes it on
    to every request's META."""
    port = closed_port()
    url = f"postgres://arb:{DATABASE_PASSWORD}@127.0.0.1:{port}/arb"
    monkeypatch.setenv("DATABASE_URL", url)
    settings.DEBUG = True
    settings.REDIS_URL = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed_port()}/0"
    settings.CELERY_BROKER_URL = f"redis://arb:{BROKER_PASSWORD}@127.0.0.1:{closed_port()}/0"
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(port), USER="arb", PASSWORD=DATABASE_PASSWORD)
    logs.forget_secrets()
    yield url
    connection.close()
    connection.settings_dict.clear()
    connection.settings_dict.update(saved)
    logs.forget_secrets()


def signed_in(client: Client) -> Client:
    """A client with a session cookie: the admin must read the session from the database."""
    client.cookies["sessionid"] = "s" * 32
    return client


def test_the_debug_page_of_a_database_outage_shows_no_password(unreachable_database: str) -> None:
    client = signed_in(Client(raise_request_exception=False))
    response = client.get("/admin/", DATABASE_URL=unreachable_database)

    page = response.content.decode()
    assert response.status_code == 500
    assert "OperationalError" in page  # the real debug page, with its traceback and settings
    assert "REDIS_URL" in page
    assert "CELERY_BROKER_URL" in page
    assert "DATABASE_URL" in page
    assert "conninfo" in page or "kwargs" in page  # psycopg's connect frame, with its locals
    for password in PASSWORDS:
        assert password not in page


def test_the_text_report_of_the_same_outage_shows_no_password(unreachable_database: str) -> None:
    from django.views.debug import get_exception_reporter_class

    client = signed_in(Client(raise_request_exception=True))
    with pytest.raises(OperationalError) as raised:
        client.get("/admin/")
    reporter = get_exception_reporter_class(None)(None, raised.type, raised.value, raised.tb)

    text = reporter.get_traceback_text()
    assert "OperationalError" in text
    for password in PASSWORDS:
        assert password not in text


def test_metrics_answer_while_the_database_is_unreachable(unreachable_database: str) -> None:
    response = Client().get("/metrics")

    assert response.status_code == 200
    assert 'arb_metrics_source_up{source="database"} 0.0' in response.content.decode()
