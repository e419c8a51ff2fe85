"""What distillation, quantisation and pruning share: errors, lineage, variant artefacts, data.

Why one place: every variant is a *base model* artefact (`kind="base_model"`, `manifest["optimise"]`
holds the method and its lineage) plus, where the source had one, the subject's adapter re-recorded
against the variant's base hash (the endpoint refuses an adapter whose base hash differs). The
endpoint loads a variant through `rlhf.models.load_base`, which asks `load_optimised` first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from rlhf.chat import build_prompt
from rlhf.corpus import generate_corpus
from rlhf.manifest import MANIFEST, canonical_json, read_manifest, verify, write_artifact
from rlhf.models import base_fingerprint, base_model_id, resolve_base_path

TARGET_LINEARS = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


class OptimiseError(ValueError):
    """A bad optimisation request (refused before any work starts) or an unusable source."""


def source_lineage(base: str | Path, adapter: str | Path | None) -> dict[str, Any]:
    """Where a variant comes from: the source base (id + hash) and adapter (path + hash + subject/version)."""
    base_path = resolve_base_path(base)
    out: dict[str, Any] = {"source_base": base_model_id(base_path), "source_base_sha256": base_fingerprint(base_path)}
    if adapter is not None:
        manifest = verify(adapter)
        if manifest.get("kind") != "adapter":
            raise OptimiseError(f"{adapter} is a {manifest.get('kind')!r} artefact, not an adapter")
        out.update(source_adapter=str(adapter), source_adapter_sha256=hashlib.sha256(canonical_json(manifest)).hexdigest(),
                   subject=manifest.get("subject"), source_version=manifest.get("version"),
                   adapter_method=manifest.get("method"))
    return out


def copy_tokenizer(src: Path, dest: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)


def write_variant_base(dest: Path, source_base: Path, populate_weights: Any, *, method: str, lineage: dict[str, Any],
                       config: dict[str, Any], metrics: dict[str, Any], dataset_sha256: str | None = None) -> Path:
    """A base-model artefact: `populate_weights(tmp)` writes config + weights; tokenizer copied from the source."""

    def populate(tmp: Path) -> None:
        populate_weights(tmp)
        copy_tokenizer(source_base, tmp)

    return write_artifact(
        dest, "base_model", populate, base_model=f"{lineage['source_base']}-{method}", parent=lineage["source_base_sha256"],
        dataset_sha256=dataset_sha256, config=config, metrics=metrics,
        extra={"optimise": {"method": method, **lineage}},
    )


def rebase_adapter(adapter: str | Path, variant_base: str | Path, dest: str | Path, *, weights_dir: Path | None = None,
                   metrics: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                   version: int | None = None) -> Path:
    """The subject's adapter recorded against the variant base (same PEFT files unless `weights_dir` is given).

    Why: the endpoint checks an adapter's `base_model_sha256` against the base it serves; the adapter's
    weights stay in full precision (the endpoint applies them on top of the int8 / pruned base).
    """
    src_manifest = verify(adapter)
    variant_manifest = verify(variant_base)
    src = Path(weights_dir) if weights_dir is not None else Path(adapter)

    def populate(tmp: Path) -> None:
        for f in src.iterdir():
            if f.is_file() and f.name != MANIFEST and (f.name.startswith("adapter_") or f.name == "README.md"):
                shutil.copy2(f, tmp / f.name)

    return write_artifact(
        dest, "adapter", populate, base_model=variant_base_id(variant_base),
        base_model_sha256=hashlib.sha256(canonical_json(variant_manifest)).hexdigest(),
        parent=hashlib.sha256(canonical_json(src_manifest)).hexdigest(), dataset_sha256=src_manifest.get("dataset_sha256"),
        config=config if config is not None else src_manifest.get("config", {}),
        metrics=metrics if metrics is not None else src_manifest.get("metrics", {}),
        extra={"subject": src_manifest.get("subject"), "method": src_manifest.get("method"),
               "version": version if version is not None else src_manifest.get("version"),
               "optimise": variant_manifest.get("optimise", {})},
    )


def adapter_dest(adapters_out: str | Path, subject: str, source: str | Path, version: int | None) -> Path:
    """`<adapters_out>/<subject>/v<N>`: the source's version directory name unless `version` is given."""
    return Path(adapters_out) / subject / (f"v{version}" if version is not None else Path(source).name)


def removing_partial(build: Any, base: str | Path, out_dir: str | Path, config: Any, callback: Any, *,
                     adapters: dict[str, str | Path] | None, adapters_out: str | Path | None,
                     adapter_version: int | None) -> dict[str, Any]:
    """Run one technique's `build(base, out, config, callback, ...)`; on any failure or `Cancelled`, remove the
    variant and the adapters it wrote (never ones that were there before), so no half-written variant remains."""
    out = Path(out_dir)
    existed = out.exists()
    targets = ([adapter_dest(adapters_out, s, p, adapter_version) for s, p in (adapters or {}).items()]
               if adapters_out else [])
    pre = {t for t in targets if t.exists()}
    try:
        return build(base, out, config, callback, adapters=adapters, adapters_out=adapters_out,
                     adapter_version=adapter_version)
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        for t in targets:
            if t not in pre:
                shutil.rmtree(t, ignore_errors=True)
        raise


def variant_base_id(path: str | Path) -> str:
    return str(read_manifest(path).get("base_model") or Path(path).name)


def dir_size(path: str | Path) -> int:
    """Bytes on disk of an artefact (every regular file)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def calibration_texts(tokenizer: Any, subjects: tuple[str, ...], n: int, seed: int) -> tuple[list[dict[str, str]], str]:
    """`n` prompt/reference-answer pairs per subject from the corpus, and their SHA-256 (recorded as lineage)."""
    items = generate_corpus(n, seed=seed, subjects=subjects)
    rows = [{"prompt": build_prompt(tokenizer, it.subject, [{"role": "user", "content": it.question}]),
             "completion": it.answer} for it in items]
    return rows, hashlib.sha256(canonical_json(rows)).hexdigest()


def encode_pairs(tokenizer: Any, rows: list[dict[str, str]], max_length: int) -> list[tuple[list[int], int]]:
    """(token ids of prompt + completion + EOS, index where the completion starts), truncated to `max_length`."""
    out = []
    for r in rows:
        p = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (p + c)[:max_length]
        if len(p) < len(ids):
            out.append((ids, len(p)))
    return out


def collate(batch: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels); labels are -100 on the prompt and padding."""
    T = max(len(ids) for ids, _ in batch)
    ids_t = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), T, dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    for i, (ids, start) in enumerate(batch):
        ids_t[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels[i, start : len(ids)] = torch.tensor(ids[start:])
    return ids_t, mask, labels


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
