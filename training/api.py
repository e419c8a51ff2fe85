"""Studio API views (admins): JSON for live progress bars and curves, and the same actions as the pages."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from training import selectors, services
from training.models import Job, PolicyVersion
from training.services import TrainingError
from tutor.permissions import IsAdmin

_any = inline_serializer("StudioAny", {"detail": serializers.CharField(required=False)})


def _error(exc: TrainingError) -> Response:
    return Response({"detail": str(exc)}, status=exc.status)


def _deployment(dep) -> dict:
    return {"id": dep.pk, "subject": dep.subject, "action": dep.action, "status": dep.status,
            "promoted": dep.promoted.version, "candidate": dep.candidate.version if dep.candidate_id else None,
            "candidate_share": dep.candidate_share, "error": dep.error}


class OverviewView(APIView):
    """Figures for the studio overview (rankings/day, pairs, labelers, live versions and traffic)."""

    permission_classes = [IsAdmin]

    @extend_schema(responses=_any)
    def get(self, request):
        data = selectors.overview()
        return Response(data)


class JobListView(APIView):
    """Recent jobs with progress (polled by the jobs list's live progress bars); POST launches one."""

    permission_classes = [IsAdmin]

    @extend_schema(operation_id="studio_jobs_list",
                   parameters=[OpenApiParameter("ids", str, description="comma-separated job ids"),
                               OpenApiParameter("status", str), OpenApiParameter("kind", str)], responses=_any)
    def get(self, request):
        ids = [int(x) for x in request.query_params.get("ids", "").split(",") if x.strip().isdigit()]
        if ids:
            jobs = list(Job.objects.filter(pk__in=ids).select_related("launched_by"))
        else:
            jobs = selectors.jobs(limit=100, status=request.query_params.get("status") or None,
                                  kind=request.query_params.get("kind") or None)
        return Response({"jobs": [selectors.job_summary(j) for j in jobs]})

    @extend_schema(request=inline_serializer("LaunchJob", {
        "kind": serializers.ChoiceField(choices=Job.Kind.values), "subject": serializers.CharField(required=False),
        "config": serializers.JSONField(required=False)}), responses=_any)
    def post(self, request):
        kind = request.data.get("kind")
        if kind not in Job.Kind.values:
            return Response({"detail": f"kind must be one of {', '.join(Job.Kind.values)}"}, status=400)
        config = request.data.get("config") or {}
        if not isinstance(config, dict):
            return Response({"detail": "config must be a JSON object"}, status=400)
        try:
            job = services.launch_step(kind, subject=request.data.get("subject") or "", config=config,
                                       user=request.user)
        except TrainingError as exc:
            return _error(exc)
        return Response(selectors.job_summary(job), status=status.HTTP_201_CREATED)


class JobDetailView(APIView):
    """One job: summary, metrics (from ``since`` on, for incremental curves), log tail, children."""

    permission_classes = [IsAdmin]

    @extend_schema(parameters=[OpenApiParameter("since", int)], responses=_any)
    def get(self, request, pk: int):
        job = Job.objects.filter(pk=pk).select_related("launched_by").first()
        if job is None:
            return Response({"detail": f"job {pk} does not exist"}, status=404)
        try:
            since = max(0, int(request.query_params.get("since", 0)))
        except ValueError:
            return Response({"detail": "since must be an integer"}, status=400)
        return Response(selectors.job_detail(job, since))


class JobCancelView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(request=None, responses=_any)
    def post(self, request, pk: int):
        try:
            job = services.request_cancel(pk)
        except TrainingError as exc:
            return _error(exc)
        return Response(selectors.job_summary(job), status=202)


class VersionListView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=_any)
    def get(self, request):
        out = []
        for pv in selectors.versions(request.query_params.get("subject") or None):
            report = selectors.latest_report(pv)
            out.append({"id": pv.pk, "subject": pv.subject, "version": pv.version, "status": pv.status,
                        "parent": pv.parent.version if pv.parent_id else None, "sha256": pv.sha256,
                        "snapshot": pv.snapshot_id, "reward_model": pv.reward_model_id,
                        "gate": None if report is None else {"passed": report.passed, "suites": report.suites}})
        return Response({"versions": out, "live": selectors.live_versions()})


class VersionActionView(APIView):
    """POST promote | canary (``share``) | retire."""

    permission_classes = [IsAdmin]

    @extend_schema(request=inline_serializer("VersionAction", {"share": serializers.FloatField(required=False)}),
                   responses=_any)
    def post(self, request, pk: int, action: str):
        pv = PolicyVersion.objects.filter(pk=pk).first()
        if pv is None:
            return Response({"detail": f"policy version {pk} does not exist"}, status=404)
        try:
            if action == "promote":
                return Response(_deployment(services.promote(pv, user=request.user)))
            if action == "canary":
                return Response(_deployment(services.start_canary(pv, request.data.get("share"), user=request.user)))
            if action == "retire":
                services.retire(pv, user=request.user, note="retired through the API")
                return Response({"id": pv.pk, "status": "retired"})
        except (TrainingError, ValueError, TypeError) as exc:
            return _error(exc if isinstance(exc, TrainingError) else TrainingError(str(exc)))
        return Response({"detail": "action must be promote, canary or retire"}, status=400)


