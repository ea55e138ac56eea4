//! Quality flags for generated text, and the `filter` stage that records
//! them on a table and drops the rows they condemn.
//!
//! Small models degenerate in recognisable ways: a sentence repeated until
//! the token limit, a revision that comments on the answer instead of
//! rewriting it, a critique that says "I'm not sure" three times, a
//! revision identical to what it revises. Each is a [`Flag`], computed from
//! the row alone (its text, finish reason and, for revisions, the text it
//! revises), so filtering is deterministic and needs no model.
//!
//! Repetition follows Gopher's rules (Rae et al. 2021, appendix A): the
//! share of a text's characters inside word n-grams that occur more than
//! once, and the share of its lines that repeat an earlier line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use charter_table::{
    CRITIQUES, InputRef, KEY_CONSTITUTION_HASH, KEY_MODEL_HASH, Output, Provenance, RESPONSES,
    REVISIONS, TableFile, TableSpec, TableSummary, TableWriter, finished_table,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Version of the filter stage: bump when the same input and settings would flag differently.
pub const FILTER_VERSION: u32 = 1;

/// The column `filter` adds: the flags of each kept row, in [`Flag`] order.
pub const FLAGS_COLUMN: &str = "quality_flags";

/// Why a row is flagged.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// Fewer words than `min_words`.
    Short,
    /// Cut off at the token limit (`finish_reason = "length"`).
    Truncated,
    /// Repeats itself: too many characters in repeated word n-grams, or too
    /// many repeated lines.
    Repetition,
    /// Talks about the answer ("the response", "the assistant's reply")
    /// instead of being one. Answers and revisions only.
    Meta,
    /// Refuses or evades in its opening ("I'm sorry, but", "I'm not sure").
    Refusal,
    /// A revision (nearly) identical to the text it revises.
    Unchanged,
}

impl Flag {
    /// Every flag, in the order flags are listed.
    pub const ALL: [Flag; 6] = [
        Flag::Short,
        Flag::Truncated,
        Flag::Repetition,
        Flag::Meta,
        Flag::Refusal,
        Flag::Unchanged,
    ];

    /// The flags that drop a row by default: all but `refusal`, since a
    /// harmless answer may rightly refuse.
    pub const DROPPED_BY_DEFAULT: [Flag; 5] = [
        Flag::Short,
        Flag::Truncated,
        Flag::Repetition,
        Flag::Meta,
        Flag::Unchanged,
    ];

    /// The name in tables and settings.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Short => "short",
            Flag::Truncated => "truncated",
            Flag::Repetition => "repetition",
            Flag::Meta => "meta",
            Flag::Refusal => "refusal",
            Flag::Unchanged => "unchanged",
        }
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Phrases that mark text about an answer rather than an answer.
const META_PHRASES: [&str; 14] = [
    "this response",
    "the response",
    "the original response",
    "the revised response",
    "the assistant's",
    "the ai's",
    "the user's last reply",
    "the last reply",
    "the answer to this question",
    "the original answer",
    "the revised answer",
    "the critique",
    "revised response:",
    "here is a revised",
];

/// Openings of refusals and evasions.
const REFUSAL_PHRASES: [&str; 16] = [
    "i can't",
    "i cannot",
    "i can not",
    "i won't",
    "i will not",
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "i'm unable",
    "i am unable",
    "i'm not able",
    "i'm not capable",
    "as an ai",
    "i must decline",
    "i'm not sure",
    "i don't know",
];

/// Characters at the start of a text searched for refusal phrases.
const REFUSAL_WINDOW: usize = 160;

