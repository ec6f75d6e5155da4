"""Beat schedule for reconciliation: recorded orders and balances against each live venue.

Kept in the database (django-celery-beat), so it can be edited or paused in the admin.
"""

from django.db import migrations

RECONCILE = "reconcile orders and balances with the venues"
RECONCILE_EVERY_SECONDS = 60


def add_schedule(apps, schema_editor):
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    every_minute, _ = interval_model.objects.get_or_create(every=RECONCILE_EVERY_SECONDS, period="seconds")
    # A run that waited longer than its interval is superseded by the next one.
    task_model.objects.get_or_create(
        name=RECONCILE,
        defaults={
            "task": "trade.reconcile",
            "interval": every_minute,
            "expire_seconds": RECONCILE_EVERY_SECONDS,
        },
    )


def drop_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=RECONCILE).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("trading", "0005_risk"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(add_schedule, drop_schedule)]