_error_body = inline_serializer("StudioOptimiseError", {"error": serializers.CharField(),
                                                         "detail": serializers.CharField()})


class VersionOptimiseView(APIView):
    """POST ``{"method": "distil" | "quantise" | "prune", "config": {...}}``: queue an optimise job.

    The config is checked by the method's own dataclass first, so a bad one queues nothing (400).
    """

    permission_classes = [IsAdmin]

    # ids are positive: a negative one never reaches the view (the URL's int converter does not match it)
    @extend_schema(operation_id="studio_versions_optimise", parameters=[
        OpenApiParameter("id", {"type": "integer", "minimum": 1}, OpenApiParameter.PATH)],
        request=inline_serializer("LaunchOptimise", {
        "method": serializers.ChoiceField(choices=["distil", "quantise", "prune"]),
        "config": serializers.JSONField(required=False, help_text="fields of the method's config dataclass"),
        "gate": serializers.JSONField(required=False, help_text="the variant gate after the build: its settings, "
                                                                "or false for none (default: on)")}),
        responses={201: inline_serializer("OptimiseLaunched", {
            "job_id": serializers.IntegerField(), "id": serializers.IntegerField(),
            "kind": serializers.CharField(), "status": serializers.CharField()}),
            400: _error_body, 404: _error_body})
    def post(self, request, pk: int):
        def error(msg: str, code: int) -> Response:
            return Response({"error": msg, "detail": msg}, status=code)

        if not isinstance(request.data, dict):
            return error("the body must be a JSON object", 400)
        method = request.data.get("method")
        if not isinstance(method, str):
            return error("method must be one of distil, quantise, prune", 400)
        from training.optimise import launch_optimise

        try:
            extra = {"gate": request.data["gate"]} if "gate" in request.data else {}
            job = launch_optimise(pk, method, request.data.get("config"), user=request.user, **extra)
        except TrainingError as exc:
            return error(str(exc), exc.status)
        return Response({"job_id": job.pk, **selectors.job_summary(job)}, status=status.HTTP_201_CREATED)


class RollbackView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(request=None, responses=_any)
    def post(self, request, subject: str):
        try:
            return Response(_deployment(services.rollback(subject, user=request.user)))
        except TrainingError as exc:
            return _error(exc)


class BenchmarkListView(APIView):
    """Stored report cards (``?subject=``, ``?version=<policy version id>``), newest first; POST runs one."""

    permission_classes = [IsAdmin]

    @extend_schema(operation_id="studio_benchmarks_list",
                   parameters=[OpenApiParameter("subject", str), OpenApiParameter("version", int,
                                                                                  description="policy version id")],
                   responses=inline_serializer("ReportCards", {
                       "reports": serializers.ListField(child=serializers.DictField()),
                       "promoted": serializers.DictField()}))
    def get(self, request):
        subject = request.query_params.get("subject") or None
        if subject is not None and subject not in selectors.SUBJECTS:
            return Response({"detail": f"unknown subject {subject!r}"}, status=400)
        version = request.query_params.get("version") or None
        if version is not None and not str(version).isdigit():
            return Response({"detail": "version must be a policy version id"}, status=400)
        cards = selectors.report_cards(subject, int(version) if version else None)
        live = selectors.live_versions()
        return Response({"reports": [selectors.report_card_json(r) for r in cards],
                         "promoted": {s: v["promoted_id"] for s, v in live.items()}})

    @extend_schema(operation_id="studio_benchmarks_run", request=inline_serializer("RunReportCard", {
        "policy_version_id": serializers.IntegerField(),
        "suites": serializers.JSONField(required=False, help_text='"all" or a list of suite names'),
        "limit": serializers.IntegerField(required=False, allow_null=True),
        "seed": serializers.IntegerField(required=False)}), responses=_any)
    def post(self, request):
        if not isinstance(request.data, dict):
            return Response({"detail": "the body must be a JSON object"}, status=400)
        try:
            job = services.launch_report_card(request.data.get("policy_version_id"),
                                              suites=request.data.get("suites", "all"),
                                              limit=request.data.get("limit"), seed=request.data.get("seed", 0),
                                              user=request.user)
        except TrainingError as exc:
            return _error(exc)
        return Response(selectors.job_summary(job), status=status.HTTP_201_CREATED)
