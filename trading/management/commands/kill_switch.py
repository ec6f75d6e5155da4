"""`manage.py kill_switch trip|rearm|status`: stop all new trades by hand, resume them, or look."""

from __future__ import annotations

import getpass
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from trading import risk_controls


class Command(BaseCommand):
    help = "Trip the kill switch (no new trades anywhere), re-arm it, or show its state."

    def add_arguments(self, parser: ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        trip = actions.add_parser("trip", help="Stop every new trade until someone re-arms")
        trip.add_argument("--reason", required=True, help="Why, for the record and the alert")
        trip.add_argument("--by", default=getpass.getuser(), help="Who trips it (default: this user)")
        rearm = actions.add_parser("rearm", help="Let trading resume")
        rearm.add_argument("--by", required=True, help="Who re-arms it, for the record")
        actions.add_parser("status", help="Show whether the switch is tripped, by whom and why")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "trip":
            if not options["reason"].strip():
                raise CommandError("--reason must say why the switch is tripped")
            switch = risk_controls.trip(options["reason"], by=f"{options['by']} (command)")
        elif action == "rearm":
            try:
                switch = risk_controls.rearm(options["by"])
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        else:
            switch = risk_controls.kill_switch()
        self.stdout.write(f"kill switch {risk_controls.describe(switch)}")
