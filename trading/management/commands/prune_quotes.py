"""`manage.py prune_quotes`: delete recorded quotes older than a number of days."""

from __future__ import annotations

from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from trading.storage import prune_quotes


class Command(BaseCommand):
    help = "Delete quotes received more than N days ago, in bounded batches."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--older-than-days",
            type=int,
            default=settings.QUOTE_RETENTION_DAYS,
            help="Keep this many days of quotes (default: the QUOTE_RETENTION_DAYS setting)",
        )
        parser.add_argument(
            "--batch-size", type=int, default=10_000, help="Rows deleted per statement (default 10000)"
        )

    def handle(self, *args: Any, older_than_days: int, batch_size: int, **options: Any) -> None:
        if older_than_days < 0 or batch_size < 1:
            raise CommandError("--older-than-days must be 0 or more and --batch-size at least 1")
        cutoff = timezone.now() - timedelta(days=older_than_days)
        deleted = prune_quotes(cutoff, batch=batch_size)
        self.stdout.write(f"pruned {deleted} quotes received before {cutoff:%Y-%m-%d %H:%M:%S} UTC")
