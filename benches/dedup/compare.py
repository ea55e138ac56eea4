#!/usr/bin/env python3
"""Side-by-side dedup benchmark: ``charter prompts import`` vs datatrove's MinHash dedup.

Given a corpus made by ``make_corpus.py`` (``corpus.jsonl`` + ``truth.tsv`` in
one directory), this runs, one after the other in the same invocation:

1. ``charter prompts import corpus.jsonl -o charter.parquet --json``; the kept
   rows are the Parquet table's ``source_row`` values (1-based input lines);
2. ``datatrove_minhash.py corpus.jsonl`` (datatrove's 4-stage MinHash pipeline,
   2 workers by default); the kept rows are the lines it reports.

Each is timed by wall clock around the whole process, startup included, and
its CPU time (user + system, all descendant processes) is recorded too: on a
shared machine wall time is inflated by other load, CPU time much less. Then
it prints, per tool: rows, kept, wall seconds, rows/s, CPU seconds, the
charter/datatrove throughput ratio, and the quality against the planted ground
truth, followed by recall broken down by how the duplicate was made and by
its true Jaccard similarity.

Scoring. Every group is an original plus either 1-3 exact duplicates or one
near duplicate, and an ideal dedup keeps exactly one row of each group (any
one: charter keeps the first in input order, datatrove a cluster's union-find
root). Within a group, the representative is the original if it was kept,
else the first kept row; a planted duplicate counts as *caught* if it was
removed or is the representative (the original was removed in its place), and
as *missed* if it was kept beside the representative. So:

* exact recall  = caught / planted exact duplicates;
* near recall   = caught / planted near duplicates with true Jaccard >= 0.8
  (word 5-grams, lowercased alphanumeric words, as charter defines it);
* near < 0.8 dropped = the same, over planted near duplicates below 0.8,
  which a dedup holding to the 0.8 threshold should keep (lower is better);
* false-positive rate = groups with *no* row kept / groups: the original's
  content was removed although nothing equal or similar to it was kept, i.e.
  it was wrongly matched to an unrelated row.

Example::

    python3 benches/dedup/compare.py --corpus-dir /tmp/dedup-bench \\
        --charter target/release/charter
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
THRESHOLD = 0.8
# Lower edges of the true-Jaccard bands that near-duplicate recall is broken down by.
JACCARD_BANDS = (0.0, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)


def band_label(i: int) -> str:
    lo = JACCARD_BANDS[i]
    return f"J={lo:.2f}" if i + 1 == len(JACCARD_BANDS) else f"J in [{lo:.2f},{JACCARD_BANDS[i + 1]:.2f})"


def jaccard_band(j: float) -> str:
    return band_label(max(i for i, lo in enumerate(JACCARD_BANDS) if lo <= j))


# --------------------------------------------------------------------------
# Ground truth and scoring


@dataclass
class Truth:
    """Per-line ground truth (index 0 unused: lines are 1-based)."""

    group: list[int]
    kind: list[str]
    variant: list[str]
    jaccard: list[float]

    @property
    def rows(self) -> int:
        return len(self.group) - 1


def load_truth(path: Path) -> Truth:
    t = Truth([-1], [""], [""], [0.0])
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        if header[:5] != ["line", "group", "kind", "variant", "jaccard"]:
            sys.exit(f"error: unexpected header in {path}: {header}")
        for i, row in enumerate(reader, start=1):
            if int(row[0]) != i:
                sys.exit(f"error: {path}: line numbers are not consecutive at {row[0]}")
            t.group.append(int(row[1]))
            t.kind.append(row[2])
            t.variant.append(row[3])
            t.jaccard.append(float(row[4]))
    return t


@dataclass
class Score:
    kept: int = 0
    groups: int = 0
    vanished: int = 0  # groups with no row kept: false positives
    originals_removed: int = 0  # informational: originals dropped (a duplicate may stand in)
    # By bucket: exact, near, near_below; kind/variant; near rows' true-Jaccard band ("J in [lo,hi)").
    caught: dict[str, int] = field(default_factory=dict)
    planted: dict[str, int] = field(default_factory=dict)

    def rate(self, bucket: str) -> float | None:
        n = self.planted.get(bucket, 0)
        return self.caught.get(bucket, 0) / n if n else None

    @property
    def fp_rate(self) -> float:
        return self.vanished / self.groups if self.groups else 0.0


def score(truth: Truth, kept_lines) -> Score:
    """Scores a set of kept 1-based line numbers against the ground truth."""
    n = truth.rows
    kept = bytearray(n + 1)
    for line in kept_lines:
        if not 1 <= line <= n:
            raise ValueError(f"kept line {line} is outside 1..{n}")
        kept[line] = 1

    # Members of each group, in line order.
    members: dict[int, list[int]] = {}
    for line in range(1, n + 1):
        members.setdefault(truth.group[line], []).append(line)

    s = Score(kept=sum(kept))
    for lines in members.values():
        s.groups += 1
        original = next(x for x in lines if truth.kind[x] == "original")
        kept_here = [x for x in lines if kept[x]]
        if not kept_here:
            s.vanished += 1
        if not kept[original]:
            s.originals_removed += 1
        representative = original if kept[original] else (kept_here[0] if kept_here else None)
        for x in lines:
            if x == original:
                continue
            kind = truth.kind[x]
            if kind == "near":
                bucket = "near" if truth.jaccard[x] >= THRESHOLD else "near_below"
            else:
                bucket = kind
            hit = int(not kept[x] or x == representative)
            extra = (jaccard_band(truth.jaccard[x]),) if kind == "near" else ()
            for b in (bucket, f"{kind}/{truth.variant[x]}", *extra):
                s.planted[b] = s.planted.get(b, 0) + 1
                s.caught[b] = s.caught.get(b, 0) + hit
    return s


# --------------------------------------------------------------------------
# Running the tools


@dataclass
class Run:
    tool: str
    wall_s: float
    cpu_s: float  # user + system, the process and the descendants it waited for
    kept_lines: list[int]
    summary: dict


def children_cpu_s() -> float:
    """User + system CPU seconds of all waited-for descendants so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class TreeCPU:
    """Polls /proc for the CPU time of a process and all its descendants.

    ``getrusage`` only sees descendants that were waited for by their parents
    up the chain; datatrove's worker pools are children of a forkserver, whose
    CPU never reaches us that way. Sampling each live descendant's own
    utime + stime every ``interval`` seconds misses at most the last interval
    of each process. Linux only; elsewhere it reports nothing.
    """

    def __init__(self, root: int, interval: float = 0.5):
        self.root = root
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self.available = os.path.isdir("/proc/self")

    def __enter__(self) -> TreeCPU:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(interval)

    def sample(self) -> None:
        stats: dict[int, tuple[int, int, float]] = {}  # pid -> (ppid, start, cpu)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After "pid (comm)": state ppid ... utime(14) stime(15) ... starttime(22), 1-based in stat(5).
            stats[int(entry)] = (int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / self.tick)
        tree = {self.root}
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _, _) in stats.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        for pid in tree:
            if pid in stats:
                _, start, cpu = stats[pid]
                self.seen[(pid, start)] = max(cpu, self.seen.get((pid, start), 0.0))

    @property
    def total(self) -> float:
        return sum(self.seen.values())


