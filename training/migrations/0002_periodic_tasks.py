"""Register the training schedules in django-celery-beat (admins edit them in the studio).

* ``training: reaper`` — fails jobs whose worker died and re-applies lost deployments;
* ``training: retraining schedule`` — runs the pipeline when enough new preference pairs exist.
"""

from django.conf import settings
from django.db import migrations

REAPER = "training: reaper"
SCHEDULE = "training: retraining schedule"


def create(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    from django.utils import timezone

    reaper_every = max(1, int(getattr(settings, "TRAINING_REAPER_INTERVAL", 30)))
    every_reaper, _ = IntervalSchedule.objects.get_or_create(every=reaper_every, period="seconds")
    schedule_every = max(1, int(getattr(settings, "TRAINING_SCHEDULE_SECONDS", 600)))
    every_check, _ = IntervalSchedule.objects.get_or_create(every=schedule_every, period="seconds")
    PeriodicTask.objects.get_or_create(
        name=REAPER, defaults={"task": "training.reap", "interval": every_reaper, "enabled": True,
                               "description": "Fail dead training jobs; re-apply lost deployments."})
    PeriodicTask.objects.get_or_create(
        name=SCHEDULE, defaults={"task": "training.trigger_pipeline", "interval": every_check, "enabled": True,
                                 "kwargs": "{}",
                                 "description": "Run the retraining pipeline when enough new pairs exist."})
    # the scheduler reloads when this timestamp changes (historical models send no signals)
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def remove(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[REAPER, SCHEDULE]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]
