"""API shapes for the student area (the chat page's JavaScript uses the same API)."""

from __future__ import annotations

from rest_framework import serializers

from tutor.models import Conversation, Message, Rating, Subject


class SubjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Subject
        fields = ["slug", "name", "description"]


class RatingSerializer(serializers.ModelSerializer):
    reasons = serializers.ListField(child=serializers.ChoiceField(choices=Rating.REASONS), required=False)
    value = serializers.ChoiceField(choices=[1, -1], help_text="1 = thumbs up, -1 = thumbs down")
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000)
    policy_version = serializers.SerializerMethodField()

    class Meta:
        model = Rating
        fields = ["message", "value", "comment", "reasons", "policy_version", "created_at", "updated_at"]
        read_only_fields = ["message", "created_at", "updated_at"]

    def get_policy_version(self, obj: Rating) -> dict:
        return {"subject": obj.adapter_subject, "version": obj.adapter_version}


class MessageSerializer(serializers.ModelSerializer):
    adapter = serializers.SerializerMethodField()
    rating = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = ["id", "role", "content", "status", "error", "reply_to", "is_current", "created_at",
                  "adapter", "policy_version", "rating"]
        read_only_fields = fields

    def get_adapter(self, obj: Message) -> dict | None:
        return {"subject": obj.adapter_subject, "version": obj.adapter_version} if obj.adapter_subject else None

    def get_rating(self, obj: Message) -> dict | None:
        rating = getattr(obj, "rating", None) if obj.role == Message.Role.ASSISTANT else None
        return RatingSerializer(rating).data if rating else None


class ConversationSerializer(serializers.ModelSerializer):
    subject = serializers.SlugRelatedField(slug_field="slug", queryset=Subject.objects.filter(active=True))

    class Meta:
        model = Conversation
        fields = ["id", "subject", "title", "created_at", "updated_at", "consent_override"]
        read_only_fields = ["id", "created_at", "updated_at"]


class ConversationUpdateSerializer(serializers.Serializer):
    title = serializers.CharField(required=False, max_length=120)
    consent_override = serializers.BooleanField(required=False, allow_null=True)


class ConversationDetailSerializer(ConversationSerializer):
    messages = MessageSerializer(many=True, read_only=True)

    class Meta(ConversationSerializer.Meta):
        fields = [*ConversationSerializer.Meta.fields, "messages"]


class MessageCreateSerializer(serializers.Serializer):
    content = serializers.CharField(trim_whitespace=False, allow_blank=True)

    def validate_content(self, value: str) -> str:
        from django.core.exceptions import ValidationError as DjangoValidationError

        from tutor.services import validate_text

        try:
            return validate_text(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages[0]) from None


class AnswerSerializer(serializers.Serializer):
    """The JSON answer: the saved student message and the tutor's answer."""

    user_message = MessageSerializer()
    assistant_message = MessageSerializer()


class ProfileSerializer(serializers.Serializer):
    consent_to_labeling = serializers.BooleanField()
