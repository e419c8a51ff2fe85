"""Studio pages (admins). Thin: validate, call one service or selector, render or redirect."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from training import optimise, pipeline, selectors, services
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
    pv = get_object_or_404(PolicyVersion.objects.select_related("parent", "snapshot", "reward_model", "source"),
                           pk=pk)
    return render(request, "training/version_detail.html", {
        "pv": pv, "lineage": selectors.lineage(pv), "reports": pv.evaluations.select_related("baseline"),
        "optimise_refusal": selectors.optimise_refusal(pv), "variant_count": pv.variants.count(),
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
            return redirect(_next_url(request) or "training:versions")
        _report_deployment(request, dep)
    except (TrainingError, ValueError) as exc:
        _flash_error(request, exc)
    return redirect(_next_url(request) or "training:versions")


def _next_url(request) -> str:
    """The page an action form came from (``next``), when it is one of ours; "" otherwise."""
    nxt = request.POST.get("next") or ""
    return nxt if nxt and url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}) else ""


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


# ==================================================================================================
# Optimised variants: the launch form, the comparison, the variant gate
# ==================================================================================================

OPTIMISE_METHODS = ("distil", "quantise", "prune")
OPTIMISE_HELP = {
    "distil": "Train a smaller student on this version's answers: fewer transformer layers (mode layers) or a "
              "lower LoRA rank (mode adapter); T is the softening temperature, α the share of the soft loss.",
    "quantise": "Store the base's Linear weights as int8 (dynamic_int8, int8_weight_only: CPU) or with "
                "bitsandbytes (bnb_int8, bnb_int4: CUDA GPU only); the adapter is re-recorded on the new base.",
    "prune": "Zero the smallest weights (unstructured) or remove MLP neurons (structured), then a short recovery "
             "fine-tune of the adapter; sparsity is the share removed.",
}


def _optimise_choices() -> dict[str, dict[str, tuple[str, ...]]]:
    from rlhf.optimise import distil, prune, quantise

    return {"distil": {"mode": distil.MODES, "hard_labels": distil.HARD_LABELS},
            "quantise": {"scheme": quantise.SCHEMES, "modules": quantise.TARGET_LINEARS},
            "prune": {"mode": prune.MODES}}


def _optimise_defaults() -> dict[str, dict]:
    """Each method's config dataclass with its defaults, as JSON-able dicts (the form's starting values)."""
    from rlhf.optimise.distil import DistilConfig
    from rlhf.optimise.prune import PruneConfig
    from rlhf.optimise.quantise import QuantiseConfig

    return {"distil": DistilConfig().to_dict(), "quantise": QuantiseConfig().to_dict(),
            "prune": PruneConfig().to_dict()}


def _field_kind(default, choices) -> str:
    if choices is not None:
        return "multi" if isinstance(default, list | tuple) else "select"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if default is None or isinstance(default, list | tuple):
        return "int_list"
    return "text"


def _optimise_form(post=None) -> list[dict]:
    """A form per method: one input per dataclass field, typed by its default; posted values kept."""
    defaults, choices = _optimise_defaults(), _optimise_choices()
    methods = []
    for method in OPTIMISE_METHODS:
        fields = []
        posted = post is not None and post.get("method") == method
        for name, default in defaults[method].items():
            opts = choices[method].get(name)
            kind = _field_kind(default, opts)
            key = f"{method}-{name}"
            if kind == "multi":
                picked = [v for v in post.getlist(key) if v] if posted and key in post else list(default)
                value = picked
            elif kind == "int_list":
                value = post.get(key, "") if posted and key in post else ", ".join(str(i) for i in default or [])
            elif kind == "bool":
                value = (post.get(key) == "on") if posted and f"{key}-present" in post else default
            else:
                value = post.get(key, "") if posted and key in post else default
            shown = ", ".join(str(v) for v in default) if isinstance(default, list | tuple) else default
            fields.append({"name": name, "key": key, "kind": kind, "value": value,
                           "default": "—" if default is None else shown, "choices": opts or ()})
        methods.append({"name": method, "help": OPTIMISE_HELP[method], "fields": fields,
                        "defaults_json": json.dumps(defaults[method], indent=2),
                        "json": post.get(f"{method}-json", "") if posted else "",
                        "gate": not (posted and f"{method}-gate-present" in post and f"{method}-gate" not in post)})
    return methods


def _posted_config(method: str, post) -> dict:
    """The config a method's form posted: its JSON box when filled, else its fields (missing: default)."""
    text = (post.get(f"{method}-json") or "").strip()
    if text:
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"the {method} config is not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise TrainingError(f"the {method} config must be a JSON object")
        return config
    defaults, choices = _optimise_defaults().get(method, {}), _optimise_choices().get(method, {})
    config: dict = {}
    for name, default in defaults.items():
        key = f"{method}-{name}"
        kind = _field_kind(default, choices.get(name))
        if kind == "bool":
            if f"{key}-present" in post:
                config[name] = post.get(key) == "on"
            continue
        if key not in post:
            continue
        raw = post.get(key, "").strip()
        try:
            if kind == "multi":
                config[name] = [v for v in post.getlist(key) if v]
            elif kind == "int":
                config[name] = int(raw)
            elif kind == "float":
                config[name] = float(raw)
            elif kind == "int_list":
                config[name] = [int(x) for x in raw.replace(",", " ").split()] if raw else None
            else:
                config[name] = raw
        except ValueError:
            raise TrainingError(f"bad {method} config: {name} must be "
                                f"{'an integer' if kind != 'float' else 'a number'}; got {raw!r}") from None
    return config


