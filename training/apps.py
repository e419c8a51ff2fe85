from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Admins: jobs, the model registry, evaluation, deployments and the studio."""

    name = "training"
    default_auto_field = "django.db.models.BigAutoField"
