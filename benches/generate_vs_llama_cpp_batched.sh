#!/usr/bin/env bash
# charter at its default settings against llama.cpp's batched decoding,
# llama-cpp-python one stream at a time and onnxruntime-genai's batching, on
# the same weights, the same rendered prompts and the same number of new
# tokens, in one run.
#   benches/generate_vs_llama_cpp_batched.sh [PROMPTS] [MAX_NEW] [THREADS]
# THREADS defaults to every core (charter's default); the peers get the same.
# Needs scripts/setup, llama-cpp-python in $CHARTER_HOME/bench-venv and
# onnxruntime-genai beside torch and transformers in $GENAI_PY's environment
# (default $CHARTER_HOME/bench-torch; see benches/README.md). MODEL_DIR is a
# charter import of the GGUF (default out/smollm2, from scripts/run): the
# onnxruntime-genai builder reads its f32 safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
CHARTER_HOME=${CHARTER_HOME:-$HOME/.cache/charter}
PROMPTS=${1:-32}
MAX_NEW=${2:-64}
THREADS=${3:-$(nproc)}
GGUF="$CHARTER_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf"
PY="$CHARTER_HOME/bench-venv/bin/python"
GENAI_PY=${GENAI_PY:-$CHARTER_HOME/bench-torch/bin/python}
MODEL_DIR=${MODEL_DIR:-out/smollm2}
ids=$(mktemp)
trap 'rm -f "$ids"' EXIT

cargo bench --bench generate -- --prompts "$PROMPTS" --dump-prompts "$ids" --dump-only >/dev/null
echo "## llama.cpp batched decoding (peer)"
"$PY" benches/peer_llama_cpp_batched.py "$GGUF" "$ids" --max-new "$MAX_NEW" --threads "$THREADS" --slots "${SLOTS:-8,16,32,64}" 2>/dev/null
echo "## llama-cpp-python, one stream (peer)"
"$PY" benches/peer_llama_cpp.py "$GGUF" "$ids" --max-new "$MAX_NEW" --threads "$THREADS" 2>/dev/null
echo "## onnxruntime-genai (peer; models from its builder, cached in $CHARTER_HOME/bench)"
"$GENAI_PY" benches/peer_ort_genai.py "$MODEL_DIR" "$ids" --cache "$CHARTER_HOME/bench" --max-new "$MAX_NEW" --threads "$THREADS" --precisions "${GENAI_PRECISIONS:-int4,int8,fp32}" --batches "${GENAI_BATCHES:-8,16,32,64}" 2>/dev/null
echo "## charter (int8 and batch 32 are the defaults)"
cargo bench --bench generate -- --prompts "$PROMPTS" --max-new "$MAX_NEW" --threads "$THREADS" --formats "${FORMATS:-int8}" --batches "${BATCHES:-16,32,64}"
