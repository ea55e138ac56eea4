#!/usr/bin/env bash
# `charter eval labeller` on comparisons of realistic length, this build
# against another charter binary, side by side in one run at each binary's
# default settings, alternating ROUNDS (2) times: wall time, peak RSS and
# the report's alignment and position bias.
#
# The comparisons come from the example build's own tables, so anyone who
# ran `scripts/run` can rebuild them: for each prompt, its first answer
# (`responses.parquet`, up to 128 tokens) against one of its four
# revisions (`revisions-K.parquet`), about 220 tokens of conversation and
# answers per comparison; N (24) of them, the revision shown first in every
# other row. `preferred` names the revision. That is the constitution's
# intent, not a person's judgement: the alignment figure here is a check
# that both binaries agree, not a measure of the labeller.
#
# Usage: benches/labeller_realistic.sh OLD_CHARTER [OLD_MODEL_DIR]
#   OLD_MODEL_DIR: the default model imported by OLD_CHARTER, for a binary
#   whose graph differs from this one's (default out/smollm2).
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: benches/labeller_realistic.sh OLD_CHARTER [OLD_MODEL_DIR]}
old_model=${2:-out/smollm2}
new=${CARGO_TARGET_DIR:-target}/release/charter
cargo build --locked --release --quiet
py=${CHARTER_HOME:-$HOME/.cache/charter}/venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" - out/cai "$work/comparisons.jsonl" "${N:-24}" <<'PY'
import json, sys
import polars as pl
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
first = pl.read_parquet(f"{src}/responses.parquet").select("id", "prompt", "text")
rows = []
for k in range(1, 5):
    rev = pl.read_parquet(f"{src}/revisions-{k}.parquet").select("response_id", "text")
    joined = first.join(rev, left_on="id", right_on="response_id", suffix="_rev")
    rows += [(r["prompt"], r["text"], r["text_rev"]) for r in joined.sort("id").iter_rows(named=True)]
with open(dst, "w") as f:
    for i, (prompt, answer, revision) in enumerate(rows[:n]):
        a, b, preferred = (revision, answer, "A") if i % 2 else (answer, revision, "B")
        f.write(json.dumps({"conversation": f"User: {prompt}", "response_a": a,
                            "response_b": b, "preferred": preferred}) + "\n")
print(f"{min(n, len(rows))} comparisons, "
      f"{sum(len(p) + len(a) + len(r) for p, a, r in rows[:n]) / min(n, len(rows)):.0f} characters each")
PY
for _ in $(seq "${ROUNDS:-2}"); do
    for which in old new; do
        bin=$new model=out/smollm2
        [ "$which" = old ] && bin=$old model=$old_model
        /usr/bin/time -f "eval-labeller-$which %e s %M KB" "$bin" -q eval labeller \
            --comparisons "$work/comparisons.jsonl" -m "$model" \
            -c constitutions/harmless.toml -o "$work/$which.json" 2>&1 | tail -1
    done
done
"$py" - "$work" <<'PY'
import json, sys
for which in ("old", "new"):
    r = json.load(open(f"{sys.argv[1]}/{which}.json"))
    print(f"{which}: {r['comparisons']} comparisons, alignment {r['alignment']:.3f}, "
          f"position bias {r['position_bias']:.3f}, mean p(first) {r['mean_p_first']:.6f}")
PY
