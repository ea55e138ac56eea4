//! The stages before generation: `import` (prompt files → a deduplicated
//! `prompts` table) and `dedup` (any charter table → the same table without
//! duplicate texts). Both rewrite their output unless it already records
//! the same build key.

use std::path::{Path, PathBuf};

use arrow_array::BooleanArray;
use charter_table::dedup::{DedupCounts, DedupOptions, NearDupOptions, Verdict, dedup};
use charter_table::import::{
    Format, ImportOptions, RawPrompt, ReadCounts, input_name, read_prompts,
};
use charter_table::{
    ColumnType, InputRef, KEY_CONSTITUTION_HASH, KEY_MODEL_HASH, Output, PROMPTS, Prompt,
    Provenance, Record, TableFile, TableSpec, TableSummary, TableWriter, Value, column_cells,
    finished_table, read_input,
};

use crate::error::{Error, Result};

/// Version of the import stage: bump when the same inputs would give different rows.
pub const IMPORT_VERSION: u32 = 1;
/// Version of the dedup stage.
pub const DEDUP_VERSION: u32 = 1;

/// Near-duplicate detection, shared by `import` and `dedup`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct DedupSettings {
    /// Jaccard similarity of word 5-gram sets at or above which two texts are near duplicates.
    #[arg(long, value_name = "F", default_value_t = DedupSettings::default().near_dup_threshold)]
    pub near_dup_threshold: f64,
    /// Drop near duplicates (`--no-near-dup`: keep them; exact duplicates
    /// are still dropped).
    #[arg(long = "no-near-dup", action = clap::ArgAction::SetFalse)]
    pub near_dup: bool,
    /// MinHash signature length.
    #[arg(long, value_name = "N", default_value_t = DedupSettings::default().num_perm, hide = true)]
    pub num_perm: usize,
}

impl Default for DedupSettings {
    fn default() -> Self {
        let near = NearDupOptions::default();
        DedupSettings {
            near_dup_threshold: near.threshold,
            near_dup: true,
            num_perm: near.num_perm,
        }
    }
}

impl DedupSettings {
    /// The dedup to run, checked; `exact` also drops exact duplicates.
    pub fn options(&self, exact: bool) -> Result<DedupOptions> {
        let t = self.near_dup_threshold;
        if !(t > 0.0 && t <= 1.0) {
            return Err(Error::invalid(
                "near_dup_threshold",
                format!("must be in (0, 1], got {t}"),
            ));
        }
        if self.num_perm == 0 {
            return Err(Error::invalid("num_perm", "must be at least 1"));
        }
        Ok(DedupOptions {
            exact,
            near: self.near_dup.then_some(NearDupOptions {
                threshold: t,
                num_perm: self.num_perm,
                ..NearDupOptions::default()
            }),
        })
    }
}

/// The dedup settings as recorded in provenance.
fn canonical_dedup(options: &DedupOptions) -> serde_json::Value {
    serde_json::json!({
        "exact": options.exact,
        "near": options.near.map(|n| serde_json::json!({
            "threshold": n.threshold,
            "num_perm": n.num_perm,
            "ngram": n.ngram,
        })),
    })
}

/// How prompt files are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImportFormat {
    /// From the file extension, else from the first bytes.
    #[default]
    Auto,
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header row.
    Csv,
    /// Parquet with a string column.
    Parquet,
    /// One prompt per line.
    Text,
}

/// Settings of an import: `prompts import`'s flags and a build file's
/// `import` stage.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ImportSettings {
    /// Field (JSONL) or column (CSV, Parquet) holding the prompt [default: `prompt`, else `text`].
    #[arg(long, value_name = "NAME")]
    pub field: Option<String>,
    /// Source name recorded on every row [default: each file's stem].
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Input format.
    #[arg(long, value_enum, default_value_t = ImportFormat::Auto)]
    pub format: ImportFormat,
    /// Skip and count invalid lines instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
    /// How duplicates are found.
    #[serde(skip)]
    #[command(flatten)]
    pub dedup: DedupSettings,
}

