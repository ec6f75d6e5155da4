"""PostgreSQL-only BRIN index for the append-only quote table, and the default beat schedules.

The schedules live in the database (django-celery-beat), so they exist after `migrate` and can be
edited or paused in the admin.
"""

from django.db import migrations

SCHEDULES = [
    ("collect quotes from every enabled venue", "collect.all_venues"),
    ("store collected quotes", "collect.store_quotes"),
]


def add_brin(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS quote_received_brin ON trading_quote USING brin (received_at)"
        )


def drop_brin(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS quote_received_brin")


def add_schedules(apps, schema_editor):
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    every_second, _ = interval_model.objects.get_or_create(every=1, period="seconds")
    for name, task in SCHEDULES:
        # A collection that waited longer than this is worthless: expire it rather than pile up.
        task_model.objects.get_or_create(
            name=name, defaults={"task": task, "interval": every_second, "expire_seconds": 5}
        )


def drop_schedules(apps, schema_editor):
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    task_model.objects.filter(name__in=[name for name, _ in SCHEDULES]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("trading", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.RunPython(add_brin, drop_brin),
        migrations.RunPython(add_schedules, drop_schedules),
    ]