/// Settings of the filter stage: `charter filter`'s flags and a build file's `filter` stage.
#[derive(Debug, Clone, PartialEq, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct FilterSettings {
    /// Flags that drop a row (comma-separated; `--drop` alone drops none
    /// and only records flags). Kept rows list their flags in `quality_flags`.
    #[arg(long, value_name = "FLAGS", value_delimiter = ',', num_args = 0..,
          default_values_t = Flag::DROPPED_BY_DEFAULT)]
    pub drop: Vec<Flag>,
    /// Texts with fewer words are `short`.
    #[arg(long, value_name = "N", default_value_t = FilterSettings::default().min_words)]
    pub min_words: usize,
    /// Words per n-gram when measuring repetition.
    #[arg(long, value_name = "N", default_value_t = FilterSettings::default().repeat_ngram)]
    pub repeat_ngram: usize,
    /// Share of characters inside repeated n-grams above which a text is `repetition`.
    #[arg(long, value_name = "F", default_value_t = FilterSettings::default().max_repeated_ngrams)]
    pub max_repeated_ngrams: f64,
    /// Share of lines repeating an earlier line above which a text is `repetition`.
    #[arg(long, value_name = "F", default_value_t = FilterSettings::default().max_repeated_lines)]
    pub max_repeated_lines: f64,
    /// Jaccard similarity of word 3-gram sets at or above which a revision is `unchanged`.
    #[arg(long, value_name = "F", default_value_t = FilterSettings::default().max_parent_similarity)]
    pub max_parent_similarity: f64,
    /// Phrases (matched case-insensitively anywhere) that make an answer `meta`
    /// (repeatable; replaces the defaults).
    #[arg(long, value_name = "TEXT",
          default_values_t = META_PHRASES.map(String::from))]
    pub meta_phrases: Vec<String>,
    /// Phrases (matched case-insensitively in the first 160 characters) that
    /// make a text a `refusal` (repeatable; replaces the defaults).
    #[arg(long, value_name = "TEXT",
          default_values_t = REFUSAL_PHRASES.map(String::from))]
    pub refusal_phrases: Vec<String>,
}

impl Default for FilterSettings {
    fn default() -> Self {
        FilterSettings {
            drop: Flag::DROPPED_BY_DEFAULT.to_vec(),
            min_words: 3,
            repeat_ngram: 5,
            max_repeated_ngrams: 0.2,
            max_repeated_lines: 0.3,
            max_parent_similarity: 0.9,
            meta_phrases: META_PHRASES.map(String::from).to_vec(),
            refusal_phrases: REFUSAL_PHRASES.map(String::from).to_vec(),
        }
    }
}

impl FilterSettings {
    /// Checks the values a user can get wrong; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("max_repeated_ngrams", self.max_repeated_ngrams),
            ("max_repeated_lines", self.max_repeated_lines),
            ("max_parent_similarity", self.max_parent_similarity),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::invalid(
                    field,
                    format!("must be in [0, 1], got {value}"),
                ));
            }
        }
        if self.repeat_ngram == 0 {
            return Err(Error::invalid("repeat_ngram", "must be at least 1"));
        }
        Ok(())
    }

    /// The settings that determine the output, as recorded in provenance.
    fn canonical(&self) -> serde_json::Value {
        let drop: std::collections::BTreeSet<Flag> = self.drop.iter().copied().collect();
        let lower = |v: &[String]| v.iter().map(|p| fold(p)).collect::<Vec<_>>();
        serde_json::json!({
            "drop": drop,
            "min_words": self.min_words,
            "repeat_ngram": self.repeat_ngram,
            "max_repeated_ngrams": self.max_repeated_ngrams,
            "max_repeated_lines": self.max_repeated_lines,
            "max_parent_similarity": self.max_parent_similarity,
            "meta_phrases": lower(&self.meta_phrases),
            "refusal_phrases": lower(&self.refusal_phrases),
        })
    }

    /// A judge of texts under these settings.
    pub fn judge(&self) -> Judge<'_> {
        let folded = |v: &[String]| v.iter().map(|p| fold(p)).collect();
        Judge {
            settings: self,
            meta: folded(&self.meta_phrases),
            refusal: folded(&self.refusal_phrases),
        }
    }
}

/// Flags texts under one [`FilterSettings`], its phrase lists folded once.
pub struct Judge<'a> {
    settings: &'a FilterSettings,
    meta: Vec<String>,
    refusal: Vec<String>,
}

