//! Reading prompt sets: JSONL, CSV, Parquet and plain text.
//!
//! The text is stored exactly as found; normalisation happens only when
//! hashing for dedup. A UTF-8 byte-order mark at the start of a text file is
//! not part of the text: Windows editors and Excel's "CSV UTF-8" put one there,
//! and it would otherwise break the first JSON line or start the first prompt.
//! Problems are reported by file and line, or counted and skipped with
//! [`ImportOptions::skip_invalid`].

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::read::{TableFile, column_cells};
use crate::value::Value;

/// An input file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
    /// A Parquet file with a string column.
    Parquet,
    /// One prompt per line.
    Text,
}

impl Format {
    /// The format named by a file's extension, if it names one.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Format::Jsonl,
            "csv" => Format::Csv,
            "parquet" | "pq" => Format::Parquet,
            "txt" | "text" => Format::Text,
            _ => return None,
        })
    }

    /// Guesses the format from the first bytes: Parquet's magic, a JSON
    /// object, or else plain text.
    pub fn sniff(bytes: &[u8]) -> Format {
        let bytes = strip_bom(bytes);
        if bytes.starts_with(b"PAR1") {
            Format::Parquet
        } else if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            Format::Jsonl
        } else {
            Format::Text
        }
    }
}

/// How to read prompt files.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The field (JSONL), column (CSV, Parquet) holding the prompt; by default
    /// `prompt`, falling back to `text`.
    pub field: Option<String>,
    /// The `source` value for every row; by default the file's stem.
    pub source: Option<String>,
    /// Count and skip invalid lines instead of failing on the first.
    pub skip_invalid: bool,
}

/// A prompt as read, before dedup and ids.
#[derive(Debug, Clone, PartialEq)]
pub struct RawPrompt {
    /// The text exactly as found.
    pub text: String,
    /// The source name.
    pub source: String,
    /// 1-based line or row in the file.
    pub source_row: u64,
    /// Labels from the input's other fields.
    pub tags: Vec<String>,
}

impl AsRef<str> for RawPrompt {
    /// The text, so raw prompts can be passed to [`dedup`](crate::dedup::dedup) as they are.
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// What reading found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    /// Records read (lines, CSV records, Parquet rows), blank JSONL lines excluded.
    pub read: u64,
    /// Records whose prompt is empty or only whitespace (skipped).
    pub empty: u64,
    /// Records that could not be read (skipped with `skip_invalid`).
    pub invalid: u64,
}

/// Reads the prompts of one file's bytes. `path` names the file in messages
/// and gives the default source name.
pub fn read_prompts(
    path: &Path,
    bytes: &[u8],
    format: Format,
    options: &ImportOptions,
    out: &mut Vec<RawPrompt>,
    counts: &mut ReadCounts,
) -> Result<()> {
    let source = match &options.source {
        Some(s) => s.clone(),
        None if path == Path::new(STDIN) => "stdin".to_string(),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let mut reader = Reader {
        path,
        source,
        options,
        out,
        counts,
    };
    match format {
        Format::Jsonl => reader.jsonl(strip_bom(bytes)),
        Format::Csv => reader.csv(strip_bom(bytes)),
        Format::Text => reader.text(strip_bom(bytes)),
        Format::Parquet => reader.parquet(bytes),
    }
}

/// `bytes` without a leading UTF-8 byte-order mark.
fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

struct Reader<'a> {
    path: &'a Path,
    source: String,
    options: &'a ImportOptions,
    out: &'a mut Vec<RawPrompt>,
    counts: &'a mut ReadCounts,
}

