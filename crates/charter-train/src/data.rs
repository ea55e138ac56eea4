//! Training examples from charter's tables, and their tokenisation.
//!
//! SFT reads `revisions` tables (SL-CAI's targets) and, mixed in, any
//! `responses` tables (helpfulness samples, as the paper mixes in the
//! helpful model's answers). The preference model and DPO read `labels`.
//! Every example keeps its row id: the shuffle order derives from it, so
//! the order does not depend on how the rows were laid out in the files.

use std::path::{Path, PathBuf};

use charter_model::{ChatTemplate, Message, ModelDir, TextTokenizer, encode_chat};
use charter_table::{InputRef, Label, Response, Revision, TableFile, Target};

use crate::{Error, Result};

/// One supervised example: a prompt and the answer to learn.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// The source row's id.
    pub id: String,
    /// The user's prompt.
    pub prompt: String,
    /// The answer to learn.
    pub response: String,
    /// Whether the answer ended on its own (it then ends with the model's
    /// end-of-turn token); a cut-off answer is learnt without one.
    pub complete: bool,
}

/// One AI-feedback comparison: two answers and the probability that A is better.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceExample {
    /// The label row's id.
    pub id: String,
    /// The prompt both answer.
    pub prompt: String,
    /// Answer A.
    pub a: String,
    /// Answer B.
    pub b: String,
    /// The soft label: probability that A is better.
    pub p_a: f64,
}

/// One classifier example: a user message (and, for an output guard, an
/// answer) with its soft target.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierExample {
    /// The target row's id.
    pub id: String,
    /// The user message.
    pub text: String,
    /// The answer judged, for an output guard.
    pub answer: Option<String>,
    /// The probability to learn that the content is blocked.
    pub target: f64,
    /// The label of the category it was generated for.
    pub harmful: bool,
}

/// Reads classifier examples from a `targets` table. The target of a row is
/// `label_weight` × its category's label (1 harmful, 0 harmless) plus
/// (1 − `label_weight`) × the labeller's `p_harmful`.
pub fn read_targets(path: &Path, label_weight: f64) -> Result<(Vec<ClassifierExample>, InputRef)> {
    let table = TableFile::open(path)?;
    let rows = table.rows::<Target>()?;
    let mut examples = Vec::with_capacity(rows.len());
    for (i, r) in rows.into_iter().enumerate() {
        let harmful = match r.label.as_str() {
            "harmful" => true,
            "harmless" => false,
            other => {
                return Err(Error::Input(format!(
                    "{}: row {}: label {other:?} is neither \"harmful\" nor \"harmless\"",
                    path.display(),
                    i + 1
                )));
            }
        };
        if !(0.0..=1.0).contains(&r.p_harmful) {
            return Err(Error::Input(format!(
                "{}: row {}: p_harmful = {} is not a probability",
                path.display(),
                i + 1,
                r.p_harmful
            )));
        }
        let label = if harmful { 1.0 } else { 0.0 };
        examples.push(ClassifierExample {
            id: r.id,
            text: r.text,
            answer: r.answer,
            target: label_weight * label + (1.0 - label_weight) * r.p_harmful,
            harmful,
        });
    }
    if examples.is_empty() {
        return Err(Error::Input(format!("{}: no targets", path.display())));
    }
    Ok((examples, input_ref(path, &table)?))
}

/// Reads SFT examples from `revisions` and `responses` tables, returning
/// them with each input's name and content hash (for provenance).
/// Rows cut off by the context (`finish_reason = context`) or with empty
/// text carry no answer and are skipped.
pub fn read_sft(paths: &[PathBuf]) -> Result<(Vec<SftExample>, Vec<InputRef>)> {
    let mut examples = Vec::new();
    let mut inputs = Vec::new();
    for path in paths {
        let table = TableFile::open(path)?;
        let rows: Vec<(String, String, String, String)> = match table.table_name() {
            Some("revisions") => table
                .rows::<Revision>()?
                .into_iter()
                .map(|r| (r.id, r.prompt, r.text, r.finish_reason))
                .collect(),
            Some("responses") => table
                .rows::<Response>()?
                .into_iter()
                .map(|r| (r.id, r.prompt, r.text, r.finish_reason))
                .collect(),
            other => {
                return Err(Error::Input(format!(
                    "{}: SFT trains on `revisions` (and `responses`) tables, not {}",
                    path.display(),
                    other.map_or("a file without charter metadata".into(), |n| format!(
                        "a `{n}` table"
                    ))
                )));
            }
        };
        inputs.push(input_ref(path, &table)?);
        examples.extend(
            rows.into_iter()
                .filter(|(_, _, text, finish)| finish != "context" && !text.trim().is_empty())
                .map(|(id, prompt, response, finish)| SftExample {
                    id,
                    prompt,
                    response,
                    complete: finish == "stop",
                }),
        );
    }
    if examples.is_empty() {
        return Err(Error::Input(format!(
            "{}: no rows with an answer to train on",
            display_paths(paths)
        )));
    }
    Ok((examples, inputs))
}

