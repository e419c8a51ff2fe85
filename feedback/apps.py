from django.apps import AppConfig


class FeedbackConfig(AppConfig):
    """Labelers: prompts, comparison tasks, rankings, aggregation, snapshots."""

    name = "feedback"
    default_auto_field = "django.db.models.BigAutoField"
