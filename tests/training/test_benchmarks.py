"""The report card on the Django side: config checks, the benchmarks job, the gate's required suites,
the Benchmarks page (side by side, deltas, "not run", SVG charts) and its API.

Real harness suites (``corpus_mc`` needs no data; ``xsum`` is pointed at an empty data folder so it is
"not run") on the tiny model; one tiny suite registered here (``probe_*``) scores the adapter by its
version so the gate has a candidate that is really worse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.training.conftest import PERMISSIVE_GATE, TINY_PIPELINE, make_version
from training import pipeline, selectors, services
from training.models import BenchmarkReport, EvaluationReport, Job, PolicyVersion
from training.services import TrainingError
from tutor.accounts import create_user

pytestmark = pytest.mark.django_db

CHEAP = {"n_prompts": 4, "kl_samples": 2, "max_new_tokens": 8, "temperature": 0.0, "samples_per_prompt": 1,
         "suites": ["answer_key_accuracy", "length_drift"]}


def _admin(client):
    client.force_login(create_user(username="boss", password="pw-12345678x", role="admin", validate_password=False))
    return client


@pytest.fixture
def empty_eval_data(tmp_path, monkeypatch) -> Path:
    """No evaluation data on this "machine": data-file suites report not_run with how to provide the files."""
    d = tmp_path / "no-eval-data"
    d.mkdir()
    monkeypatch.setenv("TUTOR_EVAL_DATA_DIR", str(d))
    return d


@pytest.fixture
def probe_suite():
    """A tiny real suite: acc 0.75 for v1 adapters, 0.25 for any other (so a copy as v2 is "worse")."""
    from rlhf.evals import SUITES, Metric, SuiteResult, register_suite

    name = "probe_version"

    @register_suite(name, kind="mc", description="test: scores the adapter by its version folder")
    def probe(ctx, cfg):
        adapter = ctx.describe().get("adapter") or ""
        acc = 0.75 if Path(adapter).name == "v1" else 0.25
        return SuiteResult(name, "ok", {"acc": Metric(acc, acc - 0.1, acc + 0.1, 4)}, n=4, data_hash="probe")

    yield name
    SUITES.pop(name, None)


# ------------------------------------------------------------------------------------------------------------------
# Config: refused before any work
# ------------------------------------------------------------------------------------------------------------------


def test_gate_suites_and_report_card_config_are_checked_before_any_work(client, models_dir):
    full = pipeline.validate_pipeline_config({"gate": {"suites": [
        {"suite": "corpus_mc", "metric": "acc", "tolerance": 0.02},
        {"suite": "corpus_mc", "metric": "ece", "tolerance": 0.05, "limit": 8}]}})
    assert full["gate"]["suites"] == [
        {"suite": "corpus_mc", "metric": "acc", "tolerance": 0.02, "limit": 64, "higher_is_better": True},
        {"suite": "corpus_mc", "metric": "ece", "tolerance": 0.05, "limit": 8, "higher_is_better": False}]
    assert pipeline.validate_pipeline_config({})["gate"]["suites"] == []  # the default gate stays fast
    assert full["report_card"]["enabled"] and full["report_card"]["suites"] == "all"
    bad = [
        ({"gate": {"suites": [{"suite": "nope", "metric": "acc"}]}}, "unknown suite 'nope'"),
        ({"gate": {"suites": [{"suite": "corpus_mc", "metric": "accuracy_of_vibes"}]}}, "unknown metric"),
        ({"gate": {"suites": [{"suite": "corpus_mc", "metric": "acc", "tolerance": -1}]}}, "tolerance must be >= 0"),
        ({"gate": {"suites": [{"suite": "corpus_mc", "metric": "acc", "tol": 1}]}}, "unknown fields"),
        ({"gate": {"suites": {"suite": "corpus_mc"}}}, "must be a list"),
        ({"report_card": {"suites": ["corpus_mc", "nope"]}}, "unknown benchmark suites"),
        ({"report_card": {"limit": 0}}, "positive integer"),
        ({"report_card": {"colour": "red"}}, "unknown config field .report_card.colour"),
    ]
    for config, message in bad:
        with pytest.raises(TrainingError, match=message):
            pipeline.validate_pipeline_config(config)
    _admin(client)
    for config, _ in bad:
        r = client.post(reverse("api-studio-jobs"), {"kind": "pipeline", "config": config},
                        content_type="application/json")
        assert r.status_code == 400, (config, r.content)
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="history", version=1)
    r = client.post(reverse("api-studio-benchmarks"), {"policy_version_id": v1.pk, "suites": ["nope"]},
                    content_type="application/json")
    assert r.status_code == 400 and "unknown benchmark suites" in r.json()["detail"]
    r = client.post(reverse("api-studio-benchmarks"), {"policy_version_id": 9999}, content_type="application/json")
    assert r.status_code == 404
    for body in ([1, 2], {"policy_version_id": v1.pk, "suites": {"x": 1}}, {"policy_version_id": v1.pk, "limit": "x"},
                 {"policy_version_id": "abc"}):
        assert client.post(reverse("api-studio-benchmarks"), body, content_type="application/json").status_code == 400
    r = client.post(reverse("training:benchmarks-run"), {"policy_version_id": v1.pk, "suites": "corpus_mc",
                                                         "limit": "-3"})
    assert r.status_code == 302
    assert not Job.objects.exists()  # nothing was queued by any of these


# ------------------------------------------------------------------------------------------------------------------
# The benchmarks job (in this process; tests/training/test_benchmarks_browser.py runs it in a Celery worker)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # execute_job closes the connection like a worker
def test_on_demand_report_card_runs_real_suites_and_says_why_one_did_not_run(client, models_dir, empty_eval_data):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="mathematics", version=1)
    job = services.launch_report_card(v1, suites=["corpus_mc", "xsum"], limit=4)
    assert job.kind == "benchmarks" and job.subject == "mathematics"
    assert services.execute_job(job.pk, worker="test") == "succeeded"
    job.refresh_from_db()
    report = BenchmarkReport.objects.get(job=job)
    assert report.policy_version == v1 and report.source == "report_card"
    mc, xsum = report.suites["corpus_mc"], report.suites["xsum"]
    assert mc["status"] == "ok" and mc["metrics"]["acc"]["n"] == mc["n"] > 0
    assert 0.0 <= mc["metrics"]["acc"]["ci_low"] <= mc["metrics"]["acc"]["value"] <= mc["metrics"]["acc"]["ci_high"]
    assert xsum["status"] == "not_run" and str(empty_eval_data) in xsum["reason"] and not xsum["metrics"]
    assert report.model["adapter"] == v1.path
    assert job.result["suites"] == {"corpus_mc": "ok", "xsum": "not_run"}
    assert job.progress == 1.0 and "corpus_mc: acc=" in job.log and "xsum: not_run" in job.log
    page = _admin(client).get(reverse("training:job", args=[job.pk])).content.decode()
    assert f"report card {report.pk} of mathematics v1" in page and "/studio/benchmarks/mathematics/" in page
    # deterministic: the same run again gives the same numbers on the same data
    again = services.launch_report_card(v1, suites=["corpus_mc"], limit=4)
    services.execute_job(again.pk, worker="test")
    r2 = BenchmarkReport.objects.get(job=again).suites["corpus_mc"]
    assert r2["metrics"] == mc["metrics"] and r2["data_hash"] == mc["data_hash"]


@pytest.mark.django_db(transaction=True)  # execute_job closes the connection like a worker
def test_cancel_stops_a_report_card_between_suites_and_stores_nothing(models_dir):
    from rlhf.evals import SUITES, SuiteResult, register_suite

    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="history", version=1)
    ran = []

    @register_suite("probe_cancel", kind="mc", description="test: an admin presses Cancel while it runs")
    def press_cancel(ctx, cfg):
        ran.append("probe_cancel")
        services.request_cancel(job.pk)
        return SuiteResult("probe_cancel", "ok")

    try:
        job = services.launch_report_card(v1, suites=["probe_cancel", "corpus_mc"], limit=2)
        assert services.execute_job(job.pk, worker="test") == "cancelled"
    finally:
        SUITES.pop("probe_cancel", None)
    job.refresh_from_db()
    assert job.status == "cancelled" and ran == ["probe_cancel"]  # corpus_mc never started
    assert not BenchmarkReport.objects.exists()


def test_pipeline_queues_the_report_card_after_deploy(models_dir):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="mathematics", version=1)
    PolicyVersion.objects.filter(pk=v1.pk).update(status="retired")
    v2 = make_version(v1, 2, status="promoted")

    def deployed_pipeline(report_card: dict) -> Job:
        p = Job.objects.create(kind="pipeline", status="running", stage="deploy",
                               config=pipeline.validate_pipeline_config({**TINY_PIPELINE, "report_card": report_card}))
        Job.objects.create(kind="deploy", parent=p, status="succeeded", subject="mathematics",
                           result={"policy_version_id": v2.pk, "version": 2})
        assert pipeline.advance(p.pk) == "succeeded"
        p.refresh_from_db()
        return p

    p = deployed_pipeline({"enabled": True, "suites": ["corpus_mc"], "limit": 4})
    cards = list(Job.objects.filter(kind="benchmarks", parent=p).order_by("id"))
    # v1 (replaced, no report card yet) first, so the side-by-side has both; then the new version
    assert [j.config["policy_version_id"] for j in cards] == [v1.pk, v2.pk]
    assert cards[0].config["report_card"] == {"suites": ["corpus_mc"], "limit": 4, "seed": 0, "judge": ""}
    assert p.result["report_card_jobs"] == [j.pk for j in cards] and p.status == "succeeded"
    p2 = deployed_pipeline({"enabled": False})
    assert not Job.objects.filter(kind="benchmarks", parent=p2).exists()


# ------------------------------------------------------------------------------------------------------------------
# The gate requires a suite
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # execute_job closes the connection like a worker
def test_a_required_suite_that_is_worse_or_not_run_fails_the_gate(models_dir, probe_suite, empty_eval_data):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="language", version=1)
    v2 = make_version(v1, 2)
    # one limit for all: one model load per version (entries with different limits run in groups)
    gate = {**PERMISSIVE_GATE, "suites": [{"suite": probe_suite, "metric": "acc", "tolerance": 0.1, "limit": 4},
                                          {"suite": "xsum", "metric": "rougeL", "tolerance": 0.5, "limit": 4},
                                          {"suite": "corpus_mc", "metric": "acc", "tolerance": 0.0, "limit": 4}]}
    job = services.launch_step("evaluate", config={"policy_version_id": v2.pk, "gate": gate, "eval": CHEAP})
    assert services.execute_job(job.pk, worker="test") == "succeeded", Job.objects.get(pk=job.pk).error
    report = EvaluationReport.objects.get(job=job)
    assert not report.passed
    rows = report.suites
    probe = rows[f"{probe_suite}:acc"]
    assert (probe["candidate"], probe["baseline"], probe["passed"]) == (0.25, 0.75, False)
    assert rows["xsum:rougeL"]["passed"] is False and "not run on the candidate" in rows["xsum:rougeL"]["why"]
    mc = rows["corpus_mc:acc"]  # v2 is a byte copy of v1: identical scores on the same items
    assert mc["passed"] and mc["candidate"] == mc["baseline"] and mc["same_data"]
    assert [f.split(":")[0] for f in report.failures] == [probe_suite, "xsum"]
    assert report.thresholds["suites"][0]["suite"] == probe_suite
    v2.refresh_from_db()
    assert v2.status == "retired" and "failed the gate" in v2.note
    # both versions' runs are kept as gate report cards beside the job
    runs = BenchmarkReport.objects.filter(job=job).order_by("policy_version__version")
    assert [(r.policy_version.version, r.source, sorted(r.suites)) for r in runs] == [
        (v, "gate", ["corpus_mc", probe_suite, "xsum"]) for v in (1, 2)]
    assert runs[0].config["suites"] == {probe_suite: 4, "xsum": 4, "corpus_mc": 4}

    v3 = make_version(v1, 3)
    ok = services.launch_step("evaluate", config={"policy_version_id": v3.pk, "eval": CHEAP, "gate": {
        **PERMISSIVE_GATE, "suites": [{"suite": "corpus_mc", "metric": "acc", "limit": 4}]}})
    services.execute_job(ok.pk, worker="test")
    assert EvaluationReport.objects.get(job=ok).passed


# ------------------------------------------------------------------------------------------------------------------
# The Benchmarks page and the API
# ------------------------------------------------------------------------------------------------------------------


def _result(suite: str, status: str = "ok", **metrics) -> dict:
    return {"suite": suite, "status": status, "n": 100 if status == "ok" else 0, "data_hash": f"h-{suite}",
            "seconds": 1.5, "reason": "" if status == "ok" else f"data file /x/{suite}.jsonl is missing",
            "metrics": {k: {"value": v[0], "ci_low": v[1], "ci_high": v[2], "n": 100} for k, v in metrics.items()},
            "details": {}}


def _card(pv, **suites) -> BenchmarkReport:
    return BenchmarkReport.objects.create(policy_version=pv, suites=suites, model={"adapter": pv.path})


def test_benchmarks_page_side_by_side_with_deltas_not_run_and_charts(client, models_dir):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="mathematics", version=1)
    v2 = PolicyVersion.objects.create(subject="mathematics", version=2, status="candidate", parent=v1, path="/v2")
    v3 = PolicyVersion.objects.create(subject="mathematics", version=3, status="candidate", parent=v1, path="/v3")
    _card(v1, corpus_mc=_result("corpus_mc", acc=(0.40, 0.30, 0.50), ece=(0.20, 0.15, 0.25)),
          xsum=_result("xsum", "not_run"))
    _card(v2, corpus_mc=_result("corpus_mc", acc=(0.70, 0.61, 0.78), ece=(0.22, 0.16, 0.27)),
          xsum=_result("xsum", "not_run"))
    _card(v3, corpus_mc=_result("corpus_mc", acc=(0.45, 0.35, 0.55), **{"acc/mathematics": (0.5, 0.3, 0.7)}))
    _admin(client)
    page = client.get(reverse("training:benchmarks")).content.decode()
    assert 'data-suite="corpus_mc"' in page and '<svg class="bench-chart"' in page
    assert page.count('<rect ') == 3 + 2  # a bar per version with a result: acc (v1-v3), ece (v1, v2)
    assert "not run: data file /x/xsum.jsonl is missing" in page
    board = selectors.benchmark_board("mathematics")
    mc = next(s for s in board[0]["suites"] if s["name"] == "corpus_mc")
    acc = next(r for r in mc["rows"] if r["metric"] == "acc")["cells"]
    assert [c["pv"].version for c in acc] == [1, 2, 3] and acc[0]["is_promoted"] and "delta" not in acc[0]
    assert acc[1]["delta"] == pytest.approx(0.30) and acc[1]["significant"] and acc[1]["method"] == "CI overlap"
    assert acc[2]["delta"] == pytest.approx(0.05) and acc[2]["significant"] is False
    assert [r["metric"] for r in mc["groups"]] == ["acc/mathematics"]
    xsum = next(s for s in board[0]["suites"] if s["name"] == "xsum")
    assert [st["status"] for st in xsum["status"]] == ["not_run", "not_run", None] and not xsum["any_ok"]
    # per subject, and no other subject's versions
    page = client.get(reverse("training:benchmarks-subject", args=["mathematics"])).content.decode()
    assert "Δ +0.300" in page and "significant" in page
    assert client.get(reverse("training:benchmarks-subject", args=["physics"])).status_code == 404
    assert 'href="/studio/benchmarks/"' in client.get(reverse("training:index")).content.decode()  # in the nav


def test_board_query_count_does_not_grow_with_versions(models_dir):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="history", version=1)
    _card(v1, corpus_mc=_result("corpus_mc", acc=(0.4, 0.3, 0.5)))

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            selectors.benchmark_board()
        return len(ctx.captured_queries)

    few = count()
    for v in range(2, 8):
        pv = PolicyVersion.objects.create(subject="history", version=v, status="candidate", parent=v1, path=f"/v{v}")
        _card(pv, corpus_mc=_result("corpus_mc", acc=(0.5, 0.4, 0.6)), xsum=_result("xsum", "not_run"))
    assert few == count() == 2  # the report cards with their versions; the promoted versions


def test_api_lists_report_cards_for_admins_only(client, models_dir):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="history", version=1)
    card = _card(v1, corpus_mc=_result("corpus_mc", acc=(0.4, 0.3, 0.5)))
    client.force_login(create_user(username="lab", password="pw-12345678x", role="labeler", validate_password=False))
    assert client.get(reverse("api-studio-benchmarks")).status_code == 403
    assert client.get(reverse("training:benchmarks")).status_code == 403
    _admin(client)
    data = client.get(reverse("api-studio-benchmarks"), {"subject": "history"}).json()
    assert [r["id"] for r in data["reports"]] == [card.pk] and data["promoted"]["history"] == v1.pk
    assert data["reports"][0]["suites"]["corpus_mc"]["metrics"]["acc"]["ci_high"] == 0.5
    assert client.get(reverse("api-studio-benchmarks"), {"subject": "physics"}).status_code == 400
    assert client.get(reverse("api-studio-benchmarks"), {"version": v1.pk + 1}).json()["reports"] == []
    schema = client.get("/api/schema/", {"format": "json"}).json()
    assert "/api/studio/benchmarks/" in schema["paths"]
    assert json.dumps(schema["paths"]["/api/studio/benchmarks/"]).count("operationId") == 2
