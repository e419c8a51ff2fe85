"""Studio pages for optimised variants: the launch form, its API, the comparison with the source.

Registry rows only (no model files, no Celery): a launch is judged by the Job it records, the comparison by
what it renders from the measurements and gate reports stored on the rows.
"""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from training.models import BenchmarkReport, EvaluationReport, Job, PolicyVersion
from tutor.accounts import create_user

pytestmark = pytest.mark.django_db


def _user(role: str):
    return create_user(username=f"u-{role}", password="pw-12345678x", role=role, validate_password=False)


@pytest.fixture
def admin_client(client):
    client.force_login(_user("admin"))
    return client


@pytest.fixture
def source() -> PolicyVersion:
    return PolicyVersion.objects.create(subject="mathematics", version=1, status="promoted", path="/nowhere/v1",
                                        metrics={"measured": {
                                            "size_bytes": 8 * 2**20, "base_bytes": 8 * 2**20 - 4096,
                                            "adapter_bytes": 4096, "rss_mb": 200.0, "tokens_per_s": 50.0,
                                            "p50_ms": 80.0, "p95_ms": 100.0, "accuracy": 0.5, "n_questions": 16,
                                            "concurrency": 4, "new_tokens": 32,
                                            "measured_at": "2026-11-29T23:00:00+00:00"}})


def _variant(source: PolicyVersion, version: int, kind: str, measured: dict | None = None) -> PolicyVersion:
    return PolicyVersion.objects.create(subject=source.subject, version=version, kind=kind, source=source,
                                        parent=source, status="candidate", path=f"/nowhere/v{version}",
                                        metrics={"measured": measured} if measured is not None else {})


def _optimise_jobs() -> int:
    return Job.objects.filter(kind="optimise").count()


# --------------------------------------------------------------------------------------------------
# The launch form
# --------------------------------------------------------------------------------------------------


def test_form_renders_for_an_adapter_and_is_linked_from_its_page(admin_client, source):
    url = reverse("training:version-optimise", args=[source.pk])
    r = admin_client.get(url)
    assert r.status_code == 200
    page = r.content.decode()
    for method in ("distil", "quantise", "prune"):
        assert f'data-method="{method}"' in page and f'id="launch-{method}"' in page
    # fields come from the dataclasses' defaults
    assert 'name="distil-temperature" id="distil-temperature" value="2.0"' in page
    assert 'name="prune-sparsity" id="prune-sparsity" value="0.5"' in page
    assert '<option value="int8_weight_only" selected>' in page
    detail = admin_client.get(reverse("training:version", args=[source.pk])).content.decode()
    assert url in detail and "Variants (0)" in detail


def test_form_is_refused_for_a_variant_and_a_failed_version(admin_client, source):
    variant = _variant(source, 2, "quantised")
    r = admin_client.get(reverse("training:version-optimise", args=[variant.pk]))
    page = r.content.decode()
    assert r.status_code == 200 and 'id="optimise-refused"' in page and "already an optimised variant" in page
    assert "optimise-form" not in page
    detail = admin_client.get(reverse("training:version", args=[variant.pk])).content.decode()
    assert 'id="optimise-link"' not in detail
    assert "Variant of" in detail and reverse("training:version-variants", args=[source.pk]) in detail
    failed = PolicyVersion.objects.create(subject="history", version=1, status="failed", path="/nowhere/h1")
    page = admin_client.get(reverse("training:version-optimise", args=[failed.pk])).content.decode()
    assert "only a finished version can be optimised" in page and "optimise-form" not in page
    r = admin_client.post(reverse("training:version-optimise", args=[variant.pk]), {"method": "prune"})
    assert r.status_code == 400 and _optimise_jobs() == 0


@pytest.mark.parametrize(("body", "message"), [
    ({"method": "distil", "distil-temperature": "0"}, "temperature T must be &gt; 0"),
    ({"method": "distil", "distil-alpha": "1.5"}, "alpha must be in [0, 1]"),
    ({"method": "prune", "prune-sparsity": "1.0"}, "sparsity must be in [0, 1)"),
    ({"method": "prune", "prune-recovery_steps": "many"}, "recovery_steps must be an integer"),
    ({"method": "quantise", "quantise-json": json.dumps({"bits": 3})}, "unknown QuantiseConfig field(s): bits"),
    ({"method": "quantise", "quantise-scheme": "int3"}, "unknown quantisation scheme"),
    ({"method": "quantise", "quantise-modules": ""}, "quantisable modules are"),
    ({"method": "distil", "distil-json": "{not json"}, "not valid JSON"),
    ({"method": "shrink"}, "unknown optimisation"),
])
def test_bad_config_rerenders_400_and_queues_nothing(admin_client, source, body, message):
    r = admin_client.post(reverse("training:version-optimise", args=[source.pk]), body)
    page = r.content.decode()
    assert r.status_code == 400, page[-500:]
    assert 'id="optimise-error"' in page and message in page
    assert not Job.objects.exists()


