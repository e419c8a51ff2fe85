"""`python -m serving`: the model endpoint (SageMaker inference contract) on the demo model by default."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import uvicorn

from serving.config import ServerConfig, default_kv_budget_mb, default_model_locations, default_port


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def parse_args(argv: list[str] | None = None) -> tuple[ServerConfig, str, argparse.Namespace]:
    base_default, adapters_default = default_model_locations()
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="bind address (the container uses 0.0.0.0)")
    p.add_argument("--port", type=int, default=default_port(), help="default 8080 or $SAGEMAKER_BIND_TO_PORT")
    p.add_argument("--base-model", default=base_default, help="'demo' or a model directory")
    p.add_argument("--adapters-dir", type=Path, default=adapters_default,
                   help="<dir>/<subject>/v<N>/ adapters; the newest verified version of each is loaded")
    p.add_argument("--no-adapters", action="store_true",
                   help="start with no adapters and remember nothing (a child endpoint for another base)")
    p.add_argument("--state-file", type=Path, default=None,
                   help="where loaded versions and routing are remembered across restarts "
                        "(default <adapters-dir>/.endpoint_state.json)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--max-new-tokens-limit", type=int, default=512)
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (CUDA when available; bf16 there)")
    p.add_argument("--kv-budget-mb", type=float, default=default_kv_budget_mb(),
                   help="MiB of KV cache running and waiting sequences may reserve; beyond it new requests get "
                        "429 (default $TUTOR_ENDPOINT_KV_BUDGET_MB, unset: no limit)")
    p.add_argument("--switch-interval-ms", type=float, default=5.0,
                   help="Python's GIL switch interval (the decode thread and the event loop share the GIL)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--model-process", action="store_true", default=_env_flag("TUTOR_ENDPOINT_MODEL_PROCESS"),
                   help="serve HTTP from this process and run the model in a worker process of its own, over a "
                        "Unix socket (serving.front; default $TUTOR_ENDPOINT_MODEL_PROCESS)")
    p.add_argument("--uds", default=None, help="listen on this Unix socket instead of TCP (the model worker)")
    a = p.parse_args(argv)
    return ServerConfig(base_model=a.base_model, adapters_dir=None if a.no_adapters else a.adapters_dir, host=a.host, port=a.port,
                        max_batch_size=a.max_batch_size, max_queue=a.max_queue,
                        max_new_tokens_limit=a.max_new_tokens_limit, max_prompt_tokens=a.max_prompt_tokens,
                        threads=a.threads, switch_interval_ms=a.switch_interval_ms,
                        state_file=a.state_file, kv_budget_mb=a.kv_budget_mb or None,
                        device=None if a.device == "auto" else a.device), a.log_level, a


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    config, log_level, a = parse_args(argv)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.model_process and not a.uds:  # this process: HTTP only; the model runs in a supervised worker (serving.front)
        from serving.front import build_front

        uvicorn.run(build_front(argv), host=config.host, port=config.port, log_level=log_level, access_log=False,
                    timeout_graceful_shutdown=5)
        return
    # The decode thread and the event loop share the GIL (tunable for experiments; see docs/performance.md).
    sys.setswitchinterval(config.switch_interval_ms / 1000)
    from serving.server import build_app  # torch and the model: not in the front's process

    where = {"uds": a.uds} if a.uds else {"host": config.host, "port": config.port}
    uvicorn.run(build_app(config), **where, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
