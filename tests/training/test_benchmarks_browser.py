"""The report card end to end: an admin runs it from the studio for two versions, a real Celery worker
scores them with real harness suites on the tiny model, and the Benchmarks page shows them side by side
in headless Chromium — with a chart per suite and "not run: <reason>" for the suite whose data is absent."""

from __future__ import annotations

import pytest

from tests.fixtures.browser import login
from tests.fixtures.processes import (
    purge_filesystem_broker,
    start_celery_worker,
    start_web_server,
    subprocess_env,
    wait_until,
)
from tests.training.conftest import make_version
from training import services
from training.models import BenchmarkReport, Job, PolicyVersion
from tutor.accounts import create_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]


def test_report_card_from_the_studio_through_a_worker(page, models_dir, tiny_base_path, tmp_path, output_dir):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="mathematics", version=1)
    v2 = make_version(v1, 2)
    create_user(username="boss", password="pw-12345678x", role="admin", validate_password=False)
    no_data = tmp_path / "no-eval-data"  # this "machine" has no XSum file: that suite must say so
    no_data.mkdir()
    purge_filesystem_broker()
    env = subprocess_env(TUTOR_MODELS_DIR=str(models_dir), TUTOR_BASE_MODEL=str(tiny_base_path),
                         TUTOR_EVAL_DATA_DIR=str(no_data), TRAINING_HEARTBEAT_SECONDS="1")
    web = start_web_server(env)
    worker = start_celery_worker(env)
    try:
        url = web.info["url"]
        login(page, url, "boss", "pw-12345678x")
        jobs = []
        for pv in (v1, v2):
            page.goto(f"{url}/studio/benchmarks/mathematics/")
            page.select_option("#rc-version", str(pv.pk))
            page.fill("#rc-suites", "corpus_mc, xsum")
            page.fill("#rc-limit", "4")
            page.click("#run-report-card")
            page.wait_for_url("**/studio/jobs/*/")
            jobs.append(int(page.url.rstrip("/").rsplit("/", 1)[1]))
        # the job page follows the worker live (polling the API) until the report card is stored
        page.wait_for_selector("[data-job-detail][data-status=succeeded]", timeout=600_000)
        page.screenshot(path=str(output_dir / "job.png"))
        for pk in jobs:
            wait_until(lambda pk=pk: Job.objects.get(pk=pk).is_terminal, 120, f"job {pk} to end")
            job = Job.objects.get(pk=pk)
            assert (job.kind, job.status) == ("benchmarks", "succeeded"), job.error
            assert job.result["suites"] == {"corpus_mc": "ok", "xsum": "not_run"}
        assert sorted(BenchmarkReport.objects.values_list("policy_version__version", flat=True)) == [1, 2]

        page.goto(f"{url}/studio/benchmarks/")
        section = page.locator("[data-subject=mathematics]")
        mc = section.locator(".bench-suite[data-suite=corpus_mc]")
        chart = mc.locator("svg.bench-chart")
        assert chart.count() == 1
        acc_bars = chart.locator("g.panel[data-metric=acc] rect")
        assert acc_bars.count() == 2  # v1 and v2 side by side
        assert sorted(acc_bars.nth(i).get_attribute("data-version") for i in range(2)) == ["v1", "v2"]
        assert mc.locator("g.panel[data-metric=acc] g.whisker").count() == 2  # CI whiskers drawn
        # v2 is a byte copy of the promoted v1: same items, same scores — no difference, and it says so
        delta = mc.locator("tr[data-metric=acc] td[data-version='2'] .delta")
        assert "Δ +0.000" in delta.inner_text() and delta.get_attribute("data-significant") == "no"
        not_run = section.locator(".bench-suite[data-suite=xsum] .not-run")
        assert not_run.count() == 2
        text = not_run.first.inner_text()
        assert text.startswith("not run:") and "TUTOR_EVAL_DATA_DIR" in text and str(no_data) in text
        page.screenshot(path=str(output_dir / "benchmarks.png"), full_page=True)
    finally:
        worker.stop()
        web.stop()
