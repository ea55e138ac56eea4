#!/usr/bin/env bash
# Training-step throughput, side by side in one run: charter's burn trainer
# (`cargo bench -p charter-train --bench train_step`) against the same SFT
# and DPO steps in PyTorch on CPU (benches/peer_torch_train.py), on one model
# directory, shapes and token ids. Prints each step's tokens/s and the ratio
# charter / PyTorch of the mean.
#
# Usage: benches/train_vs_torch.sh [MODEL_DIR]   (default out/smollm2, which
# scripts/run writes). BATCH, SEQ, STEPS and LORA_RANK override 8, 256, 3
# and 0 (full fine-tuning); PyTorch always trains every weight.
#
# PyTorch and transformers are installed once into
# $CHARTER_HOME/bench-torch (about 5 GB: PyPI's torch wheel pulls its CUDA
# libraries even for CPU use).
set -euo pipefail
cd "$(dirname "$0")/.."
CHARTER_HOME=${CHARTER_HOME:-$HOME/.cache/charter}
model=${1:-out/smollm2}
[ -f "$model/model.safetensors" ] || {
    echo "$model: no model directory (run scripts/run, or pass one)" >&2
    exit 1
}
# `cargo bench` runs in the crate's directory.
model=$(realpath "$model")
venv=$CHARTER_HOME/bench-torch
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, transformers' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch==2.15.0 transformers==5.23.0 safetensors==0.8.0
fi
args=(--batch "${BATCH:-8}" --seq "${SEQ:-256}" --steps "${STEPS:-3}" --warmup 1)
log=$(mktemp)
cargo bench --locked --quiet -p charter-train --bench train_step -- \
    --model "$model" "${args[@]}" --lora-rank "${LORA_RANK:-0}" | tee "$log"
"$venv/bin/python" benches/peer_torch_train.py --model "$model" "${args[@]}" --threads "$(nproc)" | tee -a "$log"
python3 - "$log" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for objective in ("sft", "dpo"):
    ours = [r for r in runs if r["objective"] == objective and r["peer"].startswith("charter")]
    peer = [r for r in runs if r["objective"] == objective and r["peer"].startswith("pytorch")]
    if ours and peer:
        a, b = ours[0]["mean_tokens_per_s"], peer[0]["mean_tokens_per_s"]
        la, lb = ours[0]["losses"][0], peer[0]["losses"][0]
        print(f"{objective}: charter {a:.1f} tok/s, PyTorch {b:.1f} tok/s, ratio {a / b:.2f} "
              f"(first-step loss {la:.5f} vs {lb:.5f})")
PY
rm -f "$log"
