"""The four subjects exist on every database from the first migrate (admins edit them later)."""

from django.db import migrations

SUBJECTS = [
    ("history", "History", "Events, people and causes — from antiquity to the 20th century.",
     "You are a patient history tutor. Give dates and causes, and say when historians disagree."),
    ("mathematics", "Mathematics", "Arithmetic, algebra, geometry — step by step.",
     "You are a mathematics tutor. Show the steps, then state the final answer clearly."),
    ("language", "Language", "Grammar, vocabulary, spelling and style.",
     "You are a language tutor. Explain grammar simply and give a short example."),
    ("general_knowledge", "General knowledge", "Science, geography and everything else.",
     "You are a general knowledge tutor. Be accurate and concise; say when you are not sure."),
]


def create_subjects(apps, schema_editor):
    Subject = apps.get_model("tutor", "Subject")
    for order, (slug, name, description, prompt) in enumerate(SUBJECTS):
        Subject.objects.get_or_create(
            slug=slug, defaults={"name": name, "description": description, "system_prompt": prompt, "order": order}
        )


class Migration(migrations.Migration):
    dependencies = [("tutor", "0002_chat")]
    operations = [migrations.RunPython(create_subjects, migrations.RunPython.noop)]
