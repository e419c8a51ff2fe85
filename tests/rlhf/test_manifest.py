"""rlhf.manifest: atomic artefact writes and verification that refuses tampering."""

from __future__ import annotations

import json

import pytest

from rlhf.callbacks import Cancelled
from rlhf.manifest import ArtifactError, artifact_sha256, read_manifest, verify, write_artifact


def _populate(tmp):
    (tmp / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "config.json").write_text('{"a": 1}')


def _make(tmp_path, name="art"):
    return write_artifact(tmp_path / name, "adapter", _populate, base_model="demo-x", base_model_sha256="ab" * 32,
                          parent="v1", dataset_sha256="cd" * 32, config={"r": 8}, metrics={"loss": 0.5})


def test_manifest_records_provenance_and_every_file(tmp_path):
    path = _make(tmp_path)
    m = verify(path)
    assert m["kind"] == "adapter" and m["parent"] == "v1" and m["config"] == {"r": 8}
    assert set(m["files"]) == {"weights.bin", "sub/config.json"}
    assert m["created_at"] and m["base_model_sha256"] == "ab" * 32
    assert len(artifact_sha256(path)) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temp dirs left


def test_flipped_byte_is_caught(tmp_path):
    path = _make(tmp_path)
    before = artifact_sha256(path)
    data = bytearray((path / "weights.bin").read_bytes())
    data[100] ^= 0x01
    (path / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.bin"):
        verify(path)
    with pytest.raises(ArtifactError):
        artifact_sha256(path)
    data[100] ^= 0x01
    (path / "weights.bin").write_bytes(bytes(data))
    assert artifact_sha256(path) == before


def test_missing_extra_file_and_missing_manifest_are_caught(tmp_path):
    path = _make(tmp_path)
    (path / "sub" / "config.json").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        verify(path)
    path2 = _make(tmp_path, "art2")
    (path2 / "intruder.txt").write_text("x")
    with pytest.raises(ArtifactError, match="unexpected"):
        verify(path2)
    path3 = _make(tmp_path, "art3")
    (path3 / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest"):
        verify(path3)
    with pytest.raises(ArtifactError, match="does not exist"):
        verify(tmp_path / "nope")


def test_tampered_manifest_changes_the_registry_hash(tmp_path):
    path = _make(tmp_path)
    before = artifact_sha256(path)
    m = json.loads((path / "manifest.json").read_text())
    m["metrics"]["loss"] = 0.1
    (path / "manifest.json").write_text(json.dumps(m))
    assert artifact_sha256(path) != before


def test_failed_or_cancelled_write_leaves_nothing_and_existing_is_refused(tmp_path):
    def boom(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise Cancelled()

    with pytest.raises(Cancelled):
        write_artifact(tmp_path / "a", "adapter", boom)
    assert list(tmp_path.iterdir()) == []
    _make(tmp_path)
    with pytest.raises(FileExistsError):
        _make(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        write_artifact(tmp_path / "b", "weird", _populate)
    assert read_manifest(tmp_path / "art")["kind"] == "adapter"
