#!/usr/bin/env bash
# GPU smoke test for ONE GPU (more are used where noted). Run from anywhere; it cds to the repo.
#
#   SMOKE_MODEL=/models/Qwen2.5-0.5B-Instruct bash deploy/gpu-smoke.sh
#
# Parts:
#   0. preflight: nvidia-smi sees a GPU, torch.cuda works, deepspeed and vllm import, the model exists
#   1. learner in bf16 with DeepSpeed            pytest -m gpu tests/integration -k "learner or deepspeed"
#   2. NCCL weight transfer into a vLLM engine   with >= 2 GPUs: pytest -m gpu2 -k "nccl or weight" and a
#                                                1-step job with sync.backend=nccl (listed as skipped on 1 GPU)
#   3. one OnMC-PO segment on a small model      python jobs/onmcpo.py --config jobs/configs/gpu/smoke-1gpu.yaml
#   4. any other GPU tests                       pytest -m gpu tests/integration -k "not (...1 and 2...)"
# A part whose tests do not exist yet, or that needs hardware this machine lacks, is SKIPPED and
# listed as such: a skip is never reported as a pass. Exit status: 1 if any part failed,
# 2 if parts were skipped and SMOKE_STRICT=1, else 0.
#
# Environment: SMOKE_MODEL (HF model directory; default /models/Qwen2.5-0.5B-Instruct),
# SMOKE_RUN_DIR (default runs/gpu-smoke-<time>), PYTHON (default .venv/bin/python, else python3),
# SMOKE_STRICT (1 = skips fail the smoke).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${SMOKE_MODEL:-/models/Qwen2.5-0.5B-Instruct}
STAMP=$(date +%Y%m%d-%H%M%S)
RUN_DIR=${SMOKE_RUN_DIR:-runs/gpu-smoke-$STAMP}
CONFIG=jobs/configs/gpu/smoke-1gpu.yaml
STRICT=${SMOKE_STRICT:-0}
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi

PASSED=()
SKIPPED=()
FAILED=()
pass() { PASSED+=("$1"); echo "== PASS: $1"; }
skip() { SKIPPED+=("$1: $2"); echo "== SKIP: $1: $2"; }
fail() { FAILED+=("$1: $2"); echo "== FAIL: $1: $2" >&2; }

summary() {
  echo
  echo "== gpu-smoke summary (${#PASSED[@]} passed, ${#SKIPPED[@]} skipped, ${#FAILED[@]} failed)"
  local line
  for line in ${PASSED[@]+"${PASSED[@]}"}; do echo "   passed:  $line"; done
  for line in ${SKIPPED[@]+"${SKIPPED[@]}"}; do echo "   SKIPPED: $line"; done
  for line in ${FAILED[@]+"${FAILED[@]}"}; do echo "   FAILED:  $line"; done
  if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "== GPU SMOKE FAILED"
    exit 1
  fi
  if [ "${#SKIPPED[@]}" -gt 0 ]; then
    echo "== GPU smoke INCOMPLETE: the parts above marked SKIPPED did not run"
    [ "$STRICT" = 1 ] && exit 2
    exit 0
  fi
  echo "== GPU smoke passed (every part ran)"
  exit 0
}

# --- 0. preflight: without these nothing below can mean anything -------------------------------
echo "== preflight"
if ! command -v nvidia-smi >/dev/null 2>&1; then
  fail preflight "nvidia-smi not found: no NVIDIA driver on this machine"
  summary
fi
NUM_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if [ "$NUM_GPUS" -lt 1 ]; then
  fail preflight "nvidia-smi lists no GPU"
  summary
fi
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
if ! "$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (a CPU build of torch?)")
if not torch.cuda.is_bf16_supported():
    sys.exit(f"{torch.cuda.get_device_name(0)} does not support bfloat16")
import deepspeed  # noqa: F401
import vllm  # noqa: F401
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), deepspeed {deepspeed.__version__}, "
      f"vllm {vllm.__version__}, {torch.cuda.device_count()} GPU(s)")
EOF
then
  fail preflight "the GPU stack is not importable with $PY (pip install -e '.[gpu]' and deepspeed --no-build-isolation)"
  summary
fi
if [ ! -f "$MODEL/config.json" ]; then
  fail preflight "no HF model at $MODEL (set SMOKE_MODEL to a local model directory)"
  summary
