"""Upload form for the admin import page."""

from __future__ import annotations

from django import forms
from django.conf import settings

from feedback.models import SUBJECT_CHOICES


class ImportForm(forms.Form):
    kind = forms.ChoiceField(choices=[("preferences", "Preference pairs (HH-RLHF / TRL)"), ("prompts", "Prompts (CSV / JSONL)")])
    fmt = forms.ChoiceField(label="Format", choices=[("auto", "Detect"), ("hh-rlhf", "HH-RLHF"), ("trl", "TRL")], initial="auto")
    subject = forms.ChoiceField(choices=SUBJECT_CHOICES, initial="general_knowledge",
                                help_text="used for rows without a subject")
    file = forms.FileField()

    def clean_file(self):
        f = self.cleaned_data["file"]
        limit = settings.FEEDBACK_MAX_IMPORT_BYTES
        if f.size > limit:
            raise forms.ValidationError(f"the file is {f.size} bytes; the limit is {limit} bytes")
        return f
