"""Django admin for the registry (read-mostly: state changes go through the studio's transactions)."""

from django.contrib import admin

from training.models import Deployment, EvaluationReport, Job, PolicyVersion, RewardModelVersion


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "subject", "status", "progress", "stage", "parent", "created_at", "finished_at")
    list_filter = ("kind", "status", "subject")
    readonly_fields = ("metrics", "log", "result", "heartbeat_at", "celery_task_id", "worker")


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin):
    list_display = ("subject", "version", "status", "parent", "snapshot", "reward_model", "created_at", "promoted_at")
    list_filter = ("subject", "status")
    readonly_fields = ("sha256", "path", "metrics")


@admin.register(RewardModelVersion)
class RewardModelVersionAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "snapshot", "accuracy", "created_at")


@admin.register(EvaluationReport)
class EvaluationReportAdmin(admin.ModelAdmin):
    list_display = ("id", "candidate", "baseline", "passed", "created_at")
    list_filter = ("passed",)


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("id", "subject", "action", "promoted", "candidate", "candidate_share", "status", "created_at")
    list_filter = ("subject", "action", "status")
