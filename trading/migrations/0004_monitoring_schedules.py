"""Beat schedules for monitoring: the checks every few seconds, the daily summary by crontab.

Kept in the database (django-celery-beat), so they can be edited or paused in the admin.
"""

from django.db import migrations

CHECKS = "run the monitoring checks"
SUMMARY = "send the daily summary"
CHECK_EVERY_SECONDS = 5


def add_schedules(apps, schema_editor):
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    crontab_model = apps.get_model("django_celery_beat", "CrontabSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    every_few_seconds, _ = interval_model.objects.get_or_create(every=CHECK_EVERY_SECONDS, period="seconds")
    # A check that waited longer than its interval is superseded by the next one.
    task_model.objects.get_or_create(
        name=CHECKS,
        defaults={
            "task": "monitor.check",
            "interval": every_few_seconds,
            "expire_seconds": CHECK_EVERY_SECONDS,
        },
    )
    just_after_midnight, _ = crontab_model.objects.get_or_create(
        minute="5", hour="0", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
    )
    task_model.objects.get_or_create(
        name=SUMMARY, defaults={"task": "notify.daily_summary", "crontab": just_after_midnight}
    )


def drop_schedules(apps, schema_editor):
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    task_model.objects.filter(name__in=[CHECKS, SUMMARY]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("trading", "0003_alert"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(add_schedules, drop_schedules)]
