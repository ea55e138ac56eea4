#!/usr/bin/env bash
# Labelling throughput of this build against another charter binary, side
# by side in one run: `charter label` on the CAI build's pairs and `charter
# target` on the classifier build's augmented queries, at default settings,
# the two binaries alternating ROUNDS (2) times; then the largest
# difference between their `p_a` / `p_harmful` values.
#
# Usage: benches/label_vs_old.sh OLD_CHARTER [OLD_MODEL_DIR]
#   (for example a release binary built from an earlier commit;
#   OLD_MODEL_DIR: the default model imported by it, for a binary whose
#   graph differs from this one's; default out/smollm2). A binary without
#   `target` runs `label` only. Needs
#   out/cai/pairs.parquet (scripts/run) and out/classifiers/queries.parquet
#   (charter build examples/classifiers.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: benches/label_vs_old.sh OLD_CHARTER [OLD_MODEL_DIR]}
old_model=${2:-out/smollm2}
new=${CARGO_TARGET_DIR:-target}/release/charter
cargo build --locked --release --quiet
py=${CHARTER_HOME:-$HOME/.cache/charter}/venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
targets=true
"$old" target --help >/dev/null 2>&1 || targets=false
run() { # which binary, model, name, command…
    local bin=$1 model=$2 name=$3
    shift 3
    rm -f "$work/$name.parquet"
    /usr/bin/time -f "$name %e s %M KB" "$bin" -q "$@" -o "$work/$name.parquet" -m "$model" 2>&1 | tail -1
}
for _ in $(seq "${ROUNDS:-2}"); do
    for which in old new; do
        bin=$new model=out/smollm2
        [ "$which" = old ] && bin=$old model=$old_model
        run "$bin" "$model" "label-$which" label -c constitutions/harmless.toml -i out/cai/pairs.parquet
        $targets || continue
        run "$bin" "$model" "target-$which" target -c constitutions/classifier-harm.toml -i out/classifiers/queries.parquet
    done
done
"$py" - "$work" <<'PY'
import os, sys
import polars as pl
w = sys.argv[1]
for name, col in [("label", "p_a"), ("target", "p_harmful")]:
    if not os.path.exists(f"{w}/{name}-old.parquet"):
        continue
    a = pl.read_parquet(f"{w}/{name}-old.parquet")[col]
    b = pl.read_parquet(f"{w}/{name}-new.parquet")[col]
    print(f"{name}: {len(a)} rows, largest |old - new| {col} = {(a - b).abs().max():.3g}")
PY
