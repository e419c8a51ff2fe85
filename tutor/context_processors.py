"""Role flags for the base template's navigation."""

from django.conf import settings

from tutor.roles import Role, has_role, is_admin


def roles(request) -> dict:
    user = getattr(request, "user", None)
    return {
        "is_student": bool(user) and has_role(user, Role.STUDENT),
        "is_labeler": bool(user) and has_role(user, Role.LABELER),
        "is_admin_role": bool(user) and is_admin(user),
        "allow_signup": settings.TUTOR_ALLOW_SIGNUP,
    }