@admin_only
def version_optimise(request, pk: int):
    """Distil / quantise / prune this version: a form per method; POST queues an ``optimise`` job."""
    pv = get_object_or_404(PolicyVersion.objects.select_related("source"), pk=pk)
    error = ""
    method = request.POST.get("method", "") if request.method == "POST" else ""
    if request.method == "POST":
        try:
            # the variant gate runs after the build unless the admin unticked it (launch_optimise's default: on)
            gate = {"gate": False} if f"{method}-gate-present" in request.POST and \
                f"{method}-gate" not in request.POST else {}
            job = optimise.launch_optimise(pv, method, _posted_config(method, request.POST), user=request.user, **gate)
            messages.success(request, f"Started {method} of {pv} as job {job.pk}.")
            return redirect("training:job", pk=job.pk)
        except TrainingError as exc:
            error = str(exc)  # shown beside the form it belongs to (not flashed: it would show twice)
    return render(request, "training/version_optimise.html", {
        "pv": pv, "refusal": selectors.optimise_refusal(pv), "methods": _optimise_form(
            request.POST if request.method == "POST" else None),
        "selected": method or "distil", "error": error, "variant_count": pv.variants.count()},
        status=400 if error else 200)


@admin_only
def version_variants(request, pk: int):
    """A source version and its optimised variants side by side, with each variant's gate and actions."""
    pv = get_object_or_404(PolicyVersion, pk=pk)
    if pv.source_id is not None:
        return redirect("training:version-variants", pk=pv.source_id)
    return render(request, "training/version_variants.html", selectors.variant_comparison(pv))


@admin_only
@require_POST
def version_gate(request, pk: int):
    """Judge a variant against its source (``training.optimise.launch_variant_gate``: a job)."""
    pv = get_object_or_404(PolicyVersion, pk=pk)
    try:
        job = optimise.launch_variant_gate(pv, user=request.user)
    except TrainingError as exc:
        _flash_error(request, exc)
        return redirect("training:version-variants", pk=pv.source_id or pv.pk)
    messages.success(request, f"Started the gate of {pv} against its source as job {job.pk}.")
    return redirect("training:job", pk=job.pk)
