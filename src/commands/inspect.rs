//! `charter inspect`: what a table is, what built it, a few of its rows, and column statistics.

mod stats;

use std::collections::BinaryHeap;
use std::fmt::Write as _;

use anyhow::Result;
use arrow_schema::DataType;
use charter_gen::sampling::RowRng;
use charter_table::{
    ColumnType, KEY_INPUTS, KEY_SETTINGS, TableFile, Value, column_cells, table_spec,
};
use serde_json::{Value as Json, json};

use crate::cli::InspectArgs;

pub(crate) fn run(args: InspectArgs) -> Result<()> {
    let table = TableFile::open(&args.table)?;
    // A charter table is checked against its schema; any other Parquet file is shown as it is.
    let spec = match table.table_name() {
        Some(name) if table_spec(name).is_some() => Some(table.core_spec()?),
        _ => None,
    };
    let verified = if args.verify {
        let computed = table.compute_content_hash()?;
        let recorded = table.content_hash().unwrap_or("(none)");
        anyhow::ensure!(
            computed == recorded,
            "{}: content hash mismatch: recorded {recorded}, computed {computed}",
            table.path().display()
        );
        Some(computed)
    } else {
        None
    };
    let indices = match args.sample {
        Some(n) => sample_indices(table.num_rows(), n, args.seed),
        None => (0..table.num_rows().min(args.head as u64)).collect(),
    };
    let rows = rows_at(&table, &indices)?;
    let stats = args.stats.then(|| stats::compute(&table)).transpose()?;
    let meta = table.metadata();
    let schema_version: Option<u32> = meta
        .get(charter_table::KEY_SCHEMA_VERSION)
        .and_then(|v| v.parse().ok());

    if args.json {
        let metadata: serde_json::Map<String, Json> = meta
            .iter()
            .map(|(k, v)| {
                // Settings and inputs are JSON already: nest them rather than quoting them.
                let value = if k == KEY_SETTINGS || k == KEY_INPUTS {
                    serde_json::from_str(v).unwrap_or_else(|_| Json::String(v.clone()))
                } else {
                    Json::String(v.clone())
                };
                (k.clone(), value)
            })
            .collect();
        let columns: Vec<Json> = table
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let role = spec.and_then(|s| s.column(f.name())).map(|c| c.role.name());
                json!({
                    "name": f.name(),
                    "type": type_name(f.data_type()),
                    "nullable": f.is_nullable(),
                    "role": role,
                })
            })
            .collect();
        let rows: Vec<Json> = rows
            .into_iter()
            .map(|(_, row)| Json::Object(row.into_iter().collect()))
            .collect();
        let mut out = json!({
            "path": table.path().display().to_string(),
            "table": table.table_name(),
            "schema_version": schema_version,
            "rows": table.num_rows(),
            "content_hash": table.content_hash(),
            "content_hash_verified": verified.is_some(),
            "build_key": table.build_key(),
            "metadata": metadata,
            "columns": columns,
        });
        if args.sample.is_some() {
            out["head"] = json!([]);
            out["sample"] = json!(rows);
            out["sample_rows"] = json!(indices);
            out["seed"] = json!(args.seed);
        } else {
            out["head"] = json!(rows);
        }
        if let Some(stats) = &stats {
            let columns: serde_json::Map<String, Json> = stats
                .iter()
                .map(|s| (s.name().to_string(), s.to_json()))
                .collect();
            out["stats"] = Json::Object(columns);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    let mut s = String::new();
    let field = |s: &mut String, k: &str, v: &str| {
        let _ = writeln!(s, "{k:<14}{v}");
    };
    field(&mut s, "file", &table.path().display().to_string());
    match table.table_name() {
        Some(name) => field(
            &mut s,
            "table",
            &format!(
                "{name} (schema version {})",
                schema_version.map_or("?".into(), |v| v.to_string())
            ),
        ),
        None => field(
            &mut s,
            "table",
            "(not a charter table: no charter.table metadata)",
        ),
    }
    field(&mut s, "rows", &table.num_rows().to_string());
    if let Some(h) = table.content_hash() {
        field(
            &mut s,
            "content hash",
            &format!(
                "{h}{}",
                if verified.is_some() {
                    " (verified)"
                } else {
                    ""
                }
            ),
        );
    }
    if let Some(k) = table.build_key() {
        field(&mut s, "build key", k);
    }
    let _ = writeln!(s, "provenance");
    for (k, v) in meta {
        if k == charter_table::KEY_CONTENT_HASH || k == charter_table::KEY_BUILD_KEY {
            continue;
        }
        let _ = writeln!(s, "  {k:<28}{v}");
    }
    let _ = writeln!(s, "columns");
    for f in table.schema().fields() {
        let ty = type_name(f.data_type());
        let role = spec
            .and_then(|sp| sp.column(f.name()))
            .map_or("", |c| c.role.name());
        let _ = writeln!(
            s,
            "  {:<20}{:<12}{:<10}{}",
            f.name(),
            ty,
            if f.is_nullable() { "nullable" } else { "" },
            role
        );
    }
    if let Some(stats) = &stats {
        stats::render(stats, &mut s);
    }
    if !rows.is_empty() {
        let _ = match args.sample {
            Some(_) => writeln!(
                s,
                "{} of {} rows drawn with seed {}",
                rows.len(),
                table.num_rows(),
                args.seed
            ),
            None => writeln!(s, "first {} rows", rows.len()),
        };
        for (i, row) in &rows {
            let _ = writeln!(s, "  [{i}]");
            for (k, v) in row {
                let _ = writeln!(s, "    {k:<18}{}", shorten(&v.to_string(), 100));
            }
        }
    }
    print!("{s}");
    Ok(())
}

