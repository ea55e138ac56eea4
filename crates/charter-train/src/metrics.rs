//! Training metrics: one row per optimizer step, written as a Parquet table
//! (`metrics.parquet`) in the checkpoint while training and in the output
//! directory at the end.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One optimizer step's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// Step number, 1-based.
    pub step: u64,
    /// Epochs done (fractional).
    pub epoch: f64,
    /// Mean loss over the step's examples (SFT: per answer token; PM and DPO: per pair).
    pub loss: f64,
    /// Learning rate the step used.
    pub lr: f64,
    /// Tokens through the model (prompt and answer, every conversation).
    pub tokens: u64,
    /// Tokens per second of the step (forward, backward and update).
    pub tokens_per_s: f64,
    /// PM and DPO: share of leaning labels whose direction the model's margin
    /// agrees with; none for SFT.
    pub accuracy: Option<f64>,
    /// Seconds since this process started training.
    pub elapsed_s: f64,
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("step", DataType::UInt64, false),
        Field::new("epoch", DataType::Float64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("lr", DataType::Float64, false),
        Field::new("tokens", DataType::UInt64, false),
        Field::new("tokens_per_s", DataType::Float64, false),
        Field::new("accuracy", DataType::Float64, true),
        Field::new("elapsed_s", DataType::Float64, false),
    ])
}

/// The rows as Parquet bytes.
pub(crate) fn to_parquet(rows: &[MetricRow]) -> Result<Vec<u8>> {
    let f64s = |f: fn(&MetricRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
    };
    let u64s = |f: fn(&MetricRow) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
    };
    let columns = vec![
        u64s(|r| r.step),
        f64s(|r| r.epoch),
        f64s(|r| r.loss),
        f64s(|r| r.lr),
        u64s(|r| r.tokens),
        f64s(|r| r.tokens_per_s),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.accuracy))) as ArrayRef,
        f64s(|r| r.elapsed_s),
    ];
    parquet_bytes("metrics", schema(), columns)
}

/// One record batch of `columns` as Parquet bytes; errors name `what`.
pub(crate) fn parquet_bytes(what: &str, schema: Schema, columns: Vec<ArrayRef>) -> Result<Vec<u8>> {
    let schema = Arc::new(schema);
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| Error::Data(format!("{what}: {e}")))?;
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, None)
        .map_err(|e| Error::Data(format!("{what}: {e}")))?;
    writer
        .write(&batch)
        .and_then(|_| writer.close().map(|_| ()))
        .map_err(|e| Error::Data(format!("{what}: {e}")))?;
    Ok(bytes)
}