impl Judge<'_> {
    /// The flags of one text. `finish_reason` is the generation's, when
    /// known; `parent` the text a revision revises; `answer` says whether
    /// the text should be an answer (so talk about answers is `meta`).
    pub fn flags(
        &self,
        text: &str,
        finish_reason: Option<&str>,
        parent: Option<&str>,
        answer: bool,
    ) -> Vec<Flag> {
        let (s, folded) = (self.settings, fold(text));
        let mut flags = Vec::new();
        if text.split_whitespace().count() < s.min_words {
            flags.push(Flag::Short);
        }
        if finish_reason == Some("length") {
            flags.push(Flag::Truncated);
        }
        if repeated_ngram_share(text, s.repeat_ngram) > s.max_repeated_ngrams
            || repeated_line_share(text) > s.max_repeated_lines
        {
            flags.push(Flag::Repetition);
        }
        if answer && self.meta.iter().any(|p| folded.contains(p.as_str())) {
            flags.push(Flag::Meta);
        }
        let opening: String = folded.chars().take(REFUSAL_WINDOW).collect();
        if self.refusal.iter().any(|p| opening.contains(p.as_str())) {
            flags.push(Flag::Refusal);
        }
        if let Some(parent) = parent
            && word_ngram_jaccard(text, parent, 3) >= s.max_parent_similarity
        {
            flags.push(Flag::Unchanged);
        }
        flags
    }
}

/// Lower case with typographic apostrophes made plain, for phrase matching.
fn fold(text: &str) -> String {
    text.to_lowercase().replace(['\u{2019}', '\u{2018}'], "'")
}

/// The share of a text's non-space characters that lie inside word
/// `n`-grams occurring more than once (each word counted once however many
/// repeated n-grams cover it). Words keep their punctuation.
pub fn repeated_ngram_share(text: &str, n: usize) -> f64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    let total: usize = words.iter().map(|w| w.chars().count()).sum();
    if n == 0 || words.len() < n || total == 0 {
        return 0.0;
    }
    let mut counts: HashMap<&[&str], u32> = HashMap::new();
    for gram in words.windows(n) {
        *counts.entry(gram).or_default() += 1;
    }
    let mut covered = vec![false; words.len()];
    for (i, gram) in words.windows(n).enumerate() {
        if counts[gram] > 1 {
            covered[i..i + n].fill(true);
        }
    }
    let repeated: usize = words
        .iter()
        .zip(&covered)
        .filter(|(_, c)| **c)
        .map(|(w, _)| w.chars().count())
        .sum();
    repeated as f64 / total as f64
}

/// The share of a text's non-blank lines that repeat an earlier line
/// (compared trimmed).
pub fn repeated_line_share(text: &str) -> f64 {
    let mut seen = HashSet::new();
    let (mut lines, mut repeats) = (0usize, 0usize);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        lines += 1;
        if !seen.insert(line) {
            repeats += 1;
        }
    }
    if lines == 0 {
        0.0
    } else {
        repeats as f64 / lines as f64
    }
}