impl Reader<'_> {
    /// Records a problem: an error, or a count with `skip_invalid`.
    fn invalid(&mut self, line: u64, problem: String) -> Result<()> {
        if self.options.skip_invalid {
            self.counts.invalid += 1;
            Ok(())
        } else {
            Err(Error::Input {
                path: self.path.to_path_buf(),
                line,
                problem,
            })
        }
    }

    fn push(&mut self, text: String, line: u64, tags: Vec<String>) {
        if text.trim().is_empty() {
            self.counts.empty += 1;
        } else {
            self.out.push(RawPrompt {
                text,
                source: self.source.clone(),
                source_row: line,
                tags,
            });
        }
    }

    fn utf8<'b>(&mut self, bytes: &'b [u8], line: u64) -> Result<Option<&'b str>> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                self.invalid(
                    line,
                    format!("not valid UTF-8 (at byte {} of the line)", e.valid_up_to()),
                )?;
                Ok(None)
            }
        }
    }

    fn field_names(&self) -> Vec<String> {
        match &self.options.field {
            Some(f) => vec![f.clone()],
            None => vec!["prompt".to_string(), "text".to_string()],
        }
    }

    fn missing(&self) -> String {
        match &self.options.field {
            Some(f) => format!("no field `{f}`"),
            None => "no field `prompt` (or `text`)".to_string(),
        }
    }

    fn jsonl(&mut self, bytes: &[u8]) -> Result<()> {
        let names = self.field_names();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = i as u64 + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.counts.read += 1;
            let Some(text) = self.utf8(raw, line)? else {
                continue;
            };
            let object = match serde_json::from_str::<Json>(text) {
                Ok(Json::Object(map)) => map,
                Ok(other) => {
                    self.invalid(
                        line,
                        format!("expected a JSON object, found {}", json_kind(&other)),
                    )?;
                    continue;
                }
                Err(e) => {
                    self.invalid(line, format!("invalid JSON: {e}"))?;
                    continue;
                }
            };
            let Some((field, value)) = names.iter().find_map(|n| object.get(n).map(|v| (n, v)))
            else {
                let problem = self.missing();
                self.invalid(line, problem)?;
                continue;
            };
            let prompt = match value {
                Json::String(s) => s.clone(),
                Json::Null => String::new(),
                other => {
                    self.invalid(
                        line,
                        format!("field `{field}` is {}, expected a string", json_kind(other)),
                    )?;
                    continue;
                }
            };
            let mut keys: Vec<&String> = object.keys().filter(|k| !names.contains(k)).collect();
            keys.sort();
            let mut tags = Vec::new();
            for key in keys {
                json_tags(key, &object[key.as_str()], &mut tags);
            }
            self.push(prompt, line, tags);
        }
        Ok(())
    }

    fn csv(&mut self, bytes: &[u8]) -> Result<()> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(bytes);
        let headers = match rdr.byte_headers() {
            Ok(h) => h.clone(),
            Err(e) => {
                return Err(Error::Input {
                    path: self.path.to_path_buf(),
                    line: 1,
                    problem: format!("CSV header: {e}"),
                });
            }
        };
        let header_names: Vec<String> = headers
            .iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect();
        let names = self.field_names();
        let Some(col) = names
            .iter()
            .find_map(|n| header_names.iter().position(|h| h == n))
        else {
            return Err(Error::Input {
                path: self.path.to_path_buf(),
                line: 1,
                problem: format!(
                    "{} in the CSV header (columns: {})",
                    self.missing().replace("field", "column"),
                    header_names.join(", ")
                ),
            });
        };
        let mut record = csv::ByteRecord::new();
        loop {
            let line = rdr.position().line();
            match rdr.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    self.counts.read += 1;
                    let line = e.position().map(|p| p.line()).unwrap_or(line);
                    self.invalid(line, format!("CSV: {e}"))?;
                    // A malformed record may leave the reader unable to continue.
                    if !matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. }) {
                        break;
                    }
                    continue;
                }
            }
            self.counts.read += 1;
            let line = record.position().map(|p| p.line()).unwrap_or(line);
            let mut fields = Vec::with_capacity(record.len());
            let mut ok = true;
            for f in record.iter() {
                match self.utf8(f, line)? {
                    Some(s) => fields.push(s.to_string()),
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                continue;
            }
            let tags = fields
                .iter()
                .enumerate()
                .filter(|(i, v)| *i != col && !v.is_empty())
                .map(|(i, v)| tag(&header_names[i], v))
                .collect();
            self.push(fields[col].clone(), line, tags);
        }
        Ok(())
    }

    fn text(&mut self, bytes: &[u8]) -> Result<()> {
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        if bytes.is_empty() {
            return Ok(());
        }
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = i as u64 + 1;
            self.counts.read += 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if let Some(text) = self.utf8(raw, line)? {
                self.push(text.to_string(), line, Vec::new());
            }
        }
        Ok(())
    }

    fn parquet(&mut self, bytes: &[u8]) -> Result<()> {
        let table = TableFile::from_bytes(self.path, bytes.to_vec())?;
        let names = self.field_names();
        let schema = table.schema().clone();
        let Some(col) = names.iter().find_map(|n| schema.index_of(n).ok()) else {
            let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(Error::Column {
                path: self.path.to_path_buf(),
                column: names[0].clone(),
                problem: format!("missing (columns: {})", columns.join(", ")),
            });
        };
        let mut row = 0u64;
        for batch in table.batches()? {
            let batch = batch?;
            // Every readable column but a row id becomes tags.
            let cells: Vec<Option<Vec<Value<'_>>>> = (0..batch.num_columns())
                .map(|i| {
                    if i == col || schema.field(i).name() != "id" {
                        column_cells(&batch, i)
                    } else {
                        None
                    }
                })
                .collect();
            let Some(texts) = &cells[col] else {
                return Err(Error::Column {
                    path: self.path.to_path_buf(),
                    column: schema.field(col).name().clone(),
                    problem: format!(
                        "has type {}, expected a string",
                        schema.field(col).data_type()
                    ),
                });
            };
            for r in 0..batch.num_rows() {
                row += 1;
                self.counts.read += 1;
                let text = match &texts[r] {
                    Value::Str(s) => s.to_string(),
                    Value::Null => String::new(),
                    _ => {
                        let problem =
                            format!("column `{}` is not a string", schema.field(col).name());
                        self.invalid(row, problem)?;
                        continue;
                    }
                };
                let mut tags = Vec::new();
                for (i, c) in cells.iter().enumerate() {
                    let Some(c) = c else { continue };
                    if i == col {
                        continue;
                    }
                    let name = schema.field(i).name();
                    match &c[r] {
                        Value::Str(s) if !s.is_empty() => tags.push(tag(name, s)),
                        Value::List(items) => tags.extend(items.iter().map(|s| tag(name, s))),
                        Value::UInt(v) => tags.push(tag(name, &v.to_string())),
                        Value::Int(v) => tags.push(tag(name, &v.to_string())),
                        Value::Bool(v) => tags.push(tag(name, &v.to_string())),
                        _ => {}
                    }
                }
                self.push(text, row, tags);
            }
        }
        Ok(())
    }
}

