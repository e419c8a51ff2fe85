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
@pytest.mark.timeout(900)  # a whole pipeline (reward model, PPO, gate) on the tiny model; minutes on a loaded machine
@pytest.mark.django_db(transaction=True)
def test_a_subject_trains_with_its_own_settings_recorded_in_the_lineage(client, models_dir) -> None:
    from rlhf.manifest import read_manifest

    seed_rankings("language", n_tasks=8)
    p = pipeline.run_inline({
        **TINY_PIPELINE, "snapshot": {"scope": "all", "include_imported": False}, "gate": PERMISSIVE_GATE,
        "reward": {**TINY_PIPELINE["reward"], "epochs": 1.0},
        "eval": {"n_prompts": 2, "kl_samples": 2, "max_new_tokens": 8}, "auto_promote": False, "ppo_prompts": 8,
        # the over-optimisation alarm watches the run (answer-key gold on 2 held-out questions, every step)
        "ppo": {**TINY_PIPELINE["ppo"], "steps": 2, "max_new_tokens": 8, "learning_rate": 1e-3, "alarm_every": 1,
                "alarm_prompts": 2},
        "subjects": {"language": {"ppo": {"learning_rate": 1e-5, "kl_coef": 0.5}}}})
    assert p.status == Job.Status.SUCCEEDED, (p.message, p.error)
    step = p.children.get(kind=Job.Kind.PPO, subject="language")
    lang = PolicyVersion.objects.get(pk=step.result["policy_version_id"])
    cfg = read_manifest(lang.path)["config"]
    assert (cfg["learning_rate"], cfg["kl_coef"], cfg["steps"]) == (1e-5, 0.5, 2)  # overrides + the global rest
    assert lang.metrics["subject_overrides"] == {"ppo": {"learning_rate": 1e-5, "kl_coef": 0.5}}
    assert selectors.lineage(lang)[0]["subject_overrides"] == {"ppo.learning_rate": 1e-5, "ppo.kl_coef": 0.5}
    assert "language overrides" in step.log
    # proxy and gold reached the PPO job's curves at every step, and the version records the alarm's checks
    assert sum(1 for m in step.metrics if "proxy_reward" in m and "gold_score" in m) >= 2
    alarm = lang.metrics["overoptimisation"]
    assert alarm["enabled"] and alarm["gold"] == "answer_key" and [c["step"] for c in alarm["checks"]] == [0, 1, 2]
    assert "overoptimisation_alarm" in step.result
    client.force_login(create_user(username="boss", password="pw-12345678x", role="admin", validate_password=False))
    page = client.get(reverse("training:version", args=[lang.pk])).content.decode()
    assert "data-subject-overrides" in page and "ppo.learning_rate=0.00001" in page
    assert 'id="overopt-alarm"' in page

@pytest.mark.django_db
def test_the_version_page_shows_a_fired_alarm(client, models_dir) -> None:
    """What an admin reads when the alarm stopped a run: where it fired, which weights were kept, both curves."""
    from training import services

    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="history", version=1)
    checks = [{"step": 0, "proxy": 0.1, "gold": 0.5, "diverging": False},
              {"step": 5, "proxy": 0.4, "gold": 0.6, "diverging": False},
              {"step": 10, "proxy": 0.7, "gold": 0.4, "diverging": True},
              {"step": 15, "proxy": 0.9, "gold": 0.3, "diverging": True}]
    v1.metrics = {**v1.metrics, "overoptimisation": {
        "enabled": True, "gold": "answer_key", "every": 5, "patience": 2, "fired": True, "fired_at_step": 15,
        "stopped_early": True, "best_step": 5, "best_gold": 0.6, "kept": "best_by_gold", "checks": checks}}
    v1.save(update_fields=["metrics"])
    client.force_login(create_user(username="boss2", password="pw-12345678x", role="admin", validate_password=False))
    page = client.get(reverse("training:version", args=[v1.pk])).content.decode()
    assert 'data-alarm="fired"' in page and "Fired at step 15" in page
    assert "kept the weights of step 5" in page and "0.900" in page and "best by gold" in page


@pytest.mark.django_db
def test_the_version_page_shows_a_subjects_own_settings(client, models_dir) -> None:
    from training import services

    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="language", version=1)
    v1.metrics = {**v1.metrics, "subject_overrides": {"ppo": {"learning_rate": 1e-5}}}
    v1.save(update_fields=["metrics"])
    client.force_login(create_user(username="boss3", password="pw-12345678x", role="admin", validate_password=False))
    page = client.get(reverse("training:version", args=[v1.pk])).content.decode()
    assert "data-subject-overrides" in page and "ppo.learning_rate=0.00001" in page, page


