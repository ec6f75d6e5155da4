"""Beat schedules for the money path: resuming trades left in flight by a worker that died, and
keeping each live venue's fee tier, rules and balances current in the record.

Kept in the database (django-celery-beat), so they can be edited or paused in the admin.
"""

from django.db import migrations

SCHEDULES = {
    "resume trades left in flight": ("trade.resume", 5),
    "refresh live accounts (fee tiers, rules, balances)": ("trade.refresh_accounts", 60),
}


def add_schedules(apps, schema_editor):
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, (task, seconds) in SCHEDULES.items():
        every, _ = interval_model.objects.get_or_create(every=seconds, period="seconds")
        # A run that waited longer than its interval is superseded by the next one.
        task_model.objects.get_or_create(
            name=name, defaults={"task": task, "interval": every, "expire_seconds": seconds}
        )


def drop_schedules(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name__in=SCHEDULES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("trading", "0008_money_path"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(add_schedules, drop_schedules)]
