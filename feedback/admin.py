"""Django admin for the feedback data: prompts (enable/disable), tasks, gold marking, guidelines."""

from __future__ import annotations

from django.contrib import admin, messages

from feedback import services
from feedback.models import (
    Assignment,
    ComparisonTask,
    Completion,
    DatasetSnapshot,
    FeedbackSource,
    Guidelines,
    ImportBatch,
    LabelerStats,
    Prompt,
    Ranking,
)


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ("id", "subject", "text", "source", "enabled", "created_at")
    list_filter = ("subject", "source", "enabled")
    search_fields = ("text",)
    actions = ["disable", "enable"]

    @admin.action(description="Disable the selected prompts (and their open tasks)")
    def disable(self, request, queryset):
        for pk in queryset.values_list("pk", flat=True):
            services.set_prompt_enabled(pk, False)

    @admin.action(description="Enable the selected prompts")
    def enable(self, request, queryset):
        for pk in queryset.values_list("pk", flat=True):
            services.set_prompt_enabled(pk, True)


class CompletionInline(admin.TabularInline):
    model = Completion
    extra = 0
    fields = ("text", "adapter_subject", "adapter_version", "sample_count")
    readonly_fields = fields


@admin.register(ComparisonTask)
class ComparisonTaskAdmin(admin.ModelAdmin):
    list_display = ("id", "subject", "priority", "overlap", "submitted_count", "state", "is_gold", "created_at")
    list_filter = ("state", "subject", "is_gold")
    list_editable = ("priority",)
    inlines = [CompletionInline]
    raw_id_fields = ("prompt",)


@admin.register(Ranking)
class RankingAdmin(admin.ModelAdmin):
    list_display = ("id", "task", "labeler", "order", "unsafe", "late", "created_at")
    list_filter = ("unsafe", "flag_resolved", "late")
    raw_id_fields = ("task", "labeler")
    actions = ["use_as_gold"]

    @admin.action(description="Use as the gold reference of its task")
    def use_as_gold(self, request, queryset):
        for pk in queryset.values_list("pk", flat=True):
            services.set_gold(pk)
        messages.success(request, f"{queryset.count()} task(s) are now gold tasks.")


@admin.register(Guidelines)
class GuidelinesAdmin(admin.ModelAdmin):
    list_display = ("title", "updated_at")


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin):
    list_display = ("sha256", "train_rows", "test_rows", "first_ranking_id", "last_ranking_id", "created_at")
    readonly_fields = [f.name for f in DatasetSnapshot._meta.fields]


admin.site.register(Assignment, list_display=("task", "labeler", "status", "expires_at"), raw_id_fields=("task", "labeler"))
admin.site.register(ImportBatch, list_display=("filename", "kind", "fmt", "rows", "created_at"))
admin.site.register(LabelerStats, list_display=("labeler", "reliability", "gold_accuracy", "agreement_tau", "updated_at"))


@admin.register(FeedbackSource)
class FeedbackSourceAdmin(admin.ModelAdmin):
    """On/off per source of preference pairs (also on the studio overview); no row = on."""

    list_display = ("slug", "enabled", "updated_by", "updated_at")
    list_editable = ("enabled",)
    readonly_fields = ("updated_by", "updated_at")

    def save_model(self, request, obj, form, change):
        obj.updated_by = request.user
        super().save_model(request, obj, form, change)