/// Jaccard similarity of two texts' sets of lower-cased word `n`-grams
/// (texts shorter than `n` words count as one n-gram of all their words).
pub fn word_ngram_jaccard(a: &str, b: &str, n: usize) -> f64 {
    let grams = |t: &str| -> HashSet<Vec<String>> {
        let words: Vec<String> = t.split_whitespace().map(str::to_lowercase).collect();
        if words.len() < n {
            return [words].into_iter().collect();
        }
        words.windows(n).map(<[String]>::to_vec).collect()
    };
    let (a, b) = (grams(a), grams(b));
    let union = a.union(&b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

/// The columns a table's rows are judged by.
struct Judged {
    /// Whether the text should be an answer (`meta` applies).
    answer: bool,
    /// The column holding the text a row revises.
    parent: Option<&'static str>,
}

fn judged(spec: &TableSpec) -> Option<Judged> {
    match spec.name {
        n if n == RESPONSES.name => Some(Judged {
            answer: true,
            parent: None,
        }),
        n if n == REVISIONS.name => Some(Judged {
            answer: true,
            parent: Some("response"),
        }),
        n if n == CRITIQUES.name => Some(Judged {
            answer: false,
            parent: None,
        }),
        _ => None,
    }
}

/// The provenance a filter of `table` records: the input's model and
/// constitution hashes carry over.
pub fn filter_provenance(table: &TableFile, settings: &FilterSettings) -> Result<Provenance> {
    let spec = table.core_spec()?;
    Ok(Provenance {
        stage: "filter".into(),
        stage_version: FILTER_VERSION,
        settings: settings.canonical(),
        inputs: vec![InputRef {
            name: spec.name.to_string(),
            content_hash: table.content_hash_or_compute()?,
        }],
        model_hash: table.metadata().get(KEY_MODEL_HASH).cloned(),
        constitution_hash: table.metadata().get(KEY_CONSTITUTION_HASH).cloned(),
    })
}

/// What a filter did.
#[derive(Debug, Clone)]
pub struct FilterSummary {
    /// The table written (or found up to date).
    pub table: TableSummary,
    /// The output already recorded the same build key: nothing was written.
    pub cached: bool,
    /// Rows read.
    pub read: u64,
    /// Rows carrying each flag (a row may carry several).
    pub flagged: BTreeMap<Flag, u64>,
    /// Rows dropped.
    pub dropped: u64,
}

fn batch_flags(
    table: &TableFile,
    batch: &RecordBatch,
    settings: &FilterSettings,
) -> Result<Vec<Vec<Flag>>> {
    let path = table.path().display();
    let spec = table.core_spec()?;
    let judged = judged(spec).ok_or_else(|| {
        Error::Settings(format!(
            "{path}: `filter` judges responses, critiques or revisions tables, not a `{}` table",
            spec.name
        ))
    })?;
    let text = |name: &str| -> Result<&StringArray> {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| Error::Settings(format!("{path}: no text column `{name}`")))
    };
    let texts = text("text")?;
    let finish = text("finish_reason")?;
    let parents = judged.parent.map(text).transpose()?;
    fn cell(a: &StringArray, row: usize) -> Option<&str> {
        (!a.is_null(row)).then(|| a.value(row))
    }
    let judge = settings.judge();
    Ok((0..batch.num_rows())
        .into_par_iter()
        .map(|row| {
            judge.flags(
                cell(texts, row).unwrap_or(""),
                cell(finish, row),
                parents.and_then(|p| cell(p, row)),
                judged.answer,
            )
        })
        .collect())
}

/// Writes the rows of a responses, critiques or revisions `table` that no
/// dropping flag condemns to `output`, each with its flags in a
/// `quality_flags` column (replacing one the input already has).
pub fn filter_table(
    table: &TableFile,
    settings: &FilterSettings,
    output: &Output,
) -> Result<FilterSummary> {
    settings.validate()?;
    let spec: &'static TableSpec = table.core_spec()?;
    let provenance = filter_provenance(table, settings)?;
    if let Output::Path(path) = output
        && let Some(summary) = finished_table(path, spec, &provenance.build_key(spec))
    {
        return Ok(FilterSummary {
            table: summary,
            cached: true,
            read: 0,
            flagged: BTreeMap::new(),
            dropped: 0,
        });
    }
    let _claim = output.claim(&[table.path()])?;
    let path = table.path().display().to_string();
    let keep_columns: Vec<usize> = (0..table.schema().fields().len())
        .filter(|&i| table.schema().field(i).name() != FLAGS_COLUMN)
        .collect();
    let mut fields: Vec<Arc<Field>> = keep_columns
        .iter()
        .map(|&i| Arc::new(table.schema().field(i).clone()))
        .collect();
    let list_field = Field::new_list_field(DataType::Utf8, false);
    fields.push(Arc::new(Field::new(
        FLAGS_COLUMN,
        DataType::List(Arc::new(list_field.clone())),
        false,
    )));
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        table.schema().metadata().clone(),
    ));
    let mut writer = TableWriter::with_schema(output, spec, schema.clone(), &provenance)?;
    let (mut read, mut dropped) = (0u64, 0u64);
    let mut flagged: BTreeMap<Flag, u64> = BTreeMap::new();
    for batch in table.batches()? {
        let batch = batch?;
        let flags = batch_flags(table, &batch, settings)?;
        read += flags.len() as u64;
        let mut list = ListBuilder::new(StringBuilder::new()).with_field(list_field.clone());
        let keep: BooleanArray = flags
            .iter()
            .map(|row| {
                for f in row {
                    *flagged.entry(*f).or_default() += 1;
                    list.values().append_value(f.as_str());
                }
                list.append(true);
                let kept = !row.iter().any(|f| settings.drop.contains(f));
                dropped += u64::from(!kept);
                Some(kept)
            })
            .collect();
        let mut columns: Vec<ArrayRef> = keep_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        columns.push(Arc::new(list.finish()));
        let flagged_batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::Settings(format!("{path}: adding `{FLAGS_COLUMN}`: {e}")))?;
        let kept = arrow_select::filter::filter_record_batch(&flagged_batch, &keep)
            .map_err(|e| Error::Settings(format!("{path}: filtering rows: {e}")))?;
        writer.write(&kept)?;
    }
    Ok(FilterSummary {
        table: writer.finish()?,
        cached: false,
        read,
        flagged,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(text: &str) -> Vec<Flag> {
        FilterSettings::default()
            .judge()
            .flags(text, Some("stop"), None, true)
    }

    #[test]
    fn repetition_loops_are_flagged() {
        // Rows of the kind a small model writes at the default settings.
        for looped in [
            "It is not misleading. It is not misleading. It is not misleading. It is not misleading.",
            "I'm not sure. I'm not sure. I'm not sure.",
            "There are no hazardous products, but there are hazardous products. You can find a \
             medical facility, you can find a medical facility. You can find a medical facility. \
             You can find a medical facility.",
            "Be kind.\nBe kind.\nBe kind.\nThank you.",
        ] {
            assert!(flags(looped).contains(&Flag::Repetition), "{looped}");
        }
        let fluent = "Spreading rumours about a coworker can damage their reputation and your \
                      own. If something about their behaviour worries you, talk to them directly \
                      or raise it with your manager, and stick to what you have seen yourself.";
        assert_eq!(flags(fluent), Vec::<Flag>::new());
    }

    #[test]
    fn shares_are_exact() {
        // 8 words of 1 character; "a b" occurs twice and covers 4 of them.
        assert_eq!(repeated_ngram_share("a b c d a b e f", 2), 0.5);
        assert_eq!(repeated_ngram_share("a b c", 5), 0.0);
        assert_eq!(repeated_line_share("x\ny\n\nx\nx"), 0.5);
        assert_eq!(word_ngram_jaccard("a b c d", "a b c d", 3), 1.0);
        assert_eq!(word_ngram_jaccard("a b c d", "a b c e", 3), 1.0 / 3.0);
    }

    #[test]
    fn each_flag_has_its_case() {
        let settings = FilterSettings::default();
        let s = settings.judge();
        assert_eq!(flags("Yes."), vec![Flag::Short]);
        assert_eq!(
            s.flags("A fine answer that was cut", Some("length"), None, true),
            vec![Flag::Truncated]
        );
        assert_eq!(
            flags("This response is truthful and contains no harmful content at all."),
            vec![Flag::Meta]
        );
        // Critiques are about the answer by design.
        assert_eq!(
            s.flags("The response is rude to the user.", None, None, false),
            Vec::<Flag>::new()
        );
        assert_eq!(
            flags("I\u{2019}m sorry, but I can not help with that request today."),
            vec![Flag::Refusal]
        );
        let answer = "Ask your doctor before changing the dose of any medicine you take.";
        assert_eq!(
            s.flags(answer, None, Some(answer), true),
            vec![Flag::Unchanged]
        );
        assert_eq!(
            s.flags(answer, None, Some("Take twice the dose."), true),
            Vec::<Flag>::new()
        );
    }

    #[test]
    fn settings_are_checked() {
        let bad = FilterSettings {
            max_repeated_lines: 1.5,
            ..FilterSettings::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("max_repeated_lines")
        );
    }
}
