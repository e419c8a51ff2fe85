"""Tasks from the real endpoint (tiny model): K completions with adapter versions, promoted and
candidate mixed; and the same through a real Celery worker."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from feedback import services
from feedback.models import ComparisonTask, Completion, Prompt
from tests.fixtures.processes import start_celery_worker, subprocess_env


@pytest.fixture
def endpoint(endpoint_server, settings):
    server = endpoint_server
    settings.TUTOR_ENDPOINT_URL = server.url
    settings.TUTOR_ENDPOINT_ADMIN_TOKEN = server.admin_token
    settings.TUTOR_MAX_NEW_TOKENS = 8
    return server


@pytest.mark.django_db
def test_build_tasks_samples_k_and_records_versions(endpoint):
    prompt, _ = services.add_prompt(subject="mathematics", text="What is 2 + 3?", source="seed")
    task = services.build_task_for_prompt(prompt, k=4)
    assert task is not None and task.subject == "mathematics" and task.overlap == 2
    comps = list(task.completions.all())
    assert 2 <= len(comps) <= 4 and sum(c.sample_count for c in comps) <= 4
    assert all(c.adapter_subject == "mathematics" and c.adapter_version == 1 for c in comps)
    assert len({c.text for c in comps}) == len(comps)  # identical samples merged


def _as_version(src: Path, dest: Path, version: int) -> Path:
    """A copy of an adapter artefact whose manifest says another version (a 'candidate')."""
    from rlhf.manifest import MANIFEST, read_manifest, write_artifact

    m = read_manifest(src)
    standard = {"format", "kind", "base_model", "base_model_sha256", "parent", "dataset_sha256", "config",
                "metrics", "created_at", "files"}

    def populate(tmp: Path) -> None:
        for f in src.iterdir():
            if f.name != MANIFEST and f.is_file():
                shutil.copy2(f, tmp / f.name)

    return write_artifact(dest, m["kind"], populate, base_model=m.get("base_model"),
                          base_model_sha256=m.get("base_model_sha256"), parent=m.get("parent"),
                          dataset_sha256=m.get("dataset_sha256"), config=m.get("config"), metrics=m.get("metrics"),
                          extra={**{k: v for k, v in m.items() if k not in standard}, "version": version})


@pytest.mark.django_db
def test_promoted_and_candidate_are_mixed(endpoint, tmp_path):
    client = endpoint.client()
    listing = client.list_adapters()
    v1 = next(a for a in listing["adapters"] if a["subject"] == "history" and a["version"] == 1)
    client.load_adapter("history", 2, str(_as_version(Path(v1["path"]), tmp_path / "history-v2", 2)))
    try:
        client.set_routing("history", promoted=1, candidate=2, candidate_share=0.0)
        prompt, _ = services.add_prompt(subject="history", text="Who built the pyramids?", source="seed")
        task = services.build_task_for_prompt(prompt, k=4)
        versions = {v for c in task.completions.all() for v in c.versions}
        assert versions == {1, 2}
    finally:
        client.set_routing("history", promoted=1)
        client.unload_adapter("history", 2)


@pytest.mark.django_db(transaction=True)
def test_celery_task_builds_tasks(endpoint):
    from feedback.tasks import build_tasks

    services.add_prompt(subject="language", text="What is a noun?", source="seed")
    worker = start_celery_worker(subprocess_env(TUTOR_ENDPOINT_URL=endpoint.url,
                                                TUTOR_ENDPOINT_ADMIN_TOKEN=endpoint.admin_token,
                                                TUTOR_MAX_NEW_TOKENS="8"))
    try:
        result = build_tasks.delay(limit=5, k=3).get(timeout=120)
    finally:
        worker.stop()
    assert result["tasks"] + result["skipped"] == Prompt.objects.count()
    if result["tasks"]:
        task = ComparisonTask.objects.get()
        assert Completion.objects.filter(task=task).count() >= 2


def _completions(task) -> list[tuple[str, int]]:
    return sorted((c.text, c.sample_count) for c in task.completions.all())


@pytest.mark.django_db
def test_the_same_seed_gives_the_same_completions(endpoint):
    """Seeded endpoint sampling (a seed per prompt and version): a replayed loop sees the same tasks."""
    prompt, _ = services.add_prompt(subject="mathematics", text="What is 7 times 8?", source="seed")
    first = _completions(services.build_task_for_prompt(prompt, k=4, seed=11))
    again = _completions(services.build_task_for_prompt(prompt, k=4, seed=11))
    assert first == again
    other = [_completions(services.build_task_for_prompt(prompt, k=4, seed=s)) for s in (12, 13)]
    assert any(o != first for o in other), "another seed should sample other completions"


@pytest.mark.django_db(transaction=True)
def test_seeded_completions_do_not_depend_on_the_batch(endpoint):
    """Each sequence samples with its own generator: other requests sharing the batch change nothing."""
    import threading

    prompt, _ = services.add_prompt(subject="history", text="Who built the pyramids?", source="seed")
    alone = _completions(services.build_task_for_prompt(prompt, k=4, seed=5))
    client, stop = endpoint.client(), threading.Event()

    def chatter(i: int) -> None:  # unseeded traffic on other adapters and the same one
        while not stop.is_set():
            client.generate(prompt=f"Tell me about topic {i}.", subject=("history", "language")[i % 2],
                            max_new_tokens=8, temperature=1.0, n=2)

    threads = [threading.Thread(target=chatter, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    try:
        crowded = [_completions(services.build_task_for_prompt(prompt, k=4, seed=5)) for _ in range(2)]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert crowded == [alone, alone]
