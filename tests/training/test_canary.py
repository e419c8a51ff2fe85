"""The canary that watches (training/canary.py): a bake during which its live signals are compared with the
promoted version's; then it is promoted or rolled back, never before the bake ends.

Answers are written through the chat services as the chat does after the endpoint replied (each records the
version that wrote it); the clock is the ``now`` argument of ``check_canaries`` (no sleeps). The deployer is a
real local deployer pointed at a closed port: the database decision is what is tested (the endpoint side of
promote/retire has its own tests).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse

from serving.deploy.local import LocalDeployer
from tests.fixtures.endpoint import free_port
from tests.training.conftest import make_version, pass_gate
from training import canary, services
from training.models import CanaryWatch, Deployment, PolicyVersion
from tutor import services as chat
from tutor.accounts import create_user

pytestmark = pytest.mark.django_db

BAKE = {"min_seconds": 600, "min_answers": 5, "max_seconds": 0,
        "margins": {"thumbs_down": 0.1, "regeneration": 0.1, "errors": 0.05, "latency": 0.5}}


@pytest.fixture
def down(settings):
    port = free_port()
    settings.TUTOR_ENDPOINT_URL = f"http://127.0.0.1:{port}"  # the studio's actions use the settings' deployer
    settings.TUTOR_ENDPOINT_ADMIN_TOKEN = "x"
    return LocalDeployer(endpoint_url=f"http://127.0.0.1:{port}", admin_token="x", retries=1, backoff=0.0)


@pytest.fixture
def v1(models_dir):
    services.ensure_initial_versions()
    chat.ensure_subjects()
    return PolicyVersion.objects.get(subject="mathematics", version=1)


@pytest.fixture
def student(db):
    return create_user(username="sam", password="x", role="student", validate_password=False)


def _canary(v1, down, bake=None, auto_promote=True) -> tuple[PolicyVersion, CanaryWatch]:
    v2 = make_version(v1, 2)
    pass_gate(v2)
    services.start_canary(v2, 0.1, deployer=down, bake=bake or BAKE, auto_promote=auto_promote)
    return v2, CanaryWatch.objects.get(candidate=v2)


def _answers(student, version: int, n: int, *, down: int = 0, regenerated: int = 0, errors: int = 0,
             latency_ms: int = 100) -> None:
    """``n`` answers by ``version`` in fresh conversations: ``down`` thumbed down, ``regenerated`` replaced by a
    regeneration (the replacement is another answer of the same version), ``errors`` broken off."""
    for i in range(n):
        conv = chat.start_conversation(student, "mathematics")
        q = chat.post_user_message(conv, f"What is {i} + {version}?")
        failed = i < errors
        ans = chat.save_answer(q, chat.Answer(text=f"{i} + {version} = {i + version}.", complete=not failed,
                                              error="the answer broke off" if failed else "",
                                              adapter={"subject": "mathematics", "version": version},
                                              latency_ms=latency_ms))
        if i < down:
            chat.rate_message(student, ans, -1, reasons=["wrong"])
        if i < regenerated:
            chat.save_answer(q, chat.Answer(text=f"{i + version}.", latency_ms=latency_ms,
                                            adapter={"subject": "mathematics", "version": version}))


def test_a_canary_with_a_worse_thumbs_down_rate_is_rolled_back_after_the_bake(v1, down, student):
    v2, watch = _canary(v1, down)
    _answers(student, 2, 10, down=4)  # canary: 40 % thumbs-down
    _answers(student, 1, 10, down=1)  # promoted: 10 %
    t0 = watch.started_at
    # the bake is not over: nothing is decided, however bad it looks, but the comparison is kept up to date
    for seconds in (1, 300, 599):
        out = canary.check_canaries(now=t0 + timedelta(seconds=seconds), deployer=down)
        assert out["mathematics v2"].startswith("baking"), out
    watch.refresh_from_db()
    v2.refresh_from_db()
    assert (watch.status, v2.status) == ("baking", "canary")
    rows = {r["signal"]: r for r in watch.comparison["signals"]}
    assert rows["thumbs_down"]["canary"] == pytest.approx(0.4) and rows["thumbs_down"]["worse"]
    assert (watch.comparison["canary"]["answers"], watch.comparison["promoted"]["answers"]) == (10, 10)
    # the bake ends: rolled back, and the reason is recorded
    out = canary.check_canaries(now=t0 + timedelta(seconds=601), deployer=down)
    assert out["mathematics v2"].startswith("rolled back"), out
    watch.refresh_from_db()
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (watch.status, v2.status, v1.status) == ("rolled_back", "retired", "promoted")
    assert "thumbs-down rate 0.400 > 0.100 + margin 0.100" in watch.reason
    assert "thumbs-down" in v2.note
    dep = Deployment.objects.filter(subject="mathematics").first()
    assert dep.action == Deployment.Action.RETIRE and dep.promoted_id == v1.pk and dep.candidate_id is None
    # decided once: later checks leave it alone
    assert canary.check_canaries(now=t0 + timedelta(seconds=900), deployer=down) == {}


def test_a_good_canary_is_promoted_after_the_bake_not_before(v1, down, student):
    v2, watch = _canary(v1, down)
    _answers(student, 2, 10, down=1, regenerated=1)
    _answers(student, 1, 10, down=1, regenerated=1)
    t0 = watch.started_at
    assert canary.check_canaries(now=t0 + timedelta(seconds=599), deployer=down)["mathematics v2"].startswith("baking")
    v2.refresh_from_db()
    assert v2.status == "canary"
    out = canary.check_canaries(now=t0 + timedelta(seconds=600), deployer=down)
    assert out["mathematics v2"].startswith("promoted"), out
    watch.refresh_from_db()
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (watch.status, v2.status, v1.status) == ("promoted", "promoted", "retired")
    assert "not worse" in watch.reason
    assert Deployment.objects.filter(subject="mathematics").first().action == Deployment.Action.PROMOTE


def test_the_bake_waits_for_enough_canary_answers_up_to_its_time_limit(v1, down, student):
    v2, watch = _canary(v1, down, bake={**BAKE, "max_seconds": 3600})
    _answers(student, 2, 3)  # fewer than min_answers (5)
    t0 = watch.started_at
    assert "3/5 canary answers" in canary.check_canaries(now=t0 + timedelta(seconds=3000), deployer=down)[
        "mathematics v2"]
    out = canary.check_canaries(now=t0 + timedelta(seconds=3600), deployer=down)
    assert out["mathematics v2"].startswith("promoted") and "bake time limit reached" in out["mathematics v2"]


def test_errors_and_latency_are_signals_too(v1, down, student):
    v2, watch = _canary(v1, down)
    _answers(student, 2, 10, latency_ms=400)  # 4 × slower than the promoted version
    _answers(student, 1, 10, latency_ms=100)
    comparison = canary.compare(watch, watch.started_at + timedelta(seconds=601))
    rows = {r["signal"]: r for r in comparison["signals"]}
    assert rows["latency_ms_p50"]["worse"] and not rows["errors"]["worse"]
    action, why = canary.verdict(watch, comparison)
    assert action == "rollback" and "median latency 400 ms > 100 ms × 1.50" in why
    _answers(student, 2, 10, errors=3, latency_ms=100)
    rows = {r["signal"]: r for r in canary.compare(watch, watch.started_at + timedelta(seconds=601))["signals"]}
    assert rows["errors"]["worse"] and rows["errors"]["canary"] == pytest.approx(3 / 20)


def test_without_auto_promote_a_passing_canary_waits_for_an_admin(v1, down, student):
    v2, watch = _canary(v1, down, auto_promote=False)
    _answers(student, 2, 5)
    out = canary.check_canaries(now=watch.started_at + timedelta(seconds=601), deployer=down)
    assert out["mathematics v2"].startswith("passed")
    watch.refresh_from_db()
    v2.refresh_from_db()
    assert (watch.status, v2.status) == ("passed", "canary")


def test_studio_shows_the_live_comparison_and_an_admin_can_end_the_bake_early(v1, down, student, client):
    v2, watch = _canary(v1, down)
    _answers(student, 2, 6, down=2)
    _answers(student, 1, 4)
    client.force_login(create_user(username="boss", password="x", role="admin", validate_password=False))
    page = client.get("/studio/").content.decode()
    assert 'data-canary="mathematics"' in page and 'data-signal="thumbs_down"' in page
    assert "0.333" in page and "Promote now" in page  # 2 of 6 canary answers thumbed down
    [live] = client.get(reverse("api-studio-overview")).json()["canaries"]  # the same comparison, as JSON
    assert (live["watch"]["candidate_version"], live["comparison"]["canary"]["thumbs_down"]) == (2, 2)
    # promote early: one transaction closes the bake as promoted by the admin
    resp = client.post(f"/studio/versions/{v2.pk}/promote/")
    assert resp.status_code == 302
    watch.refresh_from_db()
    v2.refresh_from_db()
    assert (watch.status, v2.status, watch.decided_by.username) == ("promoted", "promoted", "boss")
    assert 'data-canary="mathematics"' not in client.get("/studio/").content.decode()
    # a second canary rolled back early by the admin
    v3 = make_version(v2, 3)
    pass_gate(v3)
    services.start_canary(v3, 0.1, deployer=down, bake=BAKE)
    assert client.post(f"/studio/versions/{v3.pk}/retire/").status_code == 302
    w3 = CanaryWatch.objects.get(candidate=v3)
    assert (w3.status, w3.reason) == ("rolled_back", "retired by an admin")
    assert f'data-canary-watch="{w3.pk}"' in client.get(f"/studio/versions/{v3.pk}/").content.decode()


def test_bad_bake_configs_are_refused_and_change_nothing(v1, down):
    v2 = make_version(v1, 2)
    pass_gate(v2)
    for bad in ({"min_seconds": -1}, {"margins": {"typo": 0.1}}, {"colour": "red"},
                {"min_seconds": 100, "max_seconds": 10}):
        with pytest.raises(services.TrainingError, match="invalid canary bake"):
            services.start_canary(v2, 0.1, deployer=down, bake=bad)
    v2.refresh_from_db()
    assert v2.status == "candidate" and not CanaryWatch.objects.exists()
    from training.pipeline import validate_pipeline_config

    with pytest.raises(services.TrainingError, match="invalid canary config"):
        validate_pipeline_config({"canary": {"min_answers": -3}})
    assert validate_pipeline_config({"canary": {"min_seconds": 2}})["canary"]["min_seconds"] == 2.0
