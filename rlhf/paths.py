"""Where artefacts live: `TUTOR_VAR_DIR`, default `<repo>/var` (see docs/architecture.md)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def var_dir() -> Path:
    """The var directory (read on every call so tests can point it elsewhere)."""
    env = os.environ.get("TUTOR_VAR_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "var"


def models_dir() -> Path:
    return var_dir() / "models"


def base_models_dir() -> Path:
    return models_dir() / "base"


def adapters_dir(subject: str | None = None) -> Path:
    root = models_dir() / "adapters"
    return root / subject if subject else root


def reward_models_dir() -> Path:
    return models_dir() / "reward"


def datasets_dir() -> Path:
    return var_dir() / "datasets"
