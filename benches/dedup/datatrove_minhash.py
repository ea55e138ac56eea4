#!/usr/bin/env python3
"""Run datatrove's MinHash dedup on a JSONL prompt file and record which lines it kept.

This is the Python peer in charter's dedup benchmark. It runs datatrove's
four-stage MinHash pipeline with its local executor and default settings
(``MinhashConfig()``: word 5-grams, 14 buckets x 8 hashes, 64-bit xxhash,
datatrove's text simplification and English word tokenizer):

1. ``MinhashDedupSignature``: one signature per document, one task per input shard;
2. ``MinhashDedupBuckets``:  duplicate pairs per bucket, one task per bucket;
3. ``MinhashDedupCluster``:  union-find over the pairs, one task;
4. ``MinhashDedupFilter``:   drop all but one document per cluster, one task per shard,
   followed by datatrove's ``JsonlWriter`` (gzip, its default) for the deduplicated data.

datatrove parallelises stages 1 and 4 over input *files*, so the input is first
split into ``--workers`` contiguous shards; that split is part of the timed run.
The whole pipeline (split + four stages + writing) is timed by wall clock.

Each shard is named after the 0-based index of its first line, and a reader
adapter turns (shard, line in shard) into the document id, a 1-based line
number of the input. A small step after the filter writes the ids it sees, so
the kept lines are exactly what datatrove let through.

Two datatrove behaviours matter when reading the results: a document with
fewer than 5 words has no 5-gram, gets no signature and is never removed; and
clusters are formed transitively (union-find over all candidate pairs, which
are not verified against a similarity threshold) with the union-find root
kept, not necessarily the first row in input order.

Prints one JSON object on stdout: rows, kept, removed, wall seconds (total and
per stage), the kept-lines file (one 1-based line number per line, sorted).

Needs ``python3 -m pip install "datatrove==0.10.*" spacy xxhash orjson tokenizers``
(``spacy`` for datatrove's English word tokenizer, ``xxhash`` for its default
hash, ``orjson`` for its JSONL reader and writer, ``tokenizers`` because its
dedup package imports it). Example::

    python3 benches/dedup/datatrove_minhash.py /tmp/dedup-bench/corpus.jsonl --workdir /tmp/dedup-bench/dt
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from datatrove.executor.local import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

MARKER = ".datatrove_minhash_workdir"


def _line_id_adapter(self, data: dict, path: str, id_in_file: int) -> dict:
    """Reader adapter: text from ``prompt``, id = 1-based line number in the unsplit input.

    ``path`` is the shard's name relative to the input folder, ``<first line index>.jsonl``.
    """
    first = int(Path(path).name.split(".", 1)[0])
    return {
        "text": data.pop(self.text_key, ""),
        "id": str(first + id_in_file + 1),
        "media": [],
        "metadata": data,
    }


class KeptLines(PipelineStep):
    """Passes documents through, writing each one's id (its input line) to ``<folder>/<rank>.txt``."""

    name = "kept lines"
    type = "📝 - RECORD"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data, rank: int = 0, world_size: int = 1):
        with open(os.path.join(self.folder, f"{rank:05d}.txt"), "w") as f:
            for doc in data:
                f.write(doc.id)
                f.write("\n")
                yield doc


def split_input(src: Path, out_dir: Path, shards: int) -> int:
    """Copies `src` into `shards` contiguous line ranges; returns the number of lines."""
    with open(src, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        data += b"\n"
    lines = data.count(b"\n")
    per = -(-lines // shards) if lines else 0
    out_dir.mkdir(parents=True)
    start, pos = 0, 0
    for _ in range(shards):
        if start >= lines:
            break
        end_line = min(start + per, lines)
        end = pos
        for _ in range(end_line - start):
            end = data.index(b"\n", end) + 1
        with open(out_dir / f"{start:012d}.jsonl", "wb") as f:
            f.write(data[pos:end])
        start, pos = end_line, end
    return lines


def prepare_workdir(workdir: Path) -> None:
    """A fresh work directory. datatrove skips tasks it finds completed, so old runs must go."""
    if workdir.exists():
        if not (workdir / MARKER).exists() and any(workdir.iterdir()):
            sys.exit(f"error: {workdir} is not empty and was not made by this script; refusing to delete it")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).touch()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", type=Path, help="JSONL file, one object with a `prompt` field per line")
    ap.add_argument("--workdir", type=Path, required=True, help="scratch directory (wiped at start)")
    ap.add_argument("--workers", type=int, default=2, help="parallel tasks/processes (default 2)")
    ap.add_argument("--field", default="prompt", help="JSON field with the text (default `prompt`)")
    ap.add_argument("--kept", type=Path, help="kept-lines file (default WORKDIR/kept_lines.txt)")
    ap.add_argument("--no-output", action="store_true", help="do not write the deduplicated JSONL")
    args = ap.parse_args()
    if not (_version("datatrove") or "").startswith("0.10."):
        print(f"warning: written for datatrove 0.10.x, found {_version('datatrove')}", file=sys.stderr)

    workdir = args.workdir.resolve()
    prepare_workdir(workdir)
    shards, sigs, buckets, clusters = (str(workdir / d) for d in ("input", "signatures", "buckets", "remove_ids"))
    kept_dir = workdir / "kept"
    kept_dir.mkdir()
    config = MinhashConfig()  # datatrove's defaults: 5-grams, 14 buckets x 8 hashes

    def reader():
        return JsonlReader(shards, text_key=args.field, adapter=_line_id_adapter, add_file_path=False)

    def executor(name, pipeline, tasks):
        return LocalPipelineExecutor(
            pipeline=pipeline,
            tasks=tasks,
            workers=min(args.workers, tasks),
            logging_dir=str(workdir / "logs" / name),
        )

    stages = [
        ("signatures", executor("1_signatures", [reader(), MinhashDedupSignature(sigs, config=config)], args.workers)),
        ("buckets", executor("2_buckets", [MinhashDedupBuckets(sigs, buckets, config=config)], config.num_buckets)),
        ("clusters", executor("3_clusters", [MinhashDedupCluster(buckets, clusters, config=config)], 1)),
        (
            "filter",
            executor(
                "4_filter",
                [reader(), MinhashDedupFilter(clusters), KeptLines(str(kept_dir))]
                + ([] if args.no_output else [JsonlWriter(str(workdir / "output"))]),
                args.workers,
            ),
        ),
    ]

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rows = split_input(args.input.resolve(), Path(shards), args.workers)
    timings["split"] = time.perf_counter() - t0
    for name, ex in stages:
        t = time.perf_counter()
        ex.run()
        timings[name] = time.perf_counter() - t
    wall = time.perf_counter() - t0

    kept = sorted(int(x) for p in sorted(kept_dir.glob("*.txt")) for x in p.read_text().split())
    kept_file = args.kept or workdir / "kept_lines.txt"
    kept_file.write_text("".join(f"{x}\n" for x in kept))
    summary = {
        "tool": "datatrove",
        "version": _version("datatrove"),
        "config": str(config),
        "workers": args.workers,
        "rows": rows,
        "kept": len(kept),
        "removed": rows - len(kept),
        "wall_s": round(wall, 3),
        "rows_per_s": round(rows / wall, 1) if wall else None,
        "stage_s": {k: round(v, 3) for k, v in timings.items()},
        "kept_file": str(kept_file),
    }
    print(json.dumps(summary))


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