def run_logged(cmd: list[str], log: Path) -> tuple[float, float, str]:
    """Runs `cmd`, stderr to `log`; returns (wall seconds, CPU seconds, stdout). Exits on failure.

    CPU is user + system time of the process tree: the larger of what
    ``getrusage`` reports for reaped children and what /proc polling saw.
    """
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    with open(log, "wb") as err:
        cpu0 = children_cpu_s()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        with TreeCPU(proc.pid) as tree:
            stdout, _ = proc.communicate()
        wall = time.perf_counter() - t0
        cpu = max(children_cpu_s() - cpu0, tree.total)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        sys.exit(f"error: {cmd[0]} exited with {proc.returncode}; stderr ({log}):\n{tail}")
    return wall, cpu, stdout.decode("utf-8", errors="replace")


def last_json_object(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON object on stdout: {stdout[-500:]!r}")


def run_charter(charter: str, corpus: Path, workdir: Path, extra: list[str]) -> Run:
    import pyarrow.parquet as pq

    out = workdir / "charter.parquet"
    if out.exists():
        out.unlink()
    cmd = [charter, "prompts", "import", str(corpus), "-o", str(out), "--json", *extra]
    wall, cpu, stdout = run_logged(cmd, workdir / "charter.stderr.log")
    summary = last_json_object(stdout)
    rows = pq.read_table(out, columns=["source_row"]).column("source_row").to_pylist()
    return Run("charter", wall, cpu, rows, summary)


def run_datatrove(corpus: Path, workdir: Path, workers: int, python: str) -> Run:
    dt_dir = workdir / "datatrove"
    kept_file = workdir / "datatrove.kept.txt"
    cmd = [
        python,
        str(HERE / "datatrove_minhash.py"),
        str(corpus),
        "--workdir",
        str(dt_dir),
        "--workers",
        str(workers),
        "--kept",
        str(kept_file),
    ]
    wall, cpu, stdout = run_logged(cmd, workdir / "datatrove.stderr.log")
    summary = last_json_object(stdout)
    rows = [int(x) for x in kept_file.read_text().split()]
    return Run("datatrove", wall, cpu, rows, summary)


# --------------------------------------------------------------------------
# Report


def fmt_pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def report(truth: Truth, runs: list[Run], scores: dict[str, Score], planted_counts: dict[str, int]) -> str:
    n = truth.rows
    names = [r.tool for r in runs]
    table: list[tuple[str, ...]] = [("", *names)]

    def row(label: str, values) -> None:
        table.append((label, *values))

    row("rows", [f"{n:,}" for _ in runs])
    row("kept", [f"{scores[r.tool].kept:,}" for r in runs])
    row("wall seconds", [f"{r.wall_s:.2f}" for r in runs])
    row("rows/s", [f"{n / r.wall_s:,.0f}" for r in runs])
    row("CPU seconds (user+sys)", [f"{r.cpu_s:.2f}" for r in runs])
    row(f"exact recall ({planted_counts.get('exact', 0):,})", [fmt_pct(scores[t].rate("exact")) for t in names])
    row(f"near recall, J>=0.8 ({planted_counts.get('near', 0):,})", [fmt_pct(scores[t].rate("near")) for t in names])
    row(
        f"near J<0.8 dropped ({planted_counts.get('near_below', 0):,})",
        [fmt_pct(scores[t].rate("near_below")) for t in names],
    )
    row(
        f"false positives ({scores[names[0]].groups:,} groups)",
        [f"{fmt_pct(scores[t].fp_rate, 3)} ({scores[t].vanished:,})" for t in names],
    )
    lines = _align(table)
    by_tool = {r.tool: r for r in runs}
    if "charter" in by_tool and "datatrove" in by_tool:
        ratio = (n / by_tool["charter"].wall_s) / (n / by_tool["datatrove"].wall_s)
        lines.append(f"charter/datatrove rows/s: {ratio:.1f}x")

    # Recall by how the duplicate was made.
    variants = sorted(b for b in planted_counts if "/" in b)
    detail = [("recall by variant", *names)]
    for b in variants:
        label = f"{b} ({planted_counts[b]:,})"
        detail.append((label, *[fmt_pct(scores[t].rate(b)) for t in names]))
    lines += ["", *_align(detail)]

    # Near-duplicate recall by true similarity (below 0.8 a tool should keep the row).
    bands = [b for b in map(band_label, range(len(JACCARD_BANDS))) if b in planted_counts]
    detail = [("near dropped by true Jaccard", *names)]
    for b in bands:
        detail.append((f"{b} ({planted_counts[b]:,})", *[fmt_pct(scores[t].rate(b)) for t in names]))
    lines += ["", *_align(detail)]
    return "\n".join(lines)


def _align(table: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    out = []
    for j, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        out.append("  ".join(cells))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus-dir", type=Path, required=True, help="directory with corpus.jsonl and truth.tsv")
    ap.add_argument("--charter", help="path to the charter binary (required unless --skip-charter)")
    ap.add_argument("--charter-arg", action="append", default=[], help="extra argument for charter (repeatable)")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default CORPUS_DIR/run)")
    ap.add_argument("--workers", type=int, default=2, help="datatrove workers (default 2)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the datatrove script")
    ap.add_argument("--skip-charter", action="store_true")
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()
    if not args.skip_charter and not args.charter:
        ap.error("--charter is required unless --skip-charter")
    if args.skip_charter and args.skip_datatrove:
        ap.error("nothing to run")

    corpus = (args.corpus_dir / "corpus.jsonl").resolve()
    charter = None
    if not args.skip_charter:
        charter = shutil.which(args.charter)
        if charter is None:
            ap.error(f"--charter {args.charter}: not an executable file")
    for needed in (corpus, args.corpus_dir / "truth.tsv"):
        if not needed.is_file():
            ap.error(f"{needed} is missing; make it with make_corpus.py")
    truth = load_truth(args.corpus_dir / "truth.tsv")
    workdir = (args.workdir or args.corpus_dir / "run").resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    runs: list[Run] = []
    if charter:
        runs.append(run_charter(str(Path(charter).resolve()), corpus, workdir, args.charter_arg))
    if not args.skip_datatrove:
        runs.append(run_datatrove(corpus, workdir, args.workers, args.python))

    for r in runs:
        seen = r.summary.get("read", r.summary.get("rows"))
        if seen is not None and seen != truth.rows:
            print(f"warning: {r.tool} read {seen} rows, the ground truth has {truth.rows}", file=sys.stderr)
    scores = {r.tool: score(truth, r.kept_lines) for r in runs}
    planted = scores[runs[0].tool].planted
    print(report(truth, runs, scores, planted))

    if args.json_out:
        results = {
            "corpus": str(corpus),
            "rows": truth.rows,
            "tools": {
                r.tool: {
                    "wall_s": round(r.wall_s, 3),
                    "cpu_s": round(r.cpu_s, 3),
                    "rows_per_s": round(truth.rows / r.wall_s, 1),
                    "kept": scores[r.tool].kept,
                    "groups": scores[r.tool].groups,
                    "false_positive_groups": scores[r.tool].vanished,
                    "false_positive_rate": scores[r.tool].fp_rate,
                    "originals_removed": scores[r.tool].originals_removed,
                    "recall": {b: scores[r.tool].rate(b) for b in sorted(planted)},
                    "planted": dict(sorted(planted.items())),
                    "summary": r.summary,
                }
                for r in runs
            },
        }
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
