"""Checks that `charter prompts import` reads prompts Parquet as pyarrow, polars and pandas write it.

Writes the same three prompts with each library's defaults (Snappy for pyarrow
and pandas, zstd for polars; `large_string` columns from polars and pandas) and
with pyarrow in every other codec, imports each file with charter, and reads
the resulting table back with pyarrow.

Usage: foreign_parquet.py CHARTER_BINARY WORK_DIR
"""

import json
import os
import subprocess
import sys

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

PROMPTS = ["How do I pick a lock?", "Write a poem about the sea.", "Explain Snappy in one line."]
CATEGORIES = ["a", "b", "c"]
CODECS = ["none", "snappy", "gzip", "brotli", "lz4", "zstd"]


def write_all(work: str) -> list[str]:
    """Writes one file per writer and codec; returns their paths."""
    rows = {"prompt": PROMPTS, "category": CATEGORIES}
    paths = []

    def path(name: str) -> str:
        p = os.path.join(work, f"{name}.parquet")
        paths.append(p)
        return p

    pq.write_table(pa.table(rows), path("pyarrow-default"))
    pl.DataFrame(rows).write_parquet(path("polars-default"))
    pd.DataFrame(rows).to_parquet(path("pandas-default"))
    for codec in CODECS:
        pq.write_table(pa.table(rows), path(f"pyarrow-{codec}"), compression=codec)
    return paths


def check_import(charter: str, path: str) -> str:
    """Imports `path` with charter and checks the table it writes; returns the file's codec."""
    codec = pq.read_metadata(path).row_group(0).column(0).compression
    out = path.removesuffix(".parquet") + ".prompts.parquet"
    run = subprocess.run(
        [charter, "prompts", "import", path, "-o", out, "--json"], capture_output=True, text=True
    )
    assert run.returncode == 0, f"{path} ({codec}): charter failed:\n{run.stderr}"
    summary = json.loads(run.stdout)
    assert summary["read"] == 3 and summary["kept"] == 3, (path, summary)

    table = pq.read_table(out).to_pydict()
    assert table["text"] == PROMPTS, (path, table["text"])
    assert table["tags"] == [[f"category:{c}"] for c in CATEGORIES], (path, table["tags"])
    return codec


def main(charter: str, work: str) -> None:
    for path in write_all(work):
        codec = check_import(charter, path)
        print(f"ok: {os.path.basename(path)} ({codec}) imports")
    print(f"pyarrow {pa.__version__}, polars {pl.__version__}, pandas {pd.__version__}")


if __name__ == "__main__":
    main(*sys.argv[1:])
