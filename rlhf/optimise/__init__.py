"""Deployment optimisation: quantise, prune or distil a version into a smaller, faster base variant.

`load_optimised(path)` is the one hook the loaders call (`rlhf.models.load_base`): it rebuilds a
variant whose weights are not in the plain Hugging Face layout (int8 quantised, structurally pruned)
and returns None for everything else (plain bases, distilled students, unstructured-pruned bases).
Details and measurements: docs/optimise.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf.optimise.common import OptimiseError


def load_optimised(path: str | Path, device: Any = "cpu") -> Any | None:
    """The model of a variant artefact that needs its own loader, else None."""
    from rlhf.manifest import MANIFEST, read_manifest

    path = Path(path)
    if not (path / MANIFEST).is_file():
        return None
    info = read_manifest(path).get("optimise") or {}
    if info.get("method") == "quantise":
        from rlhf.optimise.quantise import load_quantised

        return load_quantised(path, device=device)
    if info.get("method") == "prune" and info.get("structured"):
        from rlhf.optimise.prune import load_structured

        return load_structured(path, device=device)
    return None


__all__ = ["OptimiseError", "load_optimised"]
