"""Labeler and feedback-admin pages. Thin: validate, call one service or selector, render."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from feedback import selectors, services, tasks
from feedback.forms import ImportForm
from feedback.io import ImportFileError
from feedback.models import DatasetSnapshot, ImportBatch, ImportedPair
from tutor.permissions import role_required
from tutor.roles import Role


@role_required(Role.LABELER)
def index(request):
    api_root = reverse("api-label-next").removesuffix("/label/next/")
    return render(request, "feedback/index.html", {"progress": selectors.progress(request.user), "api_root": api_root})


@role_required(Role.LABELER)
def guidelines(request):
    return render(request, "feedback/guidelines.html", {"guidelines": selectors.guidelines()})


@role_required(Role.ADMIN)
def dashboard(request):
    return render(request, "feedback/dashboard.html", {"d": selectors.labeler_dashboard()})


@role_required(Role.ADMIN)
@require_POST
def admin_actions(request):
    action = request.POST.get("action")
    if action == "reliability":
        n = services.update_reliability()
        messages.success(request, f"Recomputed agreement and reliability for {n} labelers.")
    elif action == "build_tasks":
        tasks.build_tasks.delay()
        messages.success(request, "Task building queued; new tasks appear when the worker has sampled them.")
    elif action == "resolve" and request.POST.get("ranking", "").isdigit():
        services.resolve_flag(int(request.POST["ranking"]))
        messages.success(request, "Flag resolved.")
    else:
        messages.error(request, "Unknown action.")
    return redirect("feedback:dashboard")


@role_required(Role.ADMIN)
def admin_import(request):
    form = ImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            if form.cleaned_data["kind"] == "preferences":
                batch = services.import_preferences(upload, filename=upload.name, fmt=form.cleaned_data["fmt"],
                                                    subject=form.cleaned_data["subject"], user=request.user)
            else:
                batch = services.import_prompts(upload, filename=upload.name, subject=form.cleaned_data["subject"],
                                                user=request.user)
        except ImportFileError as exc:
            messages.error(request, f"Nothing imported: {exc}")
        else:
            messages.success(request, f"Imported {batch.rows} {batch.kind} from {batch.filename} ({batch.fmt}).")
            return redirect("feedback:admin_import")
    return render(request, "feedback/admin_import.html", {
        "form": form, "batches": ImportBatch.objects.order_by("-id")[:20], "limit": settings.FEEDBACK_MAX_IMPORT_BYTES})


@role_required(Role.ADMIN)
def admin_snapshots(request):
    if request.method == "POST":
        before = DatasetSnapshot.objects.count()
        snap = services.create_snapshot()
        if DatasetSnapshot.objects.count() > before:
            messages.success(request, f"Snapshot {snap.sha256} created: {snap.train_rows} train, {snap.test_rows} test pairs.")
        else:
            messages.info(request, f"Nothing new: snapshot {snap.sha256} already holds exactly these pairs.")
        return redirect("feedback:admin_snapshots")
    return render(request, "feedback/admin_snapshots.html", {
        "snapshots": DatasetSnapshot.objects.order_by("-id")[:50], "pairs": selectors.new_pairs_count(),
        "imported": ImportedPair.objects.filter(enabled=True).count()})
