"""The reward-model benchmark's held-out splits (benchmarks/reward_model.py).

Why: settings are chosen by cross-validation so that the 300 test pairs stay unread until the final figure; a
fold that overlapped its training pairs, or leaked a test pair, would make the choice look better than it is.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("reward_model_benchmark", ROOT / "benchmarks" / "reward_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not module.DATA.exists():
        pytest.skip(f"{module.DATA} not found (the shared reference data lives outside the repository)")
    return module


def test_folds_partition_the_train_pairs_and_never_read_the_test_pairs(bench, tmp_path: Path) -> None:
    from datasets import load_from_disk

    plain = load_from_disk(str(bench.build_snapshot(tmp_path / "plain", 120, 30)))
    train_ids, test_ids = set(plain["train"]["source"]), set(plain["test"]["source"])
    assert len(train_ids) == 120 and len(test_ids) == 30 and not train_ids & test_ids
    held_out: list[str] = []
    for k in range(4):
        fold = load_from_disk(str(bench.build_snapshot(tmp_path / f"fold{k}", 120, fold=(k, 4))))
        fold_train, fold_test = set(fold["train"]["source"]), set(fold["test"]["source"])
        assert len(fold_train) == 90 and len(fold_test) == 30 and not fold_train & fold_test
        assert fold_train | fold_test == train_ids  # only the train pairs, every one of them
        held_out += fold["test"]["source"]
    assert sorted(held_out) == sorted(train_ids)  # each train pair is held out exactly once
