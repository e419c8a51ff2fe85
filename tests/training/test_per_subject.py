"""Per-subject policy-step settings: ``per_subject`` (or the ``subjects`` object shorthand) merged over the
global ``ppo`` / ``alt`` / ``ppo_prompts`` sections.

Why: one subject needs a gentler step than another (language loses accuracy at the learning rate that helps
mathematics); the settings a candidate was really trained with must reach its manifest and its lineage.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.training.conftest import PERMISSIVE_GATE, TINY_PIPELINE, seed_rankings
from training import pipeline, selectors
from training.models import Job, PolicyVersion
from training.services import TrainingError
from tutor.accounts import create_user


def test_overrides_merge_over_the_global_sections_and_the_shorthand_means_the_same() -> None:
    full = pipeline.validate_pipeline_config({"ppo": {"learning_rate": 2e-4},
                                              "per_subject": {"language": {"ppo": {"learning_rate": 5e-5}}}})
    assert full["subjects"] == [] and full["per_subject"] == {"language": {"ppo": {"learning_rate": 5e-5}}}
    lang, maths = pipeline.subject_config(full, "language"), pipeline.subject_config(full, "mathematics")
    assert lang["ppo"]["learning_rate"] == 5e-5 and maths["ppo"]["learning_rate"] == 2e-4
    assert lang["ppo"]["steps"] == maths["ppo"]["steps"] == full["ppo"]["steps"]  # only what is given differs
    short = pipeline.validate_pipeline_config({"ppo": {"learning_rate": 2e-4}, "subjects": {
        "mathematics": {}, "language": {"ppo": {"learning_rate": 5e-5}, "ppo_prompts": 8}}})
    assert short["subjects"] == ["mathematics", "language"]
    assert short["per_subject"] == {"language": {"ppo": {"learning_rate": 5e-5}, "ppo_prompts": 8}}
    assert pipeline.subject_config(short, "language")["ppo_prompts"] == 8


@pytest.mark.parametrize(("config", "message"), [
    ({"per_subject": {"latin": {"ppo": {}}}}, "unknown subject 'latin'"),
    ({"per_subject": {"language": {"reward": {"epochs": 1}}}}, "cannot differ per subject"),
    ({"per_subject": {"language": {"ppo": {"learning_rat": 1e-4}}}}, "per_subject.language.ppo.learning_rat"),
    ({"per_subject": {"language": {"ppo": {"learning_rate": -1}}}}, "invalid per_subject.language config"),
    ({"per_subject": {"language": {"ppo_prompts": 0}}}, "ppo_prompts must be >= 1"),
    ({"per_subject": {"language": {"alt": {"algo": "rloo"}}}}, "top-level 'algorithm' chooses"),
    ({"per_subject": {"language": []}}, "must be a JSON object"),
    ({"per_subject": []}, "per_subject must be a JSON object"),
    ({"subjects": {"language": {}}, "per_subject": {"language": {"ppo_prompts": 4}}}, "both in 'subjects'"),
])
@pytest.mark.django_db
def test_bad_overrides_are_refused_and_create_nothing(models_dir, config, message) -> None:
    from training import services

    with pytest.raises(TrainingError, match=message.replace("(", r"\(").replace(".", r"\.")):
        services.start_pipeline(config)
    assert not Job.objects.exists()


@pytest.mark.ml
@pytest.mark.django_db(transaction=True)
def test_each_subject_trains_with_its_own_settings_recorded_in_the_lineage(client, models_dir) -> None:
    from rlhf.manifest import read_manifest

    seed_rankings("mathematics", n_tasks=12)
    seed_rankings("language", n_tasks=12)
    p = pipeline.run_inline({
        **TINY_PIPELINE, "snapshot": {"scope": "all", "include_imported": False}, "gate": PERMISSIVE_GATE,
        "eval": {"n_prompts": 4, "kl_samples": 2, "max_new_tokens": 8}, "auto_promote": False,
        "ppo": {**TINY_PIPELINE["ppo"], "steps": 2, "learning_rate": 1e-3},
        "subjects": {"mathematics": {}, "language": {"ppo": {"learning_rate": 1e-5, "kl_coef": 0.5}}}})
    assert p.status == Job.Status.SUCCEEDED, (p.message, p.error)
    got = {}
    for subject in ("mathematics", "language"):
        step = p.children.get(kind=Job.Kind.PPO, subject=subject)
        pv = PolicyVersion.objects.get(pk=step.result["policy_version_id"])
        got[subject] = (pv, read_manifest(pv.path)["config"])
    (maths, maths_cfg), (lang, lang_cfg) = got["mathematics"], got["language"]
    assert (maths_cfg["learning_rate"], lang_cfg["learning_rate"]) == (1e-3, 1e-5)
    assert lang_cfg["kl_coef"] == 0.5 and maths_cfg["kl_coef"] == TINY_PIPELINE["ppo"].get("kl_coef", maths_cfg["kl_coef"])
    assert lang_cfg["steps"] == maths_cfg["steps"] == 2
    assert lang.metrics["subject_overrides"] == {"ppo": {"learning_rate": 1e-5, "kl_coef": 0.5}}
    assert "subject_overrides" not in maths.metrics
    assert selectors.lineage(lang)[0]["subject_overrides"] == {"ppo.learning_rate": 1e-5, "ppo.kl_coef": 0.5}
    assert "language overrides" in p.children.get(kind=Job.Kind.PPO, subject="language").log
    client.force_login(create_user(username="boss", password="pw-12345678x", role="admin", validate_password=False))
    page = client.get(reverse("training:version", args=[lang.pk])).content.decode()
    assert "data-subject-overrides" in page and "ppo.learning_rate=1e-05" in page
