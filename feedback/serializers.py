"""Serializers of the labeler API (validation of shapes; business rules live in services)."""

from __future__ import annotations

from rest_framework import serializers


class CompletionOut(serializers.Serializer):
    id = serializers.IntegerField()
    label = serializers.CharField(help_text="A, B, C... in the shown order")
    text = serializers.CharField()


class TurnSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField()


class TaskOut(serializers.Serializer):
    task_id = serializers.IntegerField()
    subject = serializers.CharField()
    prompt = serializers.CharField()
    context = TurnSerializer(many=True)
    completions = CompletionOut(many=True)
    lease_expires_at = serializers.DateTimeField()


class ProgressOut(serializers.Serializer):
    done_today = serializers.IntegerField()
    done_total = serializers.IntegerField()
    skipped = serializers.IntegerField()
    in_queue = serializers.IntegerField(help_text="open tasks not yet seen by this labeler, at most the cap (1000)")
    in_queue_capped = serializers.BooleanField(help_text="true when there are more than in_queue (shown as 1000+)")
    reliability = serializers.FloatField()
    gold_accuracy = serializers.FloatField(allow_null=True)


class NextOut(serializers.Serializer):
    task = TaskOut(allow_null=True)
    resumed = serializers.BooleanField()
    message = serializers.CharField()
    progress = ProgressOut()


class RatingIn(serializers.Serializer):
    helpfulness = serializers.IntegerField(min_value=1, max_value=7, required=False, allow_null=True)
    honesty = serializers.IntegerField(min_value=1, max_value=7, required=False, allow_null=True)
    harmlessness = serializers.IntegerField(min_value=1, max_value=7, required=False, allow_null=True)


class SubmitIn(serializers.Serializer):
    order = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField(), allow_empty=False),
        allow_empty=False, help_text="groups of completion ids, best first; a group of several = a tie")
    ratings = serializers.DictField(child=RatingIn(), required=False,
                                    help_text="completion id → ratings 1-7 (all optional)")
    unsafe = serializers.BooleanField(required=False, default=False)
    unsafe_reason = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")
    note = serializers.CharField(required=False, allow_blank=True, max_length=5000, default="")


class RankingOut(serializers.Serializer):
    ranking_id = serializers.IntegerField(source="id")
    task_id = serializers.IntegerField()
    order = serializers.JSONField()
    shown_order = serializers.JSONField()
    ratings = serializers.JSONField()
    unsafe = serializers.BooleanField()
    unsafe_reason = serializers.CharField()
    note = serializers.CharField()
    late = serializers.BooleanField()
    pair_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class SubmitOut(serializers.Serializer):
    ranking = RankingOut()
    created = serializers.BooleanField(help_text="false when this was a retry of a stored submission")
    progress = ProgressOut()


class RefusedOut(serializers.Serializer):
    detail = serializers.CharField()
    your_submission = serializers.JSONField(required=False)


class SkipIn(serializers.Serializer):
    reason = serializers.CharField(max_length=500)


class SkipOut(serializers.Serializer):
    task_id = serializers.IntegerField()
    status = serializers.CharField()
    progress = ProgressOut()


class SnapshotOut(serializers.Serializer):
    id = serializers.IntegerField()
    sha256 = serializers.CharField()
    path = serializers.CharField()
    train_rows = serializers.IntegerField()
    test_rows = serializers.IntegerField()
    ranking_pairs = serializers.IntegerField()
    imported_pairs = serializers.IntegerField()
    first_ranking_id = serializers.IntegerField(allow_null=True)
    last_ranking_id = serializers.IntegerField(allow_null=True)
    counts = serializers.JSONField()
    created_at = serializers.DateTimeField()


class SnapshotIn(serializers.Serializer):
    since_ranking_id = serializers.IntegerField(required=False, allow_null=True)
