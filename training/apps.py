from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Admins: jobs, the model registry, evaluation, deployments and the studio."""

    name = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from training import optimise

        optimise.register()  # the ``optimise`` job step (training.optimise)
