"""`manage.py setup_demo`: simulated venues, paper balances, a default strategy and an admin user.

Idempotent. The admin is DEMO_ADMIN_USER (default "admin"); its password comes from
DEMO_ADMIN_PASSWORD, or is generated for a new user and printed here once.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand

from devtools.demo.setup import setup_demo


class Command(BaseCommand):
    help = "Create the demo's simulated venues, paper balances, default strategy and admin user."

    def handle(self, *args: Any, **options: Any) -> None:
        username = os.environ.get("DEMO_ADMIN_USER") or "admin"
        result = setup_demo(username, os.environ.get("DEMO_ADMIN_PASSWORD") or None)
        venues = ", ".join(venue.name for venue in result.venues)
        self.stdout.write(f"venues: {venues}")
        self.stdout.write(f"active strategy: {result.strategy} on {', '.join(result.strategy.symbols)}")
        if result.admin_password is not None and not os.environ.get("DEMO_ADMIN_PASSWORD"):
            self.stdout.write(f"admin user {username!r}, password (shown once): {result.admin_password}")
        else:
            self.stdout.write(f"admin user {username!r}")
