//! Per-column summaries for `charter inspect --stats`, of any Parquet table.
//!
//! Quantiles interpolate linearly between order statistics, numpy's default
//! (`linear`, also pandas' and polars' `quantile(q, interpolation="linear")`):
//! for the n sorted values x₀ ≤ … ≤ xₙ₋₁, h = (n − 1)·q and
//! q-quantile = x⌊h⌋ + (h − ⌊h⌋)·(x⌊h⌋₊₁ − x⌊h⌋).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use anyhow::Result;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Int8Type, Int16Type, Int32Type, UInt8Type, UInt16Type};
use arrow_array::{Array, ArrowPrimitiveType, PrimitiveArray};
use arrow_schema::DataType;
use charter_table::{TableFile, Value, column_cells};
use serde_json::{Value as Json, json};

/// Text columns with at most this many distinct values list them all with their counts.
const TOP_VALUES: usize = 20;
const NUMBER_QUANTILES: [(&str, f64); 5] = [
    ("p05", 0.05),
    ("p25", 0.25),
    ("p50", 0.5),
    ("p75", 0.75),
    ("p95", 0.95),
];
const LENGTH_QUANTILES: [(&str, f64); 2] = [("p50", 0.5), ("p90", 0.9)];

/// What one column holds: counts for every type, a summary by kind.
pub(super) struct ColumnStats {
    name: String,
    ty: String,
    rows: u64,
    nulls: u64,
    /// 128-bit hashes of the distinct non-null values; `None` for types charter cannot read.
    distinct: Option<HashSet<u128>>,
    kind: Kind,
}

enum Kind {
    /// Lengths in characters, and value counts while there are few distinct values.
    Text(Vec<f64>, Option<BTreeMap<String, u64>>),
    /// Values (NaN excluded), the exact range of integer columns, and the NaN count.
    Number(Vec<f64>, Option<(i128, i128)>, u64),
    Bool {
        t: u64,
        f: u64,
    },
    /// Item counts.
    List(Vec<f64>),
    Other,
}

/// Reads every row of `table` once and summarises each column.
pub(super) fn compute(table: &TableFile) -> Result<Vec<ColumnStats>> {
    let mut stats: Vec<ColumnStats> = table
        .schema()
        .fields()
        .iter()
        .map(|f| ColumnStats::new(f.name(), f.data_type()))
        .collect();
    for batch in table.batches()? {
        let batch = batch?;
        for (i, s) in stats.iter_mut().enumerate() {
            let array = batch.column(i).as_ref();
            let cells = column_cells(&batch, i).or_else(|| narrow_number_cells(array));
            s.update(array, cells);
        }
    }
    Ok(stats)
}

