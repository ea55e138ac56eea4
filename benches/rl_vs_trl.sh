#!/usr/bin/env bash
# Online RL, side by side in one run: `charter train rl` against TRL's
# RLOOTrainer on CPU (benches/peer_trl_rloo.py), on one model directory,
# the same prompts and shapes (8 prompts x 4 answers x at most 64 tokens per
# iteration, 8 optimizer steps of 4 answers, KL weight 0.05, clip 0.2) and
# the same rule reward (`contains:the`). Prints each side's seconds per
# iteration after the first (which also loads and warms up) and the ratio.
#
# Usage: benches/rl_vs_trl.sh [MODEL_DIR] [PROMPTS]   (default out/smollm2
# and out/cai/prompts.parquet, which scripts/run and the example build
# write). ITERATIONS overrides 3.
#
# PyTorch, transformers and TRL are installed once into
# $CHARTER_HOME/bench-torch (about 5 GB: PyPI's torch wheel pulls its CUDA
# libraries even for CPU use).
set -euo pipefail
cd "$(dirname "$0")/.."
CHARTER_HOME=${CHARTER_HOME:-$HOME/.cache/charter}
model=${1:-out/smollm2}
prompts=${2:-out/cai/prompts.parquet}
iterations=${ITERATIONS:-3}
for need in "$model/model.safetensors" "$prompts"; do
    [ -e "$need" ] || { echo "$need: missing (run scripts/run and the example build, or pass paths)" >&2; exit 1; }
done
venv=$CHARTER_HOME/bench-torch
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, transformers, trl' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch==2.15.0 transformers==5.23.0 safetensors==0.8.0 trl==1.16.0
fi
cargo build --locked --quiet --release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/time -f "%e s wall, %M KB peak" "${CARGO_TARGET_DIR:-target}/release/charter" train rl -m "$model" -i "$prompts" \
    -o "$work/charter" --reward contains:the --iterations "$iterations" 2>&1 | grep -v '^\s*$'
"$venv/bin/python" benches/peer_trl_rloo.py --model "$model" --prompts "$prompts" \
    --iterations "$iterations" --contains the --threads "$(nproc)" 2>/dev/null | tee "$work/peer.json"
"$venv/bin/python" - "$work/charter/iterations.parquet" "$work/peer.json" <<'PY'
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1]).to_pylist()
phases = ("export_s", "rollout_s", "reward_s", "logp_s", "update_s")
ours = [sum(r[p] for p in phases) for r in t]
peer = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
a = sum(ours[1:]) / max(1, len(ours) - 1)
b = peer["steady_iteration_s"]
print("charter per iteration:", ", ".join(f"{s:.1f} s" for s in ours),
      "| phases of the last:", ", ".join(f"{p[:-2]} {t[-1][p]:.1f}" for p in phases))
print("TRL per iteration:", ", ".join(f"{s:.1f} s" for s in peer["iteration_s"]))
print(f"steady iteration: charter {a:.1f} s, TRL {b:.1f} s, ratio (TRL / charter) {b / a:.2f}")
print(f"mean reward: charter {sum(r['reward'] for r in t) / len(t):.3f}, TRL {peer['mean_reward']:.3f}")
PY
