#!/usr/bin/env bash
# Everything issue 17 wants checked on a CUDA GPU, in one command (not run where it was written: no GPU there).
#
#   benchmarks/gpu/check.sh            # from the repository root, with .venv installed
#
# 1. correctness: the endpoint's runner vs `generate` at bloom-560m's shape, fp32 and bf16 on CUDA;
# 2. the serving benchmark at that shape on CUDA (1, 8, 32 clients over 4 adapters, vs naive generate);
# 3. QLoRA (4-bit base, bitsandbytes) SFT and then PPO steps on that base;
# 4. with more than one GPU: the same SFT through Accelerate's multi-GPU config.
# Output goes to var/gpu-check/*.log and a summary at the end; any failing step makes the exit status non-zero.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export TUTOR_VAR_DIR=${TUTOR_VAR_DIR:-$PWD/var/gpu-check} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$TUTOR_VAR_DIR"
LOG=$TUTOR_VAR_DIR
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA GPU visible: nothing to check"; exit 2; }
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
nvidia-smi -L || true
status=0
run() {  # run NAME CMD...: log to $LOG/NAME.log, remember failures
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  if "$@" >"$LOG/$name.log" 2>&1; then echo "    ok ($((SECONDS - t0)) s)"; else echo "    FAILED ($((SECONDS - t0)) s), see $LOG/$name.log"; status=1; fi
  tail -n 12 "$LOG/$name.log" | sed 's/^/    /'
}

BASE=$($PY - <<'PY'
from rlhf.demo_model import DemoRecipe, build_demo_model
from rlhf.paths import var_dir
from rlhf.shaped_base import ensure_shaped_base
from tests.serving.test_engine_scale import SLOW_SHAPE
print(ensure_shaped_base(SLOW_SHAPE, build_demo_model(DemoRecipe.tiny()), var_dir() / "models" / "base"))
PY
)
echo "base (bloom-560m shape, random weights): $BASE"

run correctness $PY benchmarks/gpu/correctness.py --device cuda
run serving $PY benchmarks/serving.py --base-model bloom-560m --new-tokens 64 --requests-per-client 2 \
  --server-args "--device cuda" --naive-device cuda
$PY -c "import bitsandbytes" 2>/dev/null || echo "bitsandbytes is not installed: pip install 'bitsandbytes>=0.45' for the QLoRA steps"
Q=$TUTOR_VAR_DIR/qlora
rm -rf "$Q"
run qlora-sft $PY -m rlhf sft --subject history --method qlora --base "$BASE" --steps 5 --out "$Q/history/v1"
run qlora-ppo $PY -m rlhf ppo --subject history --base "$BASE" --adapter "$Q/history/v1" --reward answer-key \
  --steps 2 --prompts 16 --eval 0 --out "$Q/history/v2"
if [ "$NGPU" -gt 1 ]; then
  run multi-gpu-sft $PY -m accelerate.commands.launch --config_file docs/accelerate/multi-gpu.yaml --num_processes "$NGPU" \
    -m rlhf sft --subject history --base "$BASE" --steps 5 --out "$TUTOR_VAR_DIR/multi/history/v1"
else
  echo "=== multi-gpu: skipped (one GPU)"
fi
echo "gpu check: $([ $status -eq 0 ] && echo all passed || echo FAILURES above)"
exit $status
