//! `charter inspect`: what a table is, what built it, and a few of its rows.

use std::fmt::Write as _;

use anyhow::Result;
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
    let head = head_rows(&table, args.head)?;
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
                    "type": ColumnType::of_arrow(f.data_type()).map(|t| t.name().to_string())
                        .unwrap_or_else(|| f.data_type().to_string()),
                    "nullable": f.is_nullable(),
                    "role": role,
                })
            })
            .collect();
        let out = json!({
            "path": table.path().display().to_string(),
            "table": table.table_name(),
            "schema_version": schema_version,
            "rows": table.num_rows(),
            "content_hash": table.content_hash(),
            "content_hash_verified": verified.is_some(),
            "build_key": table.build_key(),
            "metadata": metadata,
            "columns": columns,
            "head": head.iter().map(|row| Json::Object(row.iter().cloned().collect())).collect::<Vec<_>>(),
        });
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
        let ty = ColumnType::of_arrow(f.data_type())
            .map_or_else(|| f.data_type().to_string(), |t| t.name().into());
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
    if !head.is_empty() {
        let _ = writeln!(s, "first {} rows", head.len());
        for (i, row) in head.iter().enumerate() {
            let _ = writeln!(s, "  [{i}]");
            for (k, v) in row {
                let _ = writeln!(s, "    {k:<18}{}", shorten(&v.to_string(), 100));
            }
        }
    }
    print!("{s}");
    Ok(())
}

/// The first `n` rows as (column, JSON value) lists.
fn head_rows(table: &TableFile, n: usize) -> Result<Vec<Vec<(String, Json)>>> {
    let mut rows = Vec::new();
    if n == 0 {
        return Ok(rows);
    }
    let schema = table.schema().clone();
    for batch in table.batches()? {
        let batch = batch?;
        let take = (n - rows.len()).min(batch.num_rows());
        let batch = batch.slice(0, take);
        let columns: Vec<Option<Vec<Value<'_>>>> = (0..batch.num_columns())
            .map(|i| column_cells(&batch, i))
            .collect();
        for r in 0..take {
            rows.push(
                schema
                    .fields()
                    .iter()
                    .zip(&columns)
                    .map(|(f, c)| {
                        let v = c
                            .as_ref()
                            .map_or(Json::String("(unsupported type)".into()), |c| {
                                to_json(&c[r])
                            });
                        (f.name().clone(), v)
                    })
                    .collect(),
            );
        }
        if rows.len() >= n {
            break;
        }
    }
    Ok(rows)
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
