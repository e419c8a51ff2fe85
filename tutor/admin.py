"""Django admin: subjects are edited here (name, description, system prompt, active)."""

from django.contrib import admin

from tutor.models import Conversation, Message, Rating, StudentProfile, Subject


@admin.register(Subject)
class SubjectAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "active", "order")
    list_editable = ("active", "order")


@admin.register(StudentProfile)
class StudentProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "consent_to_labeling", "updated_at")
    list_filter = ("consent_to_labeling",)
    search_fields = ("user__username",)


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("role", "content", "status", "is_current", "adapter_subject", "adapter_version", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "student", "subject", "updated_at", "deleted_at", "consent_override")
    list_filter = ("subject", "consent_override")
    search_fields = ("title", "student__username")
    inlines = [MessageInline]


@admin.register(Rating)
class RatingAdmin(admin.ModelAdmin):
    list_display = ("message", "student", "value", "adapter_subject", "adapter_version", "updated_at")
    list_filter = ("value", "adapter_subject")