fi
pass "preflight ($NUM_GPUS GPU(s), model $MODEL)"

# --- GPU tests: run the ones that exist, say which do not -----------------------------------
GPU_TESTS_PRESENT=0
if [ -d tests/integration ] && compgen -G "tests/integration/test_*.py" >/dev/null; then
  GPU_TESTS_PRESENT=1
fi

# run_gpu_tests NAME MARKERS FILTER: pytest exit 0 = pass, unless a test was skipped (then skip);
# 5 = nothing collected = skip; else fail. A skipped test is never counted as a pass.
run_gpu_tests() {
  local name=$1 markers=$2 filter=$3 rc log
  if [ "$GPU_TESTS_PRESENT" = 0 ]; then
    skip "$name" "tests/integration has no test files yet"
    return 0
  fi
  echo "== $name: pytest -m \"$markers\" tests/integration -k \"$filter\""
  log=$(mktemp)
  set +e
  "$PY" -m pytest -q -ra -m "$markers" -k "$filter" tests/integration 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" = 0 ] && grep -qE "[0-9]+ skipped" "$log"; then rc=skipped; fi
  rm -f "$log"
  case $rc in
    0) pass "$name" ;;
    5) skip "$name" "no GPU test matches -m \"$markers\" -k \"$filter\" yet" ;;
    skipped) skip "$name" "pytest skipped some of its tests (see -ra above)" ;;
    *) fail "$name" "pytest exited with $rc" ;;
  esac
}

# --- 1. learner in bf16 with DeepSpeed ------------------------------------------------------
run_gpu_tests "1 learner bf16 + DeepSpeed (tests)" "gpu and not gpu2" "learner or deepspeed"

# --- 2. NCCL weight transfer into a vLLM engine ----------------------------------------------
if [ "$NUM_GPUS" -ge 2 ]; then
  run_gpu_tests "2 NCCL weight transfer (tests)" "gpu2" "nccl or weight"
  echo "== 2 NCCL weight transfer (job): learner and engine on separate GPUs, sync.backend=nccl"
  set +e
  "$PY" jobs/onmcpo.py --config "$CONFIG" --run-dir "$RUN_DIR-nccl" "model.path=$MODEL" \
    cluster.colocate=false cluster.num_gpus=2 sync.backend=nccl loop.total_steps=1
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then pass "2 NCCL weight transfer (job)"; else fail "2 NCCL weight transfer (job)" "exit $rc"; fi
else
  skip "2 NCCL weight transfer (tests)" "needs 2 GPUs: NCCL cannot connect a learner rank and an engine on the same GPU"
  skip "2 NCCL weight transfer (job)" "needs 2 GPUs: NCCL cannot connect a learner rank and an engine on the same GPU"
fi

# --- 3. one OnMC-PO segment on the small model (colocated, one GPU) -------------------------
echo "== 3 OnMC-PO segment: $PY jobs/onmcpo.py --config $CONFIG --run-dir $RUN_DIR model.path=$MODEL"
set +e
"$PY" jobs/onmcpo.py --config "$CONFIG" --run-dir "$RUN_DIR" "model.path=$MODEL"
rc=$?
set -e
if [ "$rc" != 0 ]; then
  fail "3 OnMC-PO segment" "jobs/onmcpo.py exited with $rc"
else
  # The exit status alone is not enough: the run directory must hold what a segment writes.
  missing=()
  [ -s "$RUN_DIR/config.yaml" ] || missing+=("config.yaml")
  [ -s "$RUN_DIR/metrics.jsonl" ] || missing+=("metrics.jsonl")
  compgen -G "$RUN_DIR/seg_*/rollouts.parquet" >/dev/null || missing+=("seg_*/rollouts.parquet")
  [ -s "$RUN_DIR/LATEST" ] || missing+=("LATEST")
  if [ "${#missing[@]}" -eq 0 ]; then
    pass "3 OnMC-PO segment ($RUN_DIR)"
  else
    fail "3 OnMC-PO segment" "exit 0 but $RUN_DIR lacks: ${missing[*]}"
  fi
fi

# --- 4. every other GPU test ----------------------------------------------------------------
run_gpu_tests "4 other GPU tests" "gpu and not gpu2" "not (learner or deepspeed or nccl or weight)"

summary
