#!/usr/bin/env bash
# charter's generation engine and llama-cpp-python on the same GGUF, the same
# rendered prompts and the same number of new tokens, in one run.
#   benches/generate_vs_llama_cpp.sh [PROMPTS] [MAX_NEW] [THREADS]
# Needs scripts/setup, and llama-cpp-python in $CHARTER_HOME/bench-venv
# (python3 -m venv "$CHARTER_HOME/bench-venv" && "$CHARTER_HOME/bench-venv/bin/pip" install llama-cpp-python;
# it compiles llama.cpp, ~15 minutes on 2 cores, once).
set -euo pipefail
cd "$(dirname "$0")/.."
CHARTER_HOME=${CHARTER_HOME:-$HOME/.cache/charter}
PROMPTS=${1:-64}
MAX_NEW=${2:-32}
THREADS=${3:-1}
ids=$(mktemp)
trap 'rm -f "$ids"' EXIT

cargo bench --bench generate -- --prompts "$PROMPTS" --dump-prompts "$ids" --dump-only >/dev/null
echo "## llama-cpp-python (peer)"
"$CHARTER_HOME/bench-venv/bin/python" benches/peer_llama_cpp.py \
  "$CHARTER_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$ids" --max-new "$MAX_NEW" --threads "$THREADS"
echo "## charter"
cargo bench --bench generate -- --prompts "$PROMPTS" --max-new "$MAX_NEW" --threads "$THREADS" ${FORMATS:+--formats "$FORMATS"} ${BATCHES:+--batches "$BATCHES"}