impl ColumnStats {
    fn new(name: &str, ty: &DataType) -> Self {
        let kind = match ty {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Kind::Text(Vec::new(), Some(BTreeMap::new()))
            }
            DataType::Boolean => Kind::Bool { t: 0, f: 0 },
            t if t.is_integer() => Kind::Number(Vec::new(), Some((i128::MAX, i128::MIN)), 0),
            t if t.is_floating() => Kind::Number(Vec::new(), None, 0),
            DataType::List(_) | DataType::LargeList(_) => Kind::List(Vec::new()),
            _ => Kind::Other,
        };
        ColumnStats {
            name: name.to_string(),
            ty: super::type_name(ty),
            rows: 0,
            nulls: 0,
            distinct: None,
            kind,
        }
    }

    fn update(&mut self, array: &dyn Array, cells: Option<Vec<Value<'_>>>) {
        self.rows += array.len() as u64;
        self.nulls += array.logical_null_count() as u64;
        if let Kind::List(lengths) = &mut self.kind {
            let valid = |i: &usize| !array.is_null(*i);
            if let Some(list) = array.as_list_opt::<i32>() {
                lengths.extend(
                    (0..list.len())
                        .filter(valid)
                        .map(|i| list.value_length(i) as f64),
                );
            } else if let Some(list) = array.as_list_opt::<i64>() {
                lengths.extend(
                    (0..list.len())
                        .filter(valid)
                        .map(|i| list.value_length(i) as f64),
                );
            }
        }
        let Some(cells) = cells else { return };
        let distinct = self.distinct.get_or_insert_with(HashSet::new);
        for cell in &cells {
            if matches!(cell, Value::Null) {
                continue;
            }
            distinct.insert(hash(cell));
            match (&mut self.kind, cell) {
                (Kind::Text(lengths, top), Value::Str(s)) => {
                    lengths.push(s.chars().count() as f64);
                    if let Some(counts) = top {
                        match counts.get_mut(*s) {
                            Some(n) => *n += 1,
                            None => _ = counts.insert(s.to_string(), 1),
                        }
                        if counts.len() > TOP_VALUES {
                            *top = None;
                        }
                    }
                }
                (Kind::Number(_, _, nan), Value::Float(v)) if v.is_nan() => *nan += 1,
                (Kind::Number(values, range, _), v) => {
                    let (x, exact) = match *v {
                        Value::Int(i) => (i as f64, i128::from(i)),
                        Value::UInt(u) => (u as f64, i128::from(u)),
                        Value::Float(f) => (f, 0),
                        _ => continue,
                    };
                    values.push(x);
                    if let Some((lo, hi)) = range {
                        (*lo, *hi) = ((*lo).min(exact), (*hi).max(exact));
                    }
                }
                (Kind::Bool { t, f }, Value::Bool(b)) => *(if *b { t } else { f }) += 1,
                _ => {}
            }
        }
    }

    /// The column's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The summary as one JSON object (the caller keys it by the column name).
    pub(super) fn to_json(&self) -> Json {
        let mut out = json!({
            "type": self.ty,
            "rows": self.rows,
            "nulls": self.nulls,
            "distinct": self.distinct.as_ref().map(HashSet::len),
        });
        let extra = match &self.kind {
            Kind::Text(lengths, top) => {
                let mut m = json!({ "chars": summary_json(lengths, &LENGTH_QUANTILES, None) });
                if let Some(top) = top {
                    m["top"] = most_common(top)
                        .iter()
                        .map(|(v, n)| json!({"value": v, "count": n}))
                        .collect();
                }
                m
            }
            Kind::Number(values, Some(range), _) => json!({
                "values": summary_json(values, &NUMBER_QUANTILES, Some(*range)),
            }),
            Kind::Number(values, None, nan) => json!({
                "values": summary_json(values, &NUMBER_QUANTILES, None),
                "nan": nan,
            }),
            Kind::Bool { t, f } => json!({"true": t, "false": f}),
            Kind::List(lengths) => json!({"items": summary_json(lengths, &LENGTH_QUANTILES, None)}),
            Kind::Other => json!({}),
        };
        if let (Some(out), Json::Object(extra)) = (out.as_object_mut(), extra) {
            out.extend(extra);
        }
        out
    }
}

