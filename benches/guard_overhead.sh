#!/usr/bin/env bash
# Guarded against unguarded generation on the default model, side by side in
# one run: `charter respond` on the same queries without guards, with the
# output guard, with both guards, with the output probe (a linear probe on
# the policy's own states) and with the input guard and the probe,
# alternating, ROUNDS times each; then how fast each guard scores a table
# (`charter classify`).
#
# Usage: benches/guard_overhead.sh [DIR]   (default out/classifiers, which
# `charter build examples/classifiers.toml` writes: its queries,
# input-classifier, output-classifier and output-probe; the guards are
# calibrated here at 5% on the build's harmless rows if they are not yet). N (16) queries,
# ROUNDS (3), EVERY (8, `--guard-every`) and MAX_NEW (48) override the
# defaults. Prints one JSON line per run and the median overhead per
# generated token.
set -euo pipefail
cd "$(dirname "$0")/.."
charter=${CARGO_TARGET_DIR:-target}/release/charter
dir=${1:-out/classifiers}
model=out/smollm2
for need in "$model/model.safetensors" "$dir/queries.parquet" "$dir/input-classifier" "$dir/output-classifier" "$dir/output-probe"; do
    [ -e "$need" ] || {
        echo "$need is missing: run scripts/run, then charter build examples/classifiers.toml" >&2
        exit 1
    }
done
cargo build --locked --release --quiet
for clf in input-classifier output-classifier output-probe; do
    table=$dir/answer-targets.parquet
    [ "$clf" = input-classifier ] && table=$dir/targets.parquet
    [ -f "$dir/$clf/calibration.json" ] || "$charter" classify calibrate -m "$dir/$clf" -i "$table" --target-fpr 0.05 >/dev/null
done

n=${N:-16}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log=$work/log
respond() { # name, extra flags…
    local name=$1
    shift
    rm -f "$work/$name.parquet"
    "$charter" -q respond -m "$model" -i "$dir/queries.parquet" -o "$work/$name.parquet" \
        --limit "$n" --max-new-tokens "${MAX_NEW:-48}" --json "$@" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); r["run"]=sys.argv[1]; print(json.dumps(r))' "$name" |
        tee -a "$log"
}
every=(--guard-every "${EVERY:-8}")
for _ in $(seq "${ROUNDS:-3}"); do
    respond unguarded
    respond output-guard --guard "$dir/output-classifier" "${every[@]}"
    respond both-guards --guard "$dir/input-classifier,$dir/output-classifier" "${every[@]}"
    respond output-probe --guard "$dir/output-probe"
    respond input-guard-and-probe --guard "$dir/input-classifier,$dir/output-probe"
done
# Scoring throughput: the input guard on the queries, the output guard and
# the probe on the answers.
for clf in input-classifier output-classifier output-probe; do
    table=$work/unguarded.parquet
    [ "$clf" = input-classifier ] && table=$dir/queries.parquet
    start=$EPOCHREALTIME
    "$charter" -q classify -m "$dir/$clf" -i "$table" -o "$work/classified-$clf.parquet" >/dev/null
    end=$EPOCHREALTIME
    rows=$("$charter" inspect "$table" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"])')
    python3 -c 'import json,sys; print(json.dumps({"run": sys.argv[1], "rows": int(sys.argv[2]), "seconds": float(sys.argv[4]) - float(sys.argv[3])}))' \
        "classify-$clf" "$rows" "$start" "$end" | tee -a "$log"
done
python3 - "$log" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def per_token(name):
    return [r["seconds"] / max(r["generated_tokens"], 1) for r in runs if r["run"] == name]
base = statistics.median(per_token("unguarded"))
print(f"unguarded: {1 / base:.1f} generated tok/s (median)")
for name in ("output-guard", "both-guards", "output-probe", "input-guard-and-probe"):
    t = statistics.median(per_token(name))
    print(f"{name}: {1 / t:.1f} tok/s, overhead per generated token {100 * (t / base - 1):+.0f}%")
for r in runs:
    if r["run"].startswith("classify-"):
        print(f"{r['run']}: {r['rows'] / r['seconds']:.2f} rows/s ({r['rows']} rows, whole command)")
PY
