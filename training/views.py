"""Studio pages (admins). Thin: validate, call one service or selector, render or redirect."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from training import pipeline, selectors, services
from training.models import Job, PolicyVersion
from training.services import TrainingError
from tutor.permissions import role_required
from tutor.roles import Role

admin_only = role_required(Role.ADMIN)

STEP_KINDS = [Job.Kind.PIPELINE, Job.Kind.SNAPSHOT, Job.Kind.REWARD_MODEL, Job.Kind.PPO, Job.Kind.EVALUATE,
              Job.Kind.DEPLOY, Job.Kind.BENCHMARKS]


def _flash_error(request, exc: Exception) -> None:
    messages.error(request, str(exc))


@admin_only
def index(request):
    services.ensure_initial_versions()
    return render(request, "training/index.html", {
        "overview": selectors.overview(), "jobs": selectors.jobs(limit=25, top_level=True),
        "subjects": selectors.SUBJECTS})


@admin_only
def job_list(request):
    return render(request, "training/jobs.html", {"jobs": selectors.jobs(limit=200)})


@admin_only
def job_detail(request, pk: int):
    job = get_object_or_404(Job.objects.select_related("launched_by", "parent"), pk=pk)
    return render(request, "training/job_detail.html", {
        "job": job, "children": job.children.order_by("id"), "config_json": json.dumps(job.config, indent=2),
        "result_json": json.dumps(job.result, indent=2),
        "versions": job.policy_versions.all(), "reward_models": job.reward_models.all(),
        "reports": job.evaluations.all(), "deployments": selectors.deployments(job=job)})


@admin_only
@require_POST
def job_cancel(request, pk: int):
    try:
        services.request_cancel(pk)
        messages.success(request, f"Cancellation of job {pk} requested; it stops after its current step.")
    except TrainingError as exc:
        _flash_error(request, exc)
    return redirect("training:job", pk=pk)


@admin_only
@require_POST
def job_retry(request, pk: int):
    try:
        job = services.retry_job(pk, user=request.user)
        messages.success(request, f"Started job {job.pk}.")
        return redirect("training:job", pk=job.pk)
    except (TrainingError, Job.DoesNotExist) as exc:
        _flash_error(request, exc)
        return redirect("training:job", pk=pk)


@admin_only
def launch(request):
    """Forms for the whole pipeline and for each step; config is JSON prefilled with the defaults."""
    defaults = pipeline.default_pipeline_config()
    form = {"kind": request.POST.get("kind", "pipeline"), "subject": request.POST.get("subject", ""),
            "config": request.POST.get("config") or json.dumps(defaults, indent=2),
            "algorithm": request.POST.get("algorithm", "")}
    if request.method == "POST":
        try:
            config = json.loads(form["config"] or "{}")
        except json.JSONDecodeError as exc:
            messages.error(request, f"config is not valid JSON: {exc}")
        else:
            try:
                if form["kind"] not in STEP_KINDS:
                    raise TrainingError(f"unknown job kind {form['kind']!r}")
                if form["algorithm"] and isinstance(config, dict):
                    # the select wins over the JSON's "algorithm" (the JSON carries the "alt" settings)
                    config["algorithm"] = form["algorithm"]
                job = services.launch_step(form["kind"], subject=form["subject"], config=config, user=request.user)
                messages.success(request, f"Launched {job}.")
                return redirect("training:job", pk=job.pk)
            except TrainingError as exc:
                _flash_error(request, exc)
    if not form["algorithm"]:
        try:
            form["algorithm"] = str(json.loads(form["config"]).get("algorithm") or "ppo")
        except (ValueError, AttributeError):
            form["algorithm"] = "ppo"
    return render(request, "training/launch.html", {
        "form": form, "kinds": STEP_KINDS, "subjects": selectors.SUBJECTS, "algorithms": pipeline.ALGORITHMS,
        "defaults_json": json.dumps(defaults, indent=2)}, status=400 if request.method == "POST" else 200)


@admin_only
def version_list(request):
    services.ensure_initial_versions()
    rows = [{"pv": pv, "report": selectors.latest_report(pv)} for pv in selectors.versions()]
    return render(request, "training/versions.html", {
        "rows": rows, "live": selectors.live_versions(), "reward_models": selectors.reward_models(),
        "deployments": selectors.deployments(), "subjects": selectors.SUBJECTS,
        "rollback_targets": {s: services.rollback_target(s) for s in selectors.SUBJECTS}})


@admin_only
def version_detail(request, pk: int):
    pv = get_object_or_404(PolicyVersion.objects.select_related("parent", "snapshot", "reward_model"), pk=pk)
    return render(request, "training/version_detail.html", {
        "pv": pv, "lineage": selectors.lineage(pv), "reports": pv.evaluations.select_related("baseline"),
        "metrics_json": json.dumps(pv.metrics, indent=2), "siblings": selectors.versions(pv.subject),
        "deployments": selectors.deployments(version=pv)})


@admin_only
def compare(request):
    picks = request.GET.getlist("pick") or [request.GET.get("a", ""), request.GET.get("b", "")]
    try:
        if len(picks) != 2:
            raise ValueError("two versions")
        a = PolicyVersion.objects.get(pk=int(picks[0]))
        b = PolicyVersion.objects.get(pk=int(picks[1]))
    except (ValueError, PolicyVersion.DoesNotExist):
        raise Http404("pick two versions to compare (?a=<id>&b=<id>)") from None
    return render(request, "training/compare.html", selectors.compare(a, b))


def _version_action(request, pk: int, action: str):
    pv = get_object_or_404(PolicyVersion, pk=pk)
    try:
        if action == "promote":
            dep = services.promote(pv, user=request.user)
        elif action == "canary":
            dep = services.start_canary(pv, request.POST.get("share") or None, user=request.user)
        else:
            services.retire(pv, user=request.user, note="retired by an admin")
            messages.success(request, f"{pv} retired.")
            return redirect("training:versions")
        _report_deployment(request, dep)
    except (TrainingError, ValueError) as exc:
        _flash_error(request, exc)
    return redirect("training:versions")


def _report_deployment(request, dep) -> None:
    if dep.status == dep.Status.APPLIED:
        messages.success(request, f"{dep}: applied on {dep.target}.")
    else:
        messages.warning(request, f"{dep}: recorded; the endpoint has not confirmed yet ({dep.error}). "
                                  "The reaper keeps retrying.")


@admin_only
@require_POST
def version_promote(request, pk: int):
    return _version_action(request, pk, "promote")


@admin_only
@require_POST
def version_canary(request, pk: int):
    return _version_action(request, pk, "canary")


@admin_only
@require_POST
def version_retire(request, pk: int):
    return _version_action(request, pk, "retire")


@admin_only
@require_POST
def rollback(request, subject: str):
    try:
        _report_deployment(request, services.rollback(subject, user=request.user))
    except TrainingError as exc:
        _flash_error(request, exc)
    return redirect("training:versions")


@admin_only
def schedule(request):
    data = selectors.schedule()
    if request.method == "POST":
        try:
            threshold = request.POST.get("min_new_pairs") or None
            config_text = (request.POST.get("config") or "").strip()
            config = json.loads(config_text) if config_text else None
            services.update_schedule(enabled=request.POST.get("enabled") == "on",
                                     every_seconds=int(request.POST.get("every_seconds") or 0),
                                     min_new_pairs=int(threshold) if threshold else None, config=config)
            messages.success(request, "Schedule saved.")
            return redirect("training:schedule")
        except (TrainingError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            _flash_error(request, exc)
    data["config_json"] = json.dumps(data["config"], indent=2) if data["config"] else ""
    return render(request, "training/schedule.html", data)


@admin_only
@require_POST
def feedback_source(request, slug: str):
    """Switch one source of preference pairs on or off (the studio overview's table)."""
    from feedback.services import set_source_enabled

    try:
        row = set_source_enabled(slug, request.POST.get("enabled") == "1", user=request.user)
        messages.success(request, f"{row.get_slug_display()}: {'on' if row.enabled else 'off'} from the next snapshot.")
    except ValueError as exc:
        _flash_error(request, exc)
    return redirect("training:index")


@admin_only
def benchmarks(request, subject: str | None = None):
    """Report cards side by side: per subject, per suite, every version's metrics with CI and the delta."""
    if subject is not None and subject not in selectors.SUBJECTS:
        raise Http404(f"unknown subject {subject!r}")
    from training.benchmarks import report_card_defaults

    return render(request, "training/benchmarks.html", {
        "board": selectors.benchmark_board(subject), "subject": subject, "subjects": selectors.SUBJECTS,
        "versions": selectors.versions(subject), "defaults": report_card_defaults()})


@admin_only
@require_POST
def benchmarks_run(request):
    """Run the report card of one version now (a ``benchmarks`` job)."""
    try:
        job = services.launch_report_card(request.POST.get("policy_version_id") or "",
                                          suites=(request.POST.get("suites") or "all").strip(),
                                          limit=request.POST.get("limit") or None, user=request.user)
    except TrainingError as exc:
        _flash_error(request, exc)
        return redirect(request.POST.get("next") or "training:benchmarks")
    messages.success(request, f"Started the report card of {job.subject} as job {job.pk}.")
    return redirect("training:job", pk=job.pk)
