"""Helpers for the feedback tests: labelers and tasks built through the real services."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from feedback import services
from tutor.accounts import create_user
from tutor.roles import ensure_groups

ROOT = Path(__file__).resolve().parents[2]
HH_FILE = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-1500.jsonl.gz"
_counter = itertools.count()


def make_labeler(name: str | None = None, role: str = "labeler"):
    """A labeler without a usable password (hashing one costs ~0.3 s; API tests use tokens)."""
    ensure_groups()
    user = get_user_model().objects.create(username=name or f"lab{next(_counter)}", is_staff=role == "admin")
    user.groups.add(Group.objects.get(name=role))
    return user


def make_login_user(name: str, password: str, role: str = "labeler"):
    return create_user(username=name, password=password, role=role, validate_password=False)


def make_task(subject: str = "mathematics", k: int = 4, overlap: int = 2, priority: int = 0, text: str | None = None,
              is_gold: bool = False):
    n = next(_counter)
    prompt, _ = services.add_prompt(subject=subject, text=text or f"What is {n} + {n}?", source="seed",
                                    context=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    return services.create_task(prompt=prompt, completions=[f"answer {n}.{i}" for i in range(k)], overlap=overlap,
                                priority=priority, is_gold=is_gold)


def rank_all(task, labeler=None, tie: bool = False):
    """A submission ranking completions by id (optionally tying the last two)."""
    ids = list(task.completions.order_by("id").values_list("id", flat=True))
    order = [[i] for i in ids]
    if tie:
        order = order[:-2] + [ids[-2:]]
    return {"order": order}


@pytest.fixture
def labeler(db):
    return make_labeler()


@pytest.fixture
def datasets_dir(settings, tmp_path):
    settings.TUTOR_DATASETS_DIR = tmp_path / "datasets"
    return settings.TUTOR_DATASETS_DIR
