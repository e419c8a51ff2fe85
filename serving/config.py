"""Endpoint settings: command-line flags over environment variables over defaults."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")


def var_dir() -> Path:
    env = os.environ.get("TUTOR_VAR_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "var"


def default_port() -> int:
    return int(os.environ.get("SAGEMAKER_BIND_TO_PORT") or os.environ.get("TUTOR_ENDPOINT_PORT") or 8080)


def default_model_locations() -> tuple[str, Path]:
    """(base model, adapters dir): the SageMaker layout when /opt/ml/model holds one, else var/."""
    sm = Path(os.environ.get("SM_MODEL_DIR", SAGEMAKER_MODEL_DIR))
    if (sm / "base").is_dir():
        return str(sm / "base"), sm / "adapters"
    return os.environ.get("TUTOR_BASE_MODEL", "demo"), var_dir() / "models" / "adapters"


@dataclass
class ServerConfig:
    base_model: str = "demo"
    adapters_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_size: int = 64  # sequences decoding together
    max_queue: int = 256  # requests waiting to join the batch before 429
    max_prefill_tokens: int = 8192  # prompt tokens prefilled in one forward pass
    max_new_tokens_limit: int = 512
    default_max_new_tokens: int = 128
    default_temperature: float = 0.7
    max_prompt_tokens: int = 1024
    max_n: int = 16
    max_body_bytes: int = 1 << 20
    threads: int | None = None  # torch intra-op threads (default: 1 for small CPU models, see server.py)
    switch_interval_ms: float = 5.0  # sys.setswitchinterval (Python default; 1 ms measured no better)
    state_file: Path | None = None  # default: <adapters_dir>/.endpoint_state.json
    device: str | None = "cpu"  # None: CUDA when available (rlhf.models.default_device)
    kv_budget_mb: float | None = None  # KV cache of running + waiting sequences; beyond it 429 (None: no limit)


def default_kv_budget_mb() -> float | None:
    """`TUTOR_ENDPOINT_KV_BUDGET_MB`: MiB of KV cache the endpoint may commit (unset or 0: no limit)."""
    raw = os.environ.get("TUTOR_ENDPOINT_KV_BUDGET_MB", "").strip()
    if not raw:
        return None
    value = float(raw)
    if value < 0:
        raise ValueError(f"TUTOR_ENDPOINT_KV_BUDGET_MB must be >= 0 (got {raw})")
    return value or None


def read_admin_token() -> str | None:
    """The admin token a client on this machine should use: the env var, else the endpoint's file."""
    env = os.environ.get("TUTOR_ENDPOINT_ADMIN_TOKEN")
    if env:
        return env.strip()
    path = var_dir() / "endpoint_admin_token"
    return path.read_text().strip() if path.is_file() else None


def admin_token() -> str:
    """`TUTOR_ENDPOINT_ADMIN_TOKEN`, else `<var>/endpoint_admin_token` (created once, mode 0600)."""
    env = os.environ.get("TUTOR_ENDPOINT_ADMIN_TOKEN")
    if env:
        return env.strip()
    path = var_dir() / "endpoint_admin_token"
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
