"""The studio's optimise loop in headless Chromium: an admin quantises a version from its page, a real Celery
worker builds and gates the variant, the variants page shows the size/speed/quality table and the verdict,
and the admin promotes the variant — which a real endpoint then serves from the variant's own base."""

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
from training import services
from training.models import Job, PolicyVersion
from tutor.accounts import create_user

pytestmark = [pytest.mark.browser, pytest.mark.ml, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]


def test_quantise_compare_and_promote_from_the_studio(page, endpoint, models_dir, tiny_base_path, output_dir):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="mathematics", version=1)
    create_user(username="boss", password="pw-12345678x", role="admin", validate_password=False)
    purge_filesystem_broker()
    # the tiny model's accuracy on 4 questions is noise: the gate judges size here (int8 is ~0.4x)
    env = subprocess_env(TUTOR_MODELS_DIR=str(models_dir), TUTOR_BASE_MODEL=str(tiny_base_path),
                         TUTOR_ENDPOINT_URL=endpoint.url, TUTOR_ENDPOINT_ADMIN_TOKEN=endpoint.admin_token,
                         TUTOR_DEPLOY_TARGET="local", TRAINING_VARIANT_QUALITY_TOLERANCE="1.0",
                         TRAINING_VARIANT_SIZE_FACTOR="0.9", TRAINING_VARIANT_QUESTIONS="4",
                         TRAINING_HEARTBEAT_SECONDS="1")
    web = start_web_server(env)
    worker = start_celery_worker(env)
    page.on("dialog", lambda dialog: dialog.accept())  # the "Promote ...?" confirmation
    try:
        url = web.info["url"]
        login(page, url, "boss", "pw-12345678x")
        page.goto(f"{url}/studio/versions/{v1.pk}/")
        page.click("text=Optimise")
        page.click("#method-quantise summary")
        page.click("#launch-quantise")
        page.wait_for_url("**/studio/jobs/*/")
        job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
        page.wait_for_selector("[data-job-detail][data-status=succeeded]", timeout=600_000)
        job = Job.objects.get(pk=job_id)
        assert (job.kind, job.status, job.result["gate"]["passed"]) == ("optimise", "succeeded", True), job.error
        variant = PolicyVersion.objects.get(pk=job.result["policy_version_id"])

        page.goto(f"{url}/studio/versions/{v1.pk}/variants/")
        row = page.locator(f"tr[data-version-id='{variant.pk}']")
        assert row.get_attribute("data-kind") == "quantised"
        assert row.locator("[data-field=tokens_per_s]").inner_text().strip() not in ("", "—")
        assert "passed" in row.locator("[data-field=gate]").inner_text()
        assert page.locator("svg.variant-chart").count() == 1
        page.screenshot(path=str(output_dir / "variants.png"), full_page=True)
        row.locator("button", has_text="Promote").click()
        page.wait_for_load_state()
        wait_until(lambda: PolicyVersion.objects.get(pk=variant.pk).status == "promoted", 60, "the promotion")
        out = endpoint.client().generate(prompt="What is 2 + 2?", subject="mathematics", max_new_tokens=2)
        assert out["outputs"][0]["adapter"]["version"] == variant.version  # served from its own base's process
        assert PolicyVersion.objects.get(pk=v1.pk).status == "retired"
    finally:
        worker.stop()
        web.stop()