/// Reads preference examples from a `labels` table.
pub fn read_labels(path: &Path) -> Result<(Vec<PreferenceExample>, InputRef)> {
    let table = TableFile::open(path)?;
    let rows = table.rows::<Label>()?;
    let mut examples = Vec::with_capacity(rows.len());
    for (i, r) in rows.into_iter().enumerate() {
        if !(0.0..=1.0).contains(&r.p_a) {
            return Err(Error::Input(format!(
                "{}: row {}: p_a = {} is not a probability",
                path.display(),
                i + 1,
                r.p_a
            )));
        }
        examples.push(PreferenceExample {
            id: r.id,
            prompt: r.prompt,
            a: r.response_a,
            b: r.response_b,
            p_a: r.p_a,
        });
    }
    if examples.is_empty() {
        return Err(Error::Input(format!("{}: no labels", path.display())));
    }
    Ok((examples, input_ref(path, &table)?))
}

pub(crate) fn input_ref(path: &Path, table: &TableFile) -> Result<InputRef> {
    let content_hash = table
        .content_hash()
        .map(str::to_string)
        .ok_or_else(|| Error::Input(format!("{}: no recorded content hash", path.display())))?;
    Ok(InputRef {
        name: table.table_name().unwrap_or_default().to_string(),
        content_hash,
    })
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A tokenised conversation: prompt tokens, then answer tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Every token.
    pub ids: Vec<u32>,
    /// How many of them are the rendered prompt; the rest are the answer.
    pub prompt_len: usize,
}

impl Tokens {
    /// Number of answer tokens.
    pub fn answer_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// Turns prompts and answers into tokens the way generation sees them:
/// the chat template with a generation prompt, then the answer's tokens and
/// the end-of-turn token the engine stops on.
pub struct Formatter {
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    end_of_turn: u32,
    max_len: usize,
}

impl Formatter {
    /// A formatter for the model directory `dir`, cutting conversations at
    /// `max_len` tokens.
    pub fn new(dir: &ModelDir, max_len: usize) -> Result<Self> {
        let tokenizer = TextTokenizer::from_file(dir.tokenizer_path())?;
        let template = ChatTemplate::new(&dir.tokenizer_config.chat_template)?;
        let end_of_turn = dir
            .tokenizer_config
            .eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_id(t))
            .or(dir.config.eos_token_id)
            .ok_or_else(|| {
                Error::Input(format!(
                    "{}: the model names no end-of-turn token (tokenizer_config.json eos_token \
                     or config.json eos_token_id)",
                    dir.path.display()
                ))
            })?;
        if max_len < 2 {
            return Err(Error::invalid(
                "max_len",
                format!("must be at least 2, got {max_len}"),
            ));
        }
        Ok(Formatter {
            tokenizer,
            template,
            end_of_turn,
            max_len,
        })
    }

    /// The token that ends an answer.
    pub fn end_of_turn(&self) -> u32 {
        self.end_of_turn
    }

    /// `prompt` as a user turn and the opening of the assistant's turn: what
    /// an input guard reads. `None` when it is longer than `max_len`.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Option<Tokens>> {
        let ids = encode_chat(
            &self.tokenizer,
            &self.template,
            &[Message::new("user", prompt)],
            true,
        )?;
        let prompt_len = ids.len();
        Ok((prompt_len <= self.max_len).then_some(Tokens { ids, prompt_len }))
    }

    /// `prompt` as a user turn followed by `answer`, cut to `max_len`
    /// tokens from the end of the answer. `None` when the prompt leaves no
    /// room for a single answer token.
    pub fn encode(&self, prompt: &str, answer: &str, complete: bool) -> Result<Option<Tokens>> {
        let mut ids = encode_chat(
            &self.tokenizer,
            &self.template,
            &[Message::new("user", prompt)],
            true,
        )?;
        let prompt_len = ids.len();
        if prompt_len >= self.max_len {
            return Ok(None);
        }
        ids.extend(self.tokenizer.encode(answer, false)?);
        if complete {
            ids.push(self.end_of_turn);
        }
        ids.truncate(self.max_len);
        if ids.len() == prompt_len {
            return Ok(None);
        }
        Ok(Some(Tokens { ids, prompt_len }))
    }
}
