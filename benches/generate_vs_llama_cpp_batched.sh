#!/usr/bin/env bash
# charter at its default settings against llama.cpp's batched decoding and
# llama-cpp-python one stream at a time, on the same GGUF, the same rendered
# prompts and the same number of new tokens, in one run.
#   benches/generate_vs_llama_cpp_batched.sh [PROMPTS] [MAX_NEW] [THREADS]
# THREADS defaults to every core (charter's default); the peers get the same.
# Needs scripts/setup and llama-cpp-python in $CHARTER_HOME/bench-venv (see
# benches/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
CHARTER_HOME=${CHARTER_HOME:-$HOME/.cache/charter}
PROMPTS=${1:-32}
MAX_NEW=${2:-64}
THREADS=${3:-$(nproc)}
GGUF="$CHARTER_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf"
PY="$CHARTER_HOME/bench-venv/bin/python"
ids=$(mktemp)
trap 'rm -f "$ids"' EXIT

cargo bench --bench generate -- --prompts "$PROMPTS" --dump-prompts "$ids" --dump-only >/dev/null
echo "## llama.cpp batched decoding (peer)"
"$PY" benches/peer_llama_cpp_batched.py "$GGUF" "$ids" --max-new "$MAX_NEW" --threads "$THREADS" --slots "${SLOTS:-8,16,32,64}" 2>/dev/null
echo "## llama-cpp-python, one stream (peer)"
"$PY" benches/peer_llama_cpp.py "$GGUF" "$ids" --max-new "$MAX_NEW" --threads "$THREADS" 2>/dev/null
echo "## charter (int8; batch 16 is the default)"
cargo bench --bench generate -- --prompts "$PROMPTS" --max-new "$MAX_NEW" --threads "$THREADS" --formats int8 --batches "${BATCHES:-16,32,64}"