/// The provenance an import of `files` (their bytes) records.
pub fn import_provenance(
    files: &[(PathBuf, Vec<u8>)],
    settings: &ImportSettings,
) -> Result<Provenance> {
    Ok(Provenance {
        stage: "prompts.import".into(),
        stage_version: IMPORT_VERSION,
        settings: serde_json::json!({
            "field": settings.field,
            "source": settings.source,
            "skip_invalid": settings.skip_invalid,
            "dedup": canonical_dedup(&settings.dedup.options(true)?),
        }),
        inputs: files
            .iter()
            .map(|(path, bytes)| InputRef {
                name: input_name(path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                content_hash: blake3::hash(bytes).to_hex().to_string(),
            })
            .collect(),
        model_hash: None,
        constitution_hash: None,
    })
}

/// The summary of `output` when it is a finished table recording `build_key`.
fn finished(output: &Output, spec: &TableSpec, build_key: &str) -> Option<TableSummary> {
    match output {
        Output::Path(path) => finished_table(path, spec, build_key),
        Output::Stdout => None,
    }
}

/// What an import or dedup did.
#[derive(Debug, Clone)]
pub struct DedupSummary {
    /// The table written (or found up to date).
    pub table: TableSummary,
    /// The output already recorded the same build key: nothing was written.
    pub cached: bool,
    /// Records read, empty and invalid (import only).
    pub read: ReadCounts,
    /// Rows kept and dropped.
    pub dups: DedupCounts,
}

/// Imports the prompt files into the `prompts` table at `output`: read,
/// deduplicated (exact, then near duplicates), rows in file order.
/// `progress` hears what is being done.
pub fn import_prompts(
    files: &[PathBuf],
    settings: &ImportSettings,
    output: &Output,
    progress: &mut dyn FnMut(String),
) -> Result<DedupSummary> {
    let options = settings.dedup.options(true)?;
    if files.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        return Err(Error::Settings(
            "standard input (`-`) can be read only once".into(),
        ));
    }
    let mut read = Vec::with_capacity(files.len());
    for path in files {
        progress(format!("reading {}", path.display()));
        read.push((path.clone(), read_input(path)?));
    }
    let provenance = import_provenance(&read, settings)?;
    if let Some(table) = finished(output, &PROMPTS, &provenance.build_key(&PROMPTS)) {
        return Ok(DedupSummary {
            table,
            cached: true,
            read: ReadCounts::default(),
            dups: DedupCounts::default(),
        });
    }
    let inputs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let _claim = output.claim(&inputs)?;
    let import_options = ImportOptions {
        field: settings.field.clone(),
        source: settings.source.clone(),
        skip_invalid: settings.skip_invalid,
    };
    let mut raw: Vec<RawPrompt> = Vec::new();
    let mut counts = ReadCounts::default();
    for (path, bytes) in &read {
        let format = match settings.format {
            ImportFormat::Auto => {
                Format::from_extension(path).unwrap_or_else(|| Format::sniff(bytes))
            }
            ImportFormat::Jsonl => Format::Jsonl,
            ImportFormat::Csv => Format::Csv,
            ImportFormat::Parquet => Format::Parquet,
            ImportFormat::Text => Format::Text,
        };
        read_prompts(
            &input_name(path),
            bytes,
            format,
            &import_options,
            &mut raw,
            &mut counts,
        )?;
    }
    if raw.is_empty() {
        let names: Vec<String> = files
            .iter()
            .map(|p| input_name(p).display().to_string())
            .collect();
        return Err(Error::Settings(format!(
            "no prompts found in {} (read {} records: {} empty, {} invalid)",
            names.join(", "),
            counts.read,
            counts.empty,
            counts.invalid
        )));
    }
    progress(format!("deduplicating {} prompts", raw.len()));
    let verdicts = dedup(&raw, &options)?;
    let dups = DedupCounts::of(&verdicts);
    progress("writing".into());
    let rows: Vec<Prompt> = raw
        .into_iter()
        .zip(&verdicts)
        .filter(|(_, v)| **v == Verdict::Keep)
        .map(|(r, _)| {
            Prompt {
                id: String::new(),
                text: r.text,
                source: r.source,
                source_row: r.source_row,
                tags: r.tags,
            }
            .with_id()
        })
        .collect();
    let mut writer = TableWriter::create(output, &PROMPTS, &provenance)?;
    for chunk in rows.chunks(charter_table::ROW_GROUP_ROWS) {
        writer.write_rows(chunk)?;
    }
    Ok(DedupSummary {
        table: writer.finish()?,
        cached: false,
        read: counts,
        dups,
    })
}