/// An aligned text rendering: counts for every column, then numbers, lengths,
/// and the values of text columns whose values repeat, each in at most 120 columns.
pub(super) fn render(stats: &[ColumnStats], out: &mut String) {
    let w = stats
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(6, 20);
    let name = |s: &ColumnStats| format!("  {:<w$} ", super::shorten(&s.name, w - 1));
    let _ = writeln!(
        out,
        "stats (lengths: characters, items of lists; quantiles: linear, as numpy's default)\n  {:<w$} {:<14}{:>10}{:>10}",
        "column", "type", "nulls", "distinct"
    );
    for s in stats {
        let distinct = s
            .distinct
            .as_ref()
            .map_or("-".into(), |d| d.len().to_string());
        let note = match &s.kind {
            Kind::Number(_, _, nan) if *nan > 0 => format!("  NaN {nan}"),
            Kind::Bool { t, f } => format!("  true {t}, false {f}"),
            _ => String::new(),
        };
        let ty = super::shorten(&s.ty, 13);
        let _ = writeln!(
            out,
            "{}{ty:<14}{:>10}{distinct:>10}{note}",
            name(s),
            s.nulls
        );
    }

    let table =
        |out: &mut String, title: &str, qs: &[(&str, f64)], rows: Vec<(String, &[f64], &str)>| {
            if rows.is_empty() {
                return;
            }
            let _ = write!(out, "{title:<w$}   {:>10}{:>10}", "min", "mean");
            for (q, _) in qs {
                let _ = write!(out, "{q:>10}");
            }
            let _ = writeln!(out, "{:>10}", "max");
            for (label, values, note) in rows {
                let _ = write!(out, "{label}");
                match Summary::of(values, qs) {
                    Some(sm) => {
                        for v in [sm.min, sm.mean]
                            .into_iter()
                            .chain(sm.quantiles)
                            .chain([sm.max])
                        {
                            let _ = write!(out, "{:>10}", number(v));
                        }
                    }
                    None => {
                        let _ = write!(out, "{:>10}", "-");
                    }
                }
                let _ = writeln!(out, "{note}");
            }
        };
    let numbers = stats
        .iter()
        .filter_map(|s| match &s.kind {
            Kind::Number(v, ..) => Some((name(s), v.as_slice(), "")),
            _ => None,
        })
        .collect();
    table(out, "numbers", &NUMBER_QUANTILES, numbers);
    let lengths = stats
        .iter()
        .filter_map(|s| match &s.kind {
            Kind::Text(v, _) => Some((name(s), v.as_slice(), "")),
            Kind::List(v) => Some((name(s), v.as_slice(), "  (items)")),
            _ => None,
        })
        .collect();
    table(out, "lengths", &LENGTH_QUANTILES, lengths);

    let mut header = false;
    for s in stats {
        let (Kind::Text(lengths, Some(top)), Some(distinct)) = (&s.kind, &s.distinct) else {
            continue;
        };
        // All-distinct values (ids, texts) say nothing a count does not.
        if distinct.len() == lengths.len() {
            continue;
        }
        if !std::mem::replace(&mut header, true) {
            let _ = writeln!(out, "common values");
        }
        let mut line = name(s);
        let top = most_common(top);
        for (i, (v, n)) in top.iter().enumerate() {
            let item = format!("{} {n}", super::shorten(&format!("{v:?}"), 30));
            if line.chars().count() + item.chars().count() > 104 {
                let _ = write!(line, "… {} more", top.len() - i);
                break;
            }
            let _ = write!(line, "{item}, ");
        }
        let _ = writeln!(out, "{}", line.trim_end_matches(", "));
    }
}

/// Minimum, mean, quantiles and maximum of a non-empty set of values.
struct Summary {
    min: f64,
    mean: f64,
    quantiles: Vec<f64>,
    max: f64,
}

impl Summary {
    fn of(values: &[f64], qs: &[(&str, f64)]) -> Option<Self> {
        let mut sorted = values.to_vec();
        sorted.sort_unstable_by(f64::total_cmp);
        Some(Summary {
            min: *sorted.first()?,
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            quantiles: qs.iter().map(|&(_, q)| quantile(&sorted, q)).collect(),
            max: *sorted.last()?,
        })
    }
}

/// The summary as JSON (`null` when there are no values), with an integer
/// column's exact minimum and maximum in place of their f64 images.
fn summary_json(values: &[f64], qs: &[(&str, f64)], range: Option<(i128, i128)>) -> Json {
    let Some(s) = Summary::of(values, qs) else {
        return Json::Null;
    };
    let exact = |v: i128| {
        i64::try_from(v)
            .map(Json::from)
            .or_else(|_| u64::try_from(v).map(Json::from))
            .unwrap_or(Json::Null)
    };
    let (min, max) = match range {
        Some((lo, hi)) => (exact(lo), exact(hi)),
        None => (json!(s.min), json!(s.max)),
    };
    let mut m = serde_json::Map::new();
    m.insert("min".into(), min);
    m.insert("mean".into(), json!(s.mean));
    for ((name, _), v) in qs.iter().zip(s.quantiles) {
        m.insert((*name).into(), json!(v));
    }
    m.insert("max".into(), max);
    Json::Object(m)
}

/// The q-quantile of sorted, non-empty values, by linear interpolation (see the module doc).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    match sorted.get(lo + 1) {
        Some(&next) => sorted[lo] + (h - lo as f64) * (next - sorted[lo]),
        None => sorted[lo],
    }
}

