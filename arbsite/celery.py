"""The Celery app, and the signals that tie its processes into the project's logging and metrics."""

from __future__ import annotations

import logging.config
import os
import socket
from typing import Any

from celery import Celery, Task
from celery.signals import (
    before_task_publish,
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    worker_ready,
    worker_shutdown,
)
from celery.worker.consumer import Consumer
from django.db import close_old_connections

from trading.observability import heartbeats
from trading.observability.logs import CORRELATION_HEADER, current_correlation, set_correlation
from trading.observability.metrics import TASK_FAILURES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbsite.settings")

app = Celery("arbsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

_worker_heartbeat: heartbeats.Beater | None = None


@setup_logging.connect
def use_project_logging(**_: Any) -> None:
    """Celery keeps its hands off logging: every process logs through settings.LOGGING."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@before_task_publish.connect
def carry_correlation(headers: dict[str, Any], **_: Any) -> None:
    """A task sent while handling an opportunity carries its correlation id to the worker."""
    correlation_id = current_correlation()
    if correlation_id is not None:
        headers.setdefault(CORRELATION_HEADER, correlation_id)


@task_prerun.connect
def adopt_correlation(task: Task[Any, Any], **_: Any) -> None:
    set_correlation(getattr(task.request, CORRELATION_HEADER, None))


@task_prerun.connect
def drop_broken_connections(task: Task[Any, Any], **_: Any) -> None:
    """Connections live across tasks (CELERY_DB_REUSE_MAX): one that failed (the database went
    away) or outlived CONN_MAX_AGE is closed here, and the task opens a fresh one. A task run
    eagerly runs inside its caller's work, whose connection is left alone."""
    if not getattr(task.request, "is_eager", False):
        close_old_connections()


@task_postrun.connect
def drop_correlation(**_: Any) -> None:
    set_correlation(None)


@task_failure.connect
def count_task_failure(sender: Task[Any, Any], **_: Any) -> None:
    TASK_FAILURES.labels(task=sender.name).inc()


@worker_ready.connect
def start_worker_heartbeat(sender: Consumer, **_: Any) -> None:
    global _worker_heartbeat
    _worker_heartbeat = heartbeats.worker_beater(sender.hostname or socket.gethostname())
    _worker_heartbeat.start()


@worker_shutdown.connect
def stop_worker_heartbeat(**_: Any) -> None:
    if _worker_heartbeat is not None:
        _worker_heartbeat.stop()
