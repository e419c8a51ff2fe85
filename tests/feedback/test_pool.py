"""The prompt pool: consenting students' prompts masked, deduplicated, disabled; admin upload page."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from feedback import selectors, services
from feedback.masking import mask_pii
from feedback.models import ComparisonTask, ImportBatch, ImportedPair, Prompt

from .conftest import make_labeler, make_task

pytestmark = pytest.mark.django_db


def test_mask_pii():
    text = "I'm Ada Lovelace (ada.l@school.org, +44 20 7946 0958); ada likes 1815 and 3 cats."
    masked = mask_pii(text, ["Ada Lovelace", "Ada", "Lovelace"])
    assert masked == "I'm [name] ([email], [phone]); [name] likes 1815 and 3 cats."


def test_student_prompts_enter_pool_masked_and_only_with_consent():
    from tutor.models import Conversation, Message, StudentProfile, Subject
    from tutor.services import ensure_subjects

    ensure_subjects()
    math = Subject.objects.get(slug="mathematics")
    yes, no = make_labeler(role="student"), make_labeler(role="student")
    yes.first_name, yes.last_name, yes.email = "Grace", "Hopper", "grace@navy.mil"
    yes.save()
    StudentProfile.objects.update_or_create(user=yes, defaults={"consent_to_labeling": True})
    StudentProfile.objects.update_or_create(user=no, defaults={"consent_to_labeling": False})
    c1 = Conversation.objects.create(student=yes, subject=math)
    q1 = Message.objects.create(conversation=c1, role="user", content="I am Grace, what is 2+2?")
    Message.objects.create(conversation=c1, role="assistant", content="4, Grace!", reply_to=q1)
    Message.objects.create(conversation=c1, role="user", content="Mail grace@navy.mil the steps, Hopper here")
    c2 = Conversation.objects.create(student=no, subject=math)
    Message.objects.create(conversation=c2, role="user", content="secret question")
    assert services.ingest_student_prompts() == 2
    assert services.ingest_student_prompts() == 0  # incremental: nothing new
    texts = list(Prompt.objects.order_by("id").values_list("text", flat=True))
    assert texts == ["I am [name], what is 2+2?", "Mail [email] the steps, [name] here"]
    last = Prompt.objects.order_by("id").last()
    assert "Grace" not in str(last.context) and last.context[-1] == {"role": "assistant", "content": "4, [name]!"}
    assert not Prompt.objects.filter(text__contains="secret").exists()


def test_dedup_and_disable():
    p1, created1 = services.add_prompt(subject="history", text="When did Rome fall?", source="seed")
    p2, created2 = services.add_prompt(subject="history", text="  when did  ROME fall ", source="import")
    assert created1 and not created2 and p1 == p2
    task = make_task(text="Disable me?")
    services.set_prompt_enabled(task.prompt_id, False)
    task.refresh_from_db()
    assert task.state == ComparisonTask.State.DISABLED
    assert selectors.queue_size(make_labeler()) == 0


def test_admin_upload_page(client, settings):
    client.force_login(make_labeler(role="admin"))
    bad = b'{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b"}\n{oops\n'
    r = client.post("/label/admin/import/", {"kind": "preferences", "fmt": "auto", "subject": "history",
                                             "file": SimpleUploadedFile("bad.jsonl", bad)}, follow=True)
    assert b"Nothing imported" in r.content and b"line 2" in r.content
    assert not ImportBatch.objects.exists() and not ImportedPair.objects.exists()
    good = b"subject,text\nlanguage,What is a verb?\n"
    r = client.post("/label/admin/import/", {"kind": "prompts", "fmt": "auto", "subject": "history",
                                             "file": SimpleUploadedFile("p.csv", good)}, follow=True)
    assert b"Imported 1 prompts" in r.content and Prompt.objects.filter(subject="language").exists()
    settings.FEEDBACK_MAX_IMPORT_BYTES = 1024
    r = client.post("/label/admin/import/", {"kind": "prompts", "fmt": "auto", "subject": "history",
                                             "file": SimpleUploadedFile("big.csv", b"x" * 2048)})
    assert b"limit" in r.content and ImportBatch.objects.count() == 1
