"""The trade path's statements on real PostgreSQL: prepared once per session, executed by name."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from trading import trade_store

pytestmark = pytest.mark.django_db

ONE = ("SELECT %s::int + 1", [1])


def test_a_prepared_statement_is_planned_once_and_answers_by_name_after() -> None:
    first = trade_store.fetch_each([ONE], prepared=True)
    with connection.cursor() as cursor:
        sql = "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s"
        cursor.execute(sql, ["%$1::int + 1%"])
        (prepared,) = cursor.fetchone()

    assert first == trade_store.fetch_each([ONE], prepared=True) == [[(2,)]]
    assert prepared == 1


def test_a_request_that_failed_after_preparing_leaves_the_next_one_working() -> None:
    """A request can fail after its PREPARE ran: the statement is prepared again under a new name,
    never under the old one (which may exist already)."""
    with pytest.raises(DatabaseError), transaction.atomic():
        trade_store.fetch_each([ONE, ("SELECT 1 / 0", [])], prepared=True)

    assert trade_store.fetch_each([ONE], prepared=True) == [[(2,)]]
