#!/usr/bin/env bash
# The training half of Constitutional AI on the tables `scripts/run` builds
# (examples/cai.toml → out/cai/): SL-CAI, the preference model, RL-CAI, and
# an evaluation of RL-CAI against the base model on held-out prompts.
#
#   scripts/run            # out/smollm2, out/prompts.parquet, out/cai/*
#   examples/train.sh      # out/sl-cai, out/pm, out/rl-cai, out/eval-*/report.json
#
# 1. SL-CAI: SFT of the base model on the final revisions, with the
#    original responses mixed in as helpfulness rows.
# 2. PM: a preference model on the AI-feedback labels (10% held out for the
#    accuracy and calibration report).
# 3. RL-CAI: DPO from the SL-CAI model on the same labels (soft targets).
# 4. Evaluation: base and RL-CAI answer prompts the build never saw (the
#    Do-Not-Answer "human_chatbox" file; the build's first prompts come from
#    another file), and the base model, as AI labeller, compares them under
#    the harmlessness and the helpfulness constitution.
#
# Every step is a plain charter command: a rerun of an evaluation is served
# from its tables, and an interrupted training run continues with --resume.
# The settings are small so the loop runs on a laptop CPU; raise --epochs,
# --limit and --max-len for a real run, and pass --device wgpu on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
CHARTER_HOME=${CHARTER_HOME:-$HOME/.cache/charter}
charter=${CHARTER:-${CARGO_TARGET_DIR:-target}/release/charter}
OUT=${OUT:-out}
CAI=$OUT/cai
TRAIN=(--max-len 256 --batch-size 4 --epochs 1)

"$charter" train sft -m "$OUT/smollm2" -i "$CAI/revisions-4.parquet" -i "$CAI/responses.parquet" \
    -o "$OUT/sl-cai" --lr 1e-5 "${TRAIN[@]}"
"$charter" train pm -m "$OUT/smollm2" -i "$CAI/labels.parquet" -o "$OUT/pm" --lr 1e-5 \
    --held-out 0.1 "${TRAIN[@]}"
"$charter" score -m "$OUT/pm" -i "$CAI/pairs.parquet" -o "$OUT/pairs-scored.parquet"
"$charter" train dpo -m "$OUT/sl-cai" -i "$CAI/labels.parquet" -o "$OUT/rl-cai" --lr 5e-6 \
    --beta 0.1 "${TRAIN[@]}"

"$charter" prompts import "$CHARTER_HOME/prompts/donotanswer/human_chatbox.jsonl" \
    -o "$OUT/held-out.parquet"
for axis in harmless helpful-honest; do
    "$charter" eval policy -a "$OUT/smollm2" -b "$OUT/rl-cai" -c "constitutions/$axis.toml" \
        -i "$OUT/held-out.parquet" -o "$OUT/eval-$axis" --limit 8 --max-new-tokens 128
done
