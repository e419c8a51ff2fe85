"""Forms for the student area."""

from django import forms
from django.contrib.auth.forms import UserCreationForm


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=False, help_text="Optional; only used for password resets.")

    class Meta(UserCreationForm.Meta):
        fields = ("username", "email")