/// Values by count, most common first; ties in value order.
fn most_common(counts: &BTreeMap<String, u64>) -> Vec<(&str, u64)> {
    let mut v: Vec<(&str, u64)> = counts.iter().map(|(k, &n)| (k.as_str(), n)).collect();
    v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v
}

/// A 128-bit hash of a cell: distinct values are counted by hash, not kept.
fn hash(value: &Value<'_>) -> u128 {
    let mut h = blake3::Hasher::new();
    match *value {
        Value::Null => h.update(&[0]),
        Value::Bool(b) => h.update(&[1, u8::from(b)]),
        Value::UInt(u) => h.update(&[2]).update(&u.to_le_bytes()),
        Value::Int(i) => h.update(&[3]).update(&i.to_le_bytes()),
        // One NaN, and 0.0 == -0.0, as pandas and polars count them.
        Value::Float(f) if f.is_nan() => h.update(&[4]).update(&f64::NAN.to_bits().to_le_bytes()),
        Value::Float(f) => h.update(&[4]).update(&(f + 0.0).to_bits().to_le_bytes()),
        Value::Str(s) => h.update(&[5]).update(s.as_bytes()),
        Value::List(ref items) => {
            h.update(&[6]);
            for s in items {
                h.update(&(s.len() as u64).to_le_bytes())
                    .update(s.as_bytes());
            }
            &mut h
        }
    };
    let bytes = h.finalize();
    let mut first = [0; 16];
    first.copy_from_slice(&bytes.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// Cells of the integer and float widths charter's tables do not use.
pub(super) fn narrow_number_cells(array: &dyn Array) -> Option<Vec<Value<'static>>> {
    fn cells<T: ArrowPrimitiveType>(
        a: &PrimitiveArray<T>,
        to: impl Fn(T::Native) -> Value<'static>,
    ) -> Vec<Value<'static>> {
        (0..a.len())
            .map(|i| {
                if a.is_null(i) {
                    Value::Null
                } else {
                    to(a.value(i))
                }
            })
            .collect()
    }
    Some(match array.data_type() {
        DataType::Int8 => cells(array.as_primitive::<Int8Type>(), |v| Value::Int(v.into())),
        DataType::Int16 => cells(array.as_primitive::<Int16Type>(), |v| Value::Int(v.into())),
        DataType::Int32 => cells(array.as_primitive::<Int32Type>(), |v| Value::Int(v.into())),
        DataType::UInt8 => cells(array.as_primitive::<UInt8Type>(), |v| Value::UInt(v.into())),
        DataType::UInt16 => cells(array.as_primitive::<UInt16Type>(), |v| {
            Value::UInt(v.into())
        }),
        DataType::Float16 => cells(array.as_primitive::<Float16Type>(), |v| {
            Value::Float(v.into())
        }),
        _ => return None,
    })
}

/// A number in at most ten columns: integers whole, others to four significant digits.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        return format!("{v:.0}");
    }
    let magnitude = v.abs().log10().floor();
    if !v.is_finite() || !(-3.0..6.0).contains(&magnitude) {
        return format!("{v:.2e}");
    }
    let decimals = (3.0 - magnitude).max(0.0) as usize;
    let s = format!("{v:.decimals$}");
    match decimals {
        0 => s,
        _ => s.trim_end_matches('0').trim_end_matches('.').to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy_linear() {
        // numpy.quantile([1, 2, 4, 8], [0, .05, .25, .5, .9, 1]) = 1, 1.15, 1.75, 3, 6.8, 8
        let x = [1.0, 2.0, 4.0, 8.0];
        let got: Vec<f64> = [0.0, 0.05, 0.25, 0.5, 0.9, 1.0]
            .iter()
            .map(|&q| quantile(&x, q))
            .collect();
        let want = [1.0, 1.15, 1.75, 3.0, 6.8, 8.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(quantile(&[5.0], 0.95), 5.0);
    }

    #[test]
    fn numbers_fit_ten_columns() {
        let cases = [
            (3.0, "3"),
            (-12.5, "-12.5"),
            (0.11234, "0.1123"),
            (1234.5678, "1235"),
            (1e-5, "1.00e-5"),
            (2.5e12, "2.50e12"),
        ];
        for (v, want) in cases {
            assert_eq!(number(v), want);
        }
    }
}