@pytest.mark.ml
@pytest.mark.timeout(900)
@pytest.mark.django_db(transaction=True)
def test_a_gold_reward_model_on_the_other_half_of_the_prompts_judges_the_alarm(client, models_dir) -> None:
    """Why: where no answer key applies, the alarm's gold must be a model the policy never trained against —
    a second reward model on prompts the proxy never saw, scored on held-out prompts."""
    from rlhf.manifest import read_manifest
    from training.models import RewardModelVersion

    seed_rankings("history", n_tasks=8)
    p = pipeline.run_inline({
        **TINY_PIPELINE, "snapshot": {"scope": "all", "include_imported": False}, "gate": PERMISSIVE_GATE,
        "reward": {**TINY_PIPELINE["reward"], "epochs": 1.0},
        "eval": {"n_prompts": 2, "kl_samples": 2, "max_new_tokens": 8}, "auto_promote": False, "ppo_prompts": 8,
        "ppo": {**TINY_PIPELINE["ppo"], "steps": 2, "max_new_tokens": 8},
        "subjects": {"history": {"ppo": {"alarm_every": 1, "alarm_prompts": 3, "alarm_gold": "reward_model"}}}})
    assert p.status == Job.Status.SUCCEEDED, (p.message, p.error)
    rm = RewardModelVersion.objects.get(pk=p.result["reward_model_id"])
    gold = rm.metrics["gold"]
    proxy_data = read_manifest(rm.path)["dataset_sha256"]
    assert read_manifest(gold["path"])["dataset_sha256"] != proxy_data  # two different halves
    assert gold["train_pairs"] + rm.metrics["train_pairs"] == rm.snapshot.train_rows
    reward_job = p.children.get(kind=Job.Kind.REWARD_MODEL)
    assert "gold reward model asked for" in reward_job.log
    assert {m.get("phase") for m in reward_job.metrics} >= {"gold", None}  # both curves reach the studio
    step = p.children.get(kind=Job.Kind.PPO, subject="history")
    alarm = PolicyVersion.objects.get(pk=step.result["policy_version_id"]).metrics["overoptimisation"]
    assert alarm["gold"] == "reward_model" and [c["step"] for c in alarm["checks"]] == [0, 1, 2]
    client.force_login(create_user(username="boss4", password="pw-12345678x", role="admin", validate_password=False))
    page = client.get(reverse("training:job", args=[reward_job.pk])).content.decode()
    assert "data-gold-rm" in page and "gold reward model" in page


def test_a_reward_backbone_brings_its_recommended_settings_and_given_ones_win() -> None:
    """Why: the demo's learning rate (5e-4) wrecks a pretrained encoder; picking "minilm" alone must be enough."""
    from rlhf.reward import RewardConfig

    minilm = RewardConfig.for_backbone("minilm")
    full = pipeline.validate_pipeline_config({"reward": {"backbone": "minilm"}})
    assert full["reward"] == minilm.to_dict() and full["reward"]["learning_rate"] != RewardConfig().learning_rate
    mine = pipeline.validate_pipeline_config({"reward": {"backbone": "minilm", "learning_rate": 3e-5}})
    assert mine["reward"]["learning_rate"] == 3e-5 and mine["reward"]["epochs"] == minilm.epochs
    assert pipeline.validate_pipeline_config({})["reward"] == RewardConfig().to_dict()


def test_the_default_reward_backbone_comes_from_the_settings(settings) -> None:
    """Why: the product's default is the MiniLM encoder (the better proxy on the demo loop) while the tests run
    on a tiny base (``TRAINING_REWARD_BACKBONE=demo`` in tests/env.py); both must give a complete config."""
    from rlhf.reward import RewardConfig

    assert pipeline.validate_pipeline_config({})["reward"] == RewardConfig().to_dict()  # the tests' "demo"
    settings.TRAINING_REWARD_BACKBONE = "minilm"
    minilm = RewardConfig.for_backbone("minilm")
    assert pipeline.default_pipeline_config()["reward"] == minilm.to_dict()
    assert pipeline.validate_pipeline_config({})["reward"] == minilm.to_dict()
    assert minilm.pooling == "mean" and minilm.freeze_layers == 3
    short = pipeline.validate_pipeline_config({"reward": {"epochs": 1.0}})["reward"]
    assert short == {**minilm.to_dict(), "epochs": 1.0}  # a field given alone merges over the encoder's settings
    assert pipeline.validate_pipeline_config({"reward": {"backbone": "demo"}})["reward"] == RewardConfig().to_dict()