/// One row as (column, JSON value) pairs.
type Row = Vec<(String, Json)>;

/// `n` of `rows` row numbers drawn uniformly without replacement, ascending: row i
/// draws the i-th number of the splitmix64 stream seeded with `seed`, and the `n`
/// smallest draws win (ties to the earlier row). Row numbers alone decide, so the
/// draw is the same however the file is split into row groups.
fn sample_indices(rows: u64, n: u64, seed: u64) -> Vec<u64> {
    let mut rng = RowRng::new(seed);
    // A max-heap of the n smallest (draw, row) so far: O(n) memory at any row count.
    let mut heap = BinaryHeap::with_capacity(n.min(rows) as usize + 1);
    for i in 0..rows {
        // 53-bit draws scaled to integers exactly, to order them without floats.
        let draw = (rng.next_f64() * (1u64 << 53) as f64) as u64;
        heap.push((draw, i));
        if heap.len() as u64 > n {
            heap.pop();
        }
    }
    let mut picked: Vec<u64> = heap.into_iter().map(|(_, i)| i).collect();
    picked.sort_unstable();
    picked
}

/// The rows at the ascending row numbers `indices`, each with its row number.
fn rows_at(table: &TableFile, indices: &[u64]) -> Result<Vec<(u64, Row)>> {
    let mut rows = Vec::with_capacity(indices.len());
    let mut wanted = indices.iter().copied().peekable();
    let mut start = 0u64;
    let names: Vec<String> = table
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for batch in table.batches()? {
        if wanted.peek().is_none() {
            break;
        }
        let batch = batch?;
        let end = start + batch.num_rows() as u64;
        while let Some(i) = wanted.next_if(|&i| i < end) {
            let one = batch.slice((i - start) as usize, 1);
            let row = names
                .iter()
                .enumerate()
                .map(|(c, name)| {
                    let v = column_cells(&one, c)
                        .or_else(|| stats::narrow_number_cells(one.column(c).as_ref()))
                        .map_or(Json::String("(unsupported type)".into()), |cells| {
                            to_json(&cells[0])
                        });
                    (name.clone(), v)
                })
                .collect();
            rows.push((i, row));
        }
        start = end;
    }
    Ok(rows)
}

/// A column type as charter names it (`utf8`, `list<utf8>`), else as Arrow does.
fn type_name(ty: &DataType) -> String {
    match (ColumnType::of_arrow(ty), ty) {
        (Some(t), _) => t.name().into(),
        (None, DataType::List(f) | DataType::LargeList(f)) => {
            format!("list<{}>", type_name(f.data_type()))
        }
        (None, t) => t.to_string(),
    }
}

fn to_json(v: &Value<'_>) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => json!(b),
        Value::UInt(u) => json!(u),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Str(s) => json!(s),
        Value::List(items) => json!(items),
    }
}

/// At most `max` characters, with an ellipsis when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