/// Settings of a table dedup: `dedup`'s flags and a build file's `dedup` stage.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TableDedupSettings {
    /// Text column to compare.
    #[arg(long, default_value = "text")]
    pub column: String,
    /// Drop exact duplicates (`--no-exact`: only near duplicates are dropped).
    #[arg(long = "no-exact", action = clap::ArgAction::SetFalse)]
    pub exact: bool,
    /// How near duplicates are found.
    #[serde(skip)]
    #[command(flatten)]
    pub dedup: DedupSettings,
}

impl Default for TableDedupSettings {
    fn default() -> Self {
        TableDedupSettings {
            column: "text".into(),
            exact: true,
            dedup: DedupSettings::default(),
        }
    }
}

/// The provenance a dedup of `table` records: the input's model and
/// constitution hashes carry over.
pub fn dedup_provenance(table: &TableFile, settings: &TableDedupSettings) -> Result<Provenance> {
    let spec = table.core_spec()?;
    Ok(Provenance {
        stage: "dedup".into(),
        stage_version: DEDUP_VERSION,
        settings: serde_json::json!({
            "column": settings.column,
            "dedup": canonical_dedup(&settings.dedup.options(settings.exact)?),
        }),
        inputs: vec![InputRef {
            name: spec.name.to_string(),
            content_hash: table.content_hash_or_compute()?,
        }],
        model_hash: table.metadata().get(KEY_MODEL_HASH).cloned(),
        constitution_hash: table.metadata().get(KEY_CONSTITUTION_HASH).cloned(),
    })
}

/// Writes `table` without the rows whose `column` text duplicates an
/// earlier row's (null text is never a duplicate) to `output`.
pub fn dedup_table(
    table: &TableFile,
    settings: &TableDedupSettings,
    output: &Output,
    progress: &mut dyn FnMut(String),
) -> Result<DedupSummary> {
    let options = settings.dedup.options(settings.exact)?;
    let spec: &'static TableSpec = table.core_spec()?;
    let path = table.path().display().to_string();
    let schema = table.schema().clone();
    let column = schema.index_of(&settings.column).map_err(|_| {
        let text: Vec<&str> = spec
            .columns
            .iter()
            .filter(|c| c.ty == ColumnType::Utf8)
            .map(|c| c.name)
            .collect();
        Error::Settings(format!(
            "{path}: no column `{}` (text columns: {})",
            settings.column,
            text.join(", ")
        ))
    })?;
    let provenance = dedup_provenance(table, settings)?;
    if let Some(summary) = finished(output, spec, &provenance.build_key(spec)) {
        return Ok(DedupSummary {
            table: summary,
            cached: true,
            read: ReadCounts::default(),
            dups: DedupCounts::default(),
        });
    }
    let _claim = output.claim(&[table.path()])?;
    progress(format!("reading {path}"));
    let batches = table
        .batches()?
        .collect::<charter_table::Result<Vec<_>>>()?;
    let mut texts: Vec<&str> = Vec::with_capacity(table.num_rows() as usize);
    let mut nulls = Vec::new();
    for batch in &batches {
        let cells = column_cells(batch, column).ok_or_else(|| {
            Error::Settings(format!("{path}: column `{}` is not text", settings.column))
        })?;
        for cell in cells {
            match cell {
                Value::Str(s) => texts.push(s),
                Value::Null => {
                    nulls.push(texts.len());
                    texts.push("");
                }
                _ => {
                    return Err(Error::Settings(format!(
                        "{path}: row {}, column `{}`: not text",
                        texts.len(),
                        settings.column
                    )));
                }
            }
        }
    }
    progress(format!("deduplicating {} rows", texts.len()));
    let mut verdicts = dedup(&texts, &options)?;
    for i in nulls {
        verdicts[i] = Verdict::Keep;
    }
    let dups = DedupCounts::of(&verdicts);
    progress("writing".into());
    let mut writer = TableWriter::with_schema(output, spec, schema, &provenance)?;
    let mut offset = 0;
    for batch in &batches {
        let keep: BooleanArray = verdicts[offset..offset + batch.num_rows()]
            .iter()
            .map(|v| Some(*v == Verdict::Keep))
            .collect();
        offset += batch.num_rows();
        let kept = arrow_select::filter::filter_record_batch(batch, &keep)
            .map_err(|e| Error::Settings(format!("{path}: filtering rows: {e}")))?;
        writer.write(&kept)?;
    }
    Ok(DedupSummary {
        table: writer.finish()?,
        cached: false,
        read: ReadCounts {
            read: texts.len() as u64,
            ..ReadCounts::default()
        },
        dups,
    })
}
