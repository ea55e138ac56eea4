"""Checks that a charter table opens in pyarrow and polars with the columns its schema file documents.

Usage: open_tables.py TABLE.parquet schemas/NAME.toml
"""

import sys
import tomllib

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

ARROW = {
    "utf8": pa.string(),
    "bool": pa.bool_(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "list<utf8>": pa.list_(pa.field("item", pa.string(), nullable=False)),
}
POLARS = {
    "utf8": pl.String,
    "bool": pl.Boolean,
    "uint32": pl.UInt32,
    "uint64": pl.UInt64,
    "int64": pl.Int64,
    "float32": pl.Float32,
    "float64": pl.Float64,
    "list<utf8>": pl.List(pl.String),
}


def main(path: str, schema_path: str) -> None:
    with open(schema_path, "rb") as f:
        spec = tomllib.load(f)
    columns = spec["column"]
    names = [c["name"] for c in columns]

    meta = pq.read_metadata(path).metadata
    assert meta[b"charter.table"].decode() == spec["table"], meta[b"charter.table"]
    assert int(meta[b"charter.schema_version"]) == spec["version"]
    rows = int(meta[b"charter.rows"])

    table = pq.read_table(path)
    assert table.column_names == names, (table.column_names, names)
    for c in columns:
        field = table.schema.field(c["name"])
        assert field.type.equals(ARROW[c["type"]]), (c["name"], field.type, c["type"])
        assert field.nullable == c["nullable"], (c["name"], field.nullable)
    assert table.num_rows == rows

    df = pl.read_parquet(path)
    assert df.columns == names, df.columns
    for c in columns:
        assert df.schema[c["name"]] == POLARS[c["type"]], (c["name"], df.schema[c["name"]])
    assert df.height == rows
    assert df["id"].n_unique() == rows, "ids are unique"
    print(f"ok: {path} opens in pyarrow {pa.__version__} and polars {pl.__version__}: {rows} rows, {len(names)} columns")


if __name__ == "__main__":
    main(*sys.argv[1:])