def test_bad_value_is_kept_in_the_form(admin_client, source):
    r = admin_client.post(reverse("training:version-optimise", args=[source.pk]),
                          {"method": "distil", "distil-temperature": "0", "distil-steps": "7"})
    page = r.content.decode()
    assert r.status_code == 400
    assert 'id="method-distil" open' in page
    assert 'name="distil-temperature" id="distil-temperature" value="0"' in page
    assert 'name="distil-steps" id="distil-steps" value="7"' in page


def test_good_launch_queues_one_optimise_job_and_redirects(admin_client, source):
    body = {"method": "prune", "prune-mode": "structured", "prune-sparsity": "0.25", "prune-recovery_steps": "3",
            "prune-recovery_lr": "0.002"}
    r = admin_client.post(reverse("training:version-optimise", args=[source.pk]), body)
    job = Job.objects.get()
    assert r.status_code == 302 and r["Location"] == reverse("training:job", args=[job.pk])
    assert (job.kind, job.status, job.subject) == ("optimise", "queued", "mathematics")
    assert job.config["policy_version_id"] == source.pk and job.config["method"] == "prune"
    cfg = job.config["config"]
    assert (cfg["mode"], cfg["sparsity"], cfg["recovery_steps"], cfg["recovery_lr"]) == ("structured", 0.25, 3, 0.002)
    assert cfg["heldout_examples"] == 16  # untouched fields keep the dataclass default
    assert job.launched_by.username == "u-admin"
    assert job.config["gate"]["speed_factor"] == 1.2  # the variant gate runs after the build by default
    r = admin_client.post(reverse("training:version-optimise", args=[source.pk]),
                          {"method": "prune", "prune-gate-present": "1"})  # the box unticked
    assert r.status_code == 302 and Job.objects.order_by("-id").first().config["gate"] is False


def test_distil_layers_and_the_json_box(admin_client, source):
    url = reverse("training:version-optimise", args=[source.pk])
    r = admin_client.post(url, {"method": "distil", "distil-student_layers": "0, 3", "distil-temperature": "4"})
    assert r.status_code == 302
    cfg = Job.objects.get().config["config"]
    assert cfg["student_layers"] == [0, 3] and cfg["temperature"] == 4.0
    r = admin_client.post(url, {"method": "quantise", "quantise-scheme": "bnb_int4",
                                "quantise-json": json.dumps({"scheme": "dynamic_int8"})})
    assert r.status_code == 302  # the JSON box wins over the fields
    assert Job.objects.order_by("-id").first().config["config"]["scheme"] == "dynamic_int8"


# --------------------------------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------------------------------


def test_api_launches_refuses_and_404s(admin_client, source):
    url = reverse("api-studio-version-optimise", args=[source.pk])
    r = admin_client.post(url, {"method": "distil", "config": {"temperature": 0}}, content_type="application/json")
    assert r.status_code == 400 and "temperature" in r.json()["error"]
    r = admin_client.post(url, {"method": "quantise", "config": {"bits": 3}}, content_type="application/json")
    assert r.status_code == 400 and "bits" in r.json()["error"]
    r = admin_client.post(url, {"config": {}}, content_type="application/json")
    assert r.status_code == 400 and "method" in r.json()["error"]
    r = admin_client.post(url, {"method": "prune", "config": [1]}, content_type="application/json")
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    r = admin_client.post(reverse("api-studio-version-optimise", args=[987654]), {"method": "prune"},
                          content_type="application/json")
    assert r.status_code == 404 and "does not exist" in r.json()["error"]
    variant = _variant(source, 2, "pruned")
    r = admin_client.post(reverse("api-studio-version-optimise", args=[variant.pk]), {"method": "prune"},
                          content_type="application/json")
    assert r.status_code == 400 and "already an optimised variant" in r.json()["error"]
    assert _optimise_jobs() == 0
    r = admin_client.post(url, {"method": "prune", "gate": {"speed_factor": -1}}, content_type="application/json")
    assert r.status_code == 400 and "gate" in r.json()["error"]
    assert _optimise_jobs() == 0
    r = admin_client.post(url, {"method": "prune", "config": {"sparsity": 0.3}, "gate": False},
                          content_type="application/json")
    assert r.status_code == 201
    job = Job.objects.get()
    assert job.config["gate"] is False
    assert r.json()["job_id"] == job.pk and r.json()["status"] == "queued"
    assert job.config["config"]["sparsity"] == 0.3