/// A tag from a field: the `tags` field's values as they are, others as `field:value`.
fn tag(field: &str, value: &str) -> String {
    if field == "tags" {
        value.to_string()
    } else {
        format!("{field}:{value}")
    }
}

fn json_tags(key: &str, value: &Json, out: &mut Vec<String>) {
    match value {
        Json::String(s) if !s.is_empty() => out.push(tag(key, s)),
        Json::Number(n) => out.push(tag(key, &n.to_string())),
        Json::Bool(b) => out.push(tag(key, &b.to_string())),
        Json::Array(items) => {
            for item in items {
                if !item.is_array() {
                    json_tags(key, item, out);
                }
            }
        }
        _ => {}
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The display path of an input (`<stdin>` for `-`).
pub fn input_name(path: &Path) -> PathBuf {
    if path == Path::new("-") {
        PathBuf::from(STDIN)
    } else {
        path.to_path_buf()
    }
}

/// How standard input is named in messages.
const STDIN: &str = "<stdin>";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BOM: &str = "\u{feff}";

    fn texts(bytes: &[u8], format: Format) -> Vec<String> {
        let mut out = Vec::new();
        let mut counts = ReadCounts::default();
        let path = Path::new("bom.txt");
        read_prompts(
            path,
            bytes,
            format,
            &ImportOptions::default(),
            &mut out,
            &mut counts,
        )
        .unwrap();
        out.into_iter().map(|p| p.text).collect()
    }

    #[test]
    fn a_leading_byte_order_mark_is_not_text() {
        let jsonl = format!("{BOM}{{\"prompt\": \"first\"}}\n{{\"prompt\": \"second\"}}\n");
        assert_eq!(Format::sniff(jsonl.as_bytes()), Format::Jsonl);
        assert_eq!(texts(jsonl.as_bytes(), Format::Jsonl), ["first", "second"]);
        let csv = format!("{BOM}prompt,id\nfirst,1\n");
        assert_eq!(texts(csv.as_bytes(), Format::Csv), ["first"]);
        let text = format!("{BOM}first\nsecond\n");
        assert_eq!(texts(text.as_bytes(), Format::Text), ["first", "second"]);
        // Only a leading mark is dropped; one inside the text is kept as found.
        let inner = format!("first{BOM}\n");
        assert_eq!(
            texts(inner.as_bytes(), Format::Text),
            [format!("first{BOM}")]
        );
    }
}
