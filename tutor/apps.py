from django.apps import AppConfig


class TutorConfig(AppConfig):
    """Students: subjects, conversations, messages, ratings; also accounts and roles."""

    name = "tutor"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Django's security/CSRF/X-Frame-Options middleware on the event loop under ASGI (issue 15), before
        # the first handler builds its middleware chain
        from config.middleware import run_django_middleware_on_loop

        run_django_middleware_on_loop()
