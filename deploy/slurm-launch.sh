#!/usr/bin/env bash
# Slurm: start a Ray cluster inside one allocation (head on the first node, a worker on each other
# node), wait until every node and GPU has joined, then run one pipeline job against it.
#
#   sbatch deploy/slurm-launch.sh                                  # onmcpo-8b on 2 nodes x 8 GPUs
#   APO_CONFIG=jobs/configs/gpu/apo-8b-dpo.yaml APO_JOB=apo sbatch --nodes=1 deploy/slurm-launch.sh
#   sbatch deploy/slurm-launch.sh learner.lr=1e-6                  # extra args = config overrides
#
# Submit from the repository root on a filesystem every node mounts; the virtualenv
# (APO_VENV, default .venv of `make venv`, built with the `gpu` extra on a GPU node) must be there too.
# Runs go to APO_RUN_ROOT (default <repo>/runs), which must also be shared: checkpoints are written
# by the learner ranks and read back by whichever node resumes.
#
# Token auth: a fresh token per allocation, exported as RAY_AUTH_TOKEN with RAY_AUTH_MODE=token;
# srun passes the environment to every step, so head, workers and the driver share it.
# The dashboard stays on 127.0.0.1 of the head node: `ssh -L 8265:127.0.0.1:8265 <head-node>`.
# Ray gets --cpus-per-task logical CPUs per node: at least 8 GPU bundles x cluster.cpus_per_actor (8 x 8).
#SBATCH --job-name=apo-onmcpo-8b
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-task=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

REPO=${APO_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$REPO"
VENV=${APO_VENV:-$REPO/.venv}
JOB=${APO_JOB:-onmcpo}
CONFIG=${APO_CONFIG:-jobs/configs/gpu/onmcpo-8b.yaml}
RUN_ROOT=${APO_RUN_ROOT:-$REPO/runs}
RUN_DIR=${APO_RUN_DIR:-$RUN_ROOT/$(basename "$CONFIG" .yaml)}
RAY_PORT=${APO_RAY_PORT:-6379}
DASHBOARD_PORT=${APO_DASHBOARD_PORT:-8265}
WAIT_S=${APO_RAY_WAIT_S:-600}
GPUS_PER_NODE=${SLURM_GPUS_PER_TASK:-8}
CPUS_PER_NODE=${SLURM_CPUS_PER_TASK:-64}

die() { echo "slurm-launch: $*" >&2; exit 1; }

[ -f "jobs/$JOB.py" ] || die "no jobs/$JOB.py (APO_JOB=$JOB)"
[ -f "$CONFIG" ] || die "no config $CONFIG (APO_CONFIG)"
[ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV (APO_VENV); build it with the gpu extra"
# shellcheck disable=SC1091
source "$VENV/bin/activate"

# Fail in a second on a bad config, before any node starts Ray.
python - "$JOB" "$CONFIG" "$@" <<'EOF'
import sys
from apo_pipeline.config import JOB_CONFIGS, ConfigError, load_config
job, config, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    load_config(JOB_CONFIGS[job], config, overrides)
except ConfigError as exc:
    sys.exit(f"slurm-launch: {exc}")
EOF

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
NUM_NODES=${#NODES[@]}
HEAD=${NODES[0]}

# The run directory must be the same directory on every node.
mkdir -p "$RUN_DIR"
srun --nodes="$NUM_NODES" --ntasks="$NUM_NODES" --ntasks-per-node=1 test -d "$RUN_DIR" \
  || die "$RUN_DIR is not visible on every node: set APO_RUN_ROOT to a shared filesystem"

HEAD_IP=$(srun --nodes=1 --ntasks=1 -w "$HEAD" hostname --ip-address | awk '{print $1}')
ADDRESS="$HEAD_IP:$RAY_PORT"
RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
export RAY_ADDRESS="$ADDRESS"
echo "slurm-launch: $NUM_NODES node(s), head $HEAD ($ADDRESS), run dir $RUN_DIR"

STEP_PIDS=()
cleanup() {
  local pid
  for pid in ${STEP_PIDS[@]+"${STEP_PIDS[@]}"}; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

srun --nodes=1 --ntasks=1 -w "$HEAD" \
  ray start --head --node-ip-address="$HEAD_IP" --port="$RAY_PORT" \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" \
  --disable-usage-stats --block &
STEP_PIDS+=("$!")

# Wait until the head answers, then start the workers.
wait_for() {
  local nodes=$1 gpus=$2 deadline=$((SECONDS + WAIT_S))
  until python - "$nodes" "$gpus" <<'EOF' 2>/dev/null
import sys
import ray
ray.init(logging_level="ERROR", log_to_driver=False)
alive = sum(1 for n in ray.nodes() if n["Alive"])
gpus = ray.cluster_resources().get("GPU", 0)
sys.exit(0 if alive >= int(sys.argv[1]) and gpus >= int(sys.argv[2]) else 1)
EOF
  do
    [ "$SECONDS" -lt "$deadline" ] || die "Ray cluster not up after ${WAIT_S}s (want $nodes nodes, $gpus GPUs)"
    sleep 5
  done
}
wait_for 1 "$GPUS_PER_NODE"

for ((i = 1; i < NUM_NODES; i++)); do
  srun --nodes=1 --ntasks=1 -w "${NODES[$i]}" \
    ray start --address="$ADDRESS" --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" \
    --disable-usage-stats --block &
  STEP_PIDS+=("$!")
done
wait_for "$NUM_NODES" $((NUM_NODES * GPUS_PER_NODE))
echo "slurm-launch: Ray is up: $NUM_NODES node(s), $((NUM_NODES * GPUS_PER_NODE)) GPU(s)"

# The driver runs here, on the head node, and joins the cluster through RAY_ADDRESS
# (apo_pipeline/launch.py). Re-submitting the same command resumes from $RUN_DIR/LATEST.
set +e
python "jobs/$JOB.py" --config "$CONFIG" --run-dir "$RUN_DIR" "$@"
rc=$?
set -e
echo "slurm-launch: jobs/$JOB.py exited with $rc"
exit "$rc"
