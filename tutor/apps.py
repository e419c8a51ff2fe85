from django.apps import AppConfig


class TutorConfig(AppConfig):
    """Students: subjects, conversations, messages, ratings; also accounts and roles."""

    name = "tutor"
    default_auto_field = "django.db.models.BigAutoField"
