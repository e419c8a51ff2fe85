"""Student pages. Thin: validate, call one service or selector, render.

The chat page streams through the API (static/js/chat.js); the form posts here work without
JavaScript too (a blocking answer, then a redirect), with the same rate limit.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from tutor import selectors, services
from tutor.api_chat import StudentMessageThrottle
from tutor.models import Rating
from tutor.permissions import role_required
from tutor.roles import Role

SIDEBAR_SIZE = 30
HISTORY_PAGE = 25


def _sidebar(request, current=None) -> dict:
    return {
        "subjects": services.subjects_for_choice(),
        "recent": selectors.conversations_for(request.user)[:SIDEBAR_SIZE],
        "current": current,
    }


def _throttled(request) -> bool:
    """The API's per-student throttle, applied to the no-JS form posts as well."""
    throttle = StudentMessageThrottle()
    if throttle.allow_request(request, None):
        return False
    wait = throttle.wait()
    messages.error(request, f"You are sending messages too fast; try again in {int(wait or 1)} seconds.")
    return True


@role_required(Role.STUDENT)
def index(request):
    return render(request, "tutor/index.html", _sidebar(request))


@role_required(Role.STUDENT)
@require_POST
def new_conversation(request):
    try:
        conv = services.start_conversation(request.user, request.POST.get("subject", ""))
    except ValidationError as exc:
        messages.error(request, exc.messages[0])
        return redirect("tutor:index")
    return redirect("tutor:conversation", pk=conv.pk)


@role_required(Role.STUDENT)
def conversation(request, pk: int):
    conv = selectors.get_conversation_for(request.user, pk)
    turns = selectors.turns(conv)
    ctx = _sidebar(request, conv) | {
        "conversation": conv,
        "turns": turns,
        "reasons": Rating.REASONS,
        "consent": selectors.consent_for(request.user),
        "max_chars": settings.TUTOR_MAX_MESSAGE_CHARS,
    }
    return render(request, "tutor/conversation.html", ctx)


@role_required(Role.STUDENT)
def turn_fragment(request, pk: int, message_id: int):
    """One turn, server-rendered: chat.js swaps it in when a streamed answer is done."""
    conv = selectors.get_conversation_for(request.user, pk)
    turns = selectors.turns(conv)
    for i, turn in enumerate(turns):
        if turn.question.id == message_id:
            return render(request, "tutor/_turn.html",
                          {"turn": turn, "is_last": i == len(turns) - 1, "conversation": conv,
                           "reasons": Rating.REASONS})
    return HttpResponse(status=404)


@role_required(Role.STUDENT)
@require_POST
def send(request, pk: int):
    conv = selectors.get_conversation_for(request.user, pk)
    if _throttled(request):
        return redirect("tutor:conversation", pk=pk)
    try:
        message = services.post_user_message(conv, request.POST.get("content", ""))
    except ValidationError as exc:
        messages.error(request, exc.messages[0])
        return redirect("tutor:conversation", pk=pk)
    try:
        services.answer_message(message)
    except services.EndpointUnavailable as exc:
        messages.error(request, f"Your message is saved, but {exc}. Press Retry in a moment.")
    return redirect("tutor:conversation", pk=pk)


@role_required(Role.STUDENT)
@require_POST
def regenerate(request, pk: int):
    conv = selectors.get_conversation_for(request.user, pk)
    if _throttled(request):
        return redirect("tutor:conversation", pk=pk)
    reply_to = services.last_user_message(conv)
    if reply_to is not None:
        try:
            services.answer_message(reply_to)
        except services.EndpointUnavailable as exc:
            messages.error(request, f"Your message is saved, but {exc}. Press Retry in a moment.")
    return redirect("tutor:conversation", pk=pk)


@role_required(Role.STUDENT)
@require_POST
def rate(request, message_id: int):
    msg = selectors.get_message_for(request.user, message_id)
    try:
        services.rate_message(request.user, msg, int(request.POST.get("value", "0") or 0),
                              request.POST.get("comment", ""), request.POST.getlist("reasons"))
        messages.success(request, "Thanks for the feedback.")
    except (ValidationError, ValueError) as exc:
        messages.error(request, getattr(exc, "messages", [str(exc)])[0])
    return redirect("tutor:conversation", pk=msg.conversation_id)


@role_required(Role.STUDENT)
def history(request):
    q = request.GET.get("q", "")
    page = Paginator(selectors.conversations_for(request.user, q), HISTORY_PAGE).get_page(request.GET.get("page"))
    return render(request, "tutor/history.html", {"conversations": page, "page": page, "q": q})


@role_required(Role.STUDENT)
@require_POST
def rename(request, pk: int):
    conv = selectors.get_conversation_for(request.user, pk)
    try:
        services.update_conversation(conv, title=request.POST.get("title", ""))
    except ValidationError as exc:
        messages.error(request, exc.messages[0])
    nxt = request.POST.get("next", "")
    if nxt and url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}):
        return redirect(nxt)
    return redirect("tutor:history")


@role_required(Role.STUDENT)
@require_POST
def delete(request, pk: int):
    services.delete_conversation(selectors.get_conversation_for(request.user, pk))
    messages.success(request, "Conversation deleted.")
    return redirect("tutor:history")


@role_required(Role.STUDENT)
@require_POST
def conversation_consent(request, pk: int):
    conv = selectors.get_conversation_for(request.user, pk)
    value = {"yes": True, "no": False}.get(request.POST.get("consent", ""))
    services.update_conversation(conv, consent_override=value)
    return redirect("tutor:conversation", pk=pk)


@role_required(Role.STUDENT)
def settings_page(request):
    if request.method == "POST":
        services.set_consent(request.user, request.POST.get("consent_to_labeling") == "on")
        messages.success(request, "Settings saved.")
        return redirect("tutor:settings")
    return render(request, "tutor/settings.html", {"profile": services.get_profile(request.user)})