@pytest.mark.parametrize("role", ["student", "labeler"])
def test_non_admins_are_refused(client, source, role):
    client.force_login(_user(role))
    variant = _variant(source, 2, "quantised")
    assert client.get(reverse("training:version-optimise", args=[source.pk])).status_code == 403
    assert client.post(reverse("training:version-optimise", args=[source.pk]), {"method": "prune"}).status_code == 403
    assert client.get(reverse("training:version-variants", args=[source.pk])).status_code == 403
    assert client.post(reverse("training:version-gate", args=[variant.pk])).status_code == 403
    r = client.post(reverse("api-studio-version-optimise", args=[source.pk]), {"method": "prune"},
                    content_type="application/json")
    assert r.status_code == 403
    assert not Job.objects.exists()


def test_anonymous_is_sent_to_login(client, source):
    r = client.get(reverse("training:version-variants", args=[source.pk]))
    assert r.status_code == 302 and "/login" in r["Location"]
    r = client.post(reverse("api-studio-version-optimise", args=[source.pk]), {"method": "prune"},
                    content_type="application/json")
    assert r.status_code in (401, 403) and not Job.objects.exists()


# --------------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------------


def _cell(page: str, version_id: int, attr: str) -> str:
    """The text of the cell ``<td data-...="...">`` in the variants table's row of one version."""
    row = page.split(f'<tr data-version-id="{version_id}"', 1)[1].split("</tr>", 1)[0]
    return row.split(attr, 1)[1].split(">", 1)[1].split("</td>", 1)[0].strip()


def test_comparison_shows_ratios_gate_and_missing_measurements(admin_client, source):
    quantised = _variant(source, 2, "quantised", {
        "size_bytes": 2 * 2**20, "base_bytes": 2 * 2**20 - 4096, "adapter_bytes": 4096, "rss_mb": 100.0,
        "tokens_per_s": 125.0, "p50_ms": 40.0, "p95_ms": 50.0, "accuracy": 0.46, "n_questions": 16,
        "concurrency": 4, "new_tokens": 32, "measured_at": "2026-11-29T23:10:00+00:00"})
    pruned = _variant(source, 3, "pruned")  # never measured
    partial = _variant(source, 4, "distilled", {"tokens_per_s": 75.0})  # only tokens/s so far
    EvaluationReport.objects.create(candidate=quantised, baseline=source, passed=True, suites={})  # an older one
    EvaluationReport.objects.create(
        candidate=quantised, baseline=source, passed=False,
        failures=["arithmetic dropped 0.080 > 0.050"],
        suites={"arithmetic": {"candidate": 0.42, "baseline": 0.5, "threshold": -0.05, "passed": False},
                "size_bytes": {"candidate": 2 * 2**20, "baseline": 8 * 2**20, "threshold": 0.6, "ratio": 0.25,
                               "passed": True}})
    BenchmarkReport.objects.create(policy_version=source, suites={
        "arithmetic": {"status": "ok", "metrics": {"exact_match": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}}},
        "mmlu": {"status": "not_run", "metrics": {}}})
    BenchmarkReport.objects.create(policy_version=quantised, suites={
        "arithmetic": {"status": "ok", "metrics": {"exact_match": {"value": 0.42}}}})

    r = admin_client.get(reverse("training:version-variants", args=[source.pk]))
    assert r.status_code == 200
    page = r.content.decode()
    # source first, then the variants in version order
    order = [page.index(f'<tr data-version-id="{pv.pk}"') for pv in (source, quantised, pruned, partial)]
    assert order == sorted(order)
    assert _cell(page, source.pk, 'data-field="size_bytes"') == "8.0 MiB"
    assert _cell(page, quantised.pk, 'data-field="tokens_per_s"') == "125.0"
    assert _cell(page, quantised.pk, 'data-ratio="size"') == "0.25×"
    assert _cell(page, quantised.pk, 'data-ratio="memory"') == "0.50×"
    assert _cell(page, quantised.pk, 'data-ratio="tok/s"') == "2.50×"
    assert _cell(page, quantised.pk, 'data-ratio="p95"') == "0.50×"
    assert _cell(page, quantised.pk, 'data-ratio="accuracy"') == "-0.040"
    # the unmeasured variant: dashes and the note, never zeros
    pruned_row = page.split(f'<tr data-version-id="{pruned.pk}"', 1)[1].split("</tr>", 1)[0]
    assert "not measured yet" in pruned_row
    assert _cell(page, pruned.pk, 'data-ratio="size"') == "—" and _cell(page, pruned.pk, 'data-field="rss_mb"') == "—"
    assert _cell(page, partial.pk, 'data-ratio="tok/s"') == "1.50×" and _cell(page, partial.pk, 'data-ratio="size"') == "—"
    assert "not measured yet" not in page.split(f'<tr data-version-id="{partial.pk}"', 1)[1].split("</tr>", 1)[0]
    # the latest gate report: its verdict and reasons, and its checks
    assert "failed" in _cell(page, quantised.pk, 'data-field="gate"')
    assert "arithmetic dropped 0.080 &gt; 0.050" in page
    gate = page.split(f'data-gate-of="{quantised.pk}"', 1)[1].split("</section>", 1)[0]
    size_check = gate.split('data-check="size_bytes"', 1)[1].split("</tr>", 1)[0]
    assert "2,097,152" in size_check and "8,388,608" in size_check and "0.25×" in size_check and "✓" in size_check
    assert "-0.050" in gate.split('data-check="arithmetic"', 1)[1].split("</tr>", 1)[0]
    assert "not judged yet" in _cell(page, pruned.pk, 'data-field="gate"')
    # report cards' main metric side by side, with the difference to the source
    cards = page.split('id="report-card-quality"', 1)[1].split("</section>", 1)[0]
    assert "arithmetic" in cards and "mmlu" not in cards and "0.420" in cards and "-0.080" in cards
    # the chart: one bar per measured variant in each panel, a reference line for the source
    assert 'class="bench-chart variant-chart"' in page
    assert 'data-metric="size ×"' in page and 'data-metric="tokens/s ×"' in page and 'data-metric="accuracy Δ"' in page
    assert 'data-version="v2" data-value="0.25"' in page and 'data-version="v4" data-value="1.5"' in page
    # actions per variant: run the gate, canary, promote, reject (coming back to this page)
    assert reverse("training:version-gate", args=[quantised.pk]) in page
    assert reverse("training:version-canary", args=[quantised.pk]) in page
    assert reverse("training:version-retire", args=[pruned.pk]) in page
    assert reverse("training:version-promote", args=[partial.pk]) in page
    # the source's page counts its variants; a variant's page points to its source and this comparison
    detail = admin_client.get(reverse("training:version", args=[source.pk])).content.decode()
    assert "Variants (3)" in detail
    vdetail = admin_client.get(reverse("training:version", args=[quantised.pk])).content.decode()
    assert "Variant of" in vdetail and reverse("training:version", args=[source.pk]) in vdetail
    assert "(quantised" in vdetail


def test_comparison_of_a_variant_redirects_to_its_source_and_reject_comes_back(admin_client, source):
    variant = _variant(source, 2, "pruned")
    url = reverse("training:version-variants", args=[source.pk])
    r = admin_client.get(reverse("training:version-variants", args=[variant.pk]))
    assert r.status_code == 302 and r["Location"] == url
    assert "not measured yet" in admin_client.get(url).content.decode()
    r = admin_client.post(reverse("training:version-retire", args=[variant.pk]), {"next": url})
    assert r.status_code == 302 and r["Location"] == url
    variant.refresh_from_db()
    assert variant.status == "retired"
    other = _variant(source, 3, "quantised")
    r = admin_client.post(reverse("training:version-retire", args=[other.pk]), {"next": "https://evil.example/"})
    assert r.status_code == 302 and r["Location"] == reverse("training:versions")


def test_run_gate_queues_the_variant_gate(admin_client, source):
    variant = _variant(source, 2, "quantised")
    before = Job.objects.count()
    r = admin_client.post(reverse("training:version-gate", args=[variant.pk]))
    job = Job.objects.order_by("-id").first()
    assert Job.objects.count() == before + 1
    assert r.status_code == 302 and r["Location"] == reverse("training:job", args=[job.pk])
