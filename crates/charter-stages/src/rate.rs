//! `rate`: one answer at a time against a principle, the reward of direct
//! RLAIF (Lee et al. 2023 §2.4, "d-RLAIF"), where the labeller's score is
//! the reward and no preference model is trained.
//!
//! For each response or revision, one preference principle is drawn from
//! the row's seed. The rater sees the conversation, the answer and the
//! principle's question, and is asked for a rating from 1 to 9; after the
//! answer prefix ("Rating: ") the log-probabilities of the nine digits are
//! read with the engine's scoring mode — one pass per row, nothing
//! generated or parsed — normalised over the digits, and their expectation
//! is the row's `score`; `reward` maps it to [-1, 1]. Lee et al. rate from
//! 1 to 10; one digit per rating keeps every option a single event (with
//! 10, the answer "1" would be the start of "10").
//!
//! `rating_mass`, the probability the rater gives to answering with a digit
//! at all, says how much of its judgement the score rests on: a rater that
//! would rather write prose than a digit is not rating.
//!
//! With chain of thought (`cot`, Lee et al.'s "CoT" prompting) the rater is
//! asked (the `rate_cot` template) to reason first; the reasoning is
//! sampled with the row's seed, cut where the rater starts the rating
//! itself ("Rating:"), kept in the row, and the digits are then read after
//! it exactly as without it.

use std::path::Path;

use charter_model::Message;
use charter_table::{
    InputRef, Opened, Provenance, RATINGS, Rating, Record, Response, Revision, ShardedWriter,
    TableFile,
};
use serde_json::json;

use crate::constitution::{Constitution, PreferencePrinciple};
use crate::error::{Error, Result};
use crate::generate::{GenSettings, Generation, StageProgress, StageSummary, windows};
use crate::label::{Choices, choice_log_probs, draw, reason, shared_prefix, spelled_choices};
use crate::model::Model;
use crate::seed::row_seed;

/// Version of the rate stage.
pub const RATE_VERSION: u32 = 1;

/// The ratings the rater chooses from, lowest first.
pub const RATINGS_SCALE: [&str; 9] = ["1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Settings of a rate run: `charter rate`'s flags and a build file's `rate` stage.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RateSettings {
    /// Let the rater reason before rating (the reasoning is kept in
    /// `reasoning`; the sampling flags then apply to it).
    #[arg(long)]
    pub cot: bool,
    /// Seed, window and system prompt; with `cot`, the reasoning's sampling.
    #[serde(skip)]
    #[command(flatten)]
    pub generation: GenSettings,
}

impl RateSettings {
    /// The settings that determine the output, as recorded in provenance.
    pub fn canonical(&self) -> serde_json::Value {
        let g = &self.generation;
        if self.cot {
            // What the reasoning was sampled with decides the rating.
            let mut v = g.canonical();
            v["cot"] = json!(true);
            return v;
        }
        json!({
            "seed": g.seed,
            "system": g.system,
            "window": g.shard_rows,
        })
    }
}

/// The provenance a rate run over `input` records.
pub fn rate_provenance(
    input: &TableFile,
    settings: &RateSettings,
    model_hash: &str,
    constitution_hash: &str,
) -> Result<Provenance> {
    Ok(Provenance {
        stage: "rate".into(),
        stage_version: RATE_VERSION,
        settings: settings.canonical(),
        inputs: vec![InputRef {
            name: input.table_name().unwrap_or("responses").into(),
            content_hash: input.content_hash_or_compute()?,
        }],
        model_hash: Some(model_hash.to_string()),
        constitution_hash: Some(constitution_hash.to_string()),
    })
}

/// One answer to rate.
struct Item {
    id: String,
    prompt_id: String,
    prompt: String,
    response: String,
}

/// The answers of a responses or revisions table.
fn items(input: &TableFile) -> Result<Vec<Item>> {
    match input.table_name() {
        Some("responses") => Ok(input
            .rows::<Response>()?
            .into_iter()
            .map(|r| Item {
                id: r.id,
                prompt_id: r.prompt_id,
                prompt: r.prompt,
                response: r.text,
            })
            .collect()),
        Some("revisions") => Ok(input
            .rows::<Revision>()?
            .into_iter()
            .map(|r| Item {
                id: r.id,
                prompt_id: r.prompt_id,
                prompt: r.prompt,
                response: r.text,
            })
            .collect()),
        name => Err(Error::Settings(format!(
            "{}: `rate` rates the answers of a responses or revisions table, not a `{}` table",
            input.path().display(),
            name.unwrap_or("?")
        ))),
    }
}

/// The rater's conversation about one answer, up to its open assistant turn.
fn messages(
    c: &Constitution,
    settings: &RateSettings,
    prompt: &str,
    response: &str,
    question: &str,
) -> Result<Vec<Message>> {
    let mut m = settings.generation.system_messages();
    m.push(Message::new(
        "user",
        c.render(
            if settings.cot { "rate_cot" } else { "rate" },
            &json!({"conversation": format!("User: {prompt}"), "question": question,
                    "response": response}),
        )?,
    ));
    Ok(m)
}

/// A rating from the log-probabilities of the digits 1–9: the expected
/// rating over their normalised probabilities, and their total probability.
pub fn expected_rating(log_probs: &[f64]) -> (f64, f64) {
    let top = log_probs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = log_probs.iter().map(|lp| (lp - top).exp()).collect();
    let total: f64 = weights.iter().sum();
    let score = weights
        .iter()
        .enumerate()
        .map(|(i, w)| (i + 1) as f64 * w)
        .sum::<f64>()
        / total;
    (score, top.exp() * total)
}

/// One answer's rating.
#[derive(Debug, Clone, PartialEq)]
pub struct Rated {
    /// The preference principle drawn for the answer.
    pub principle: PreferencePrinciple,
    /// Expected rating, 1 to 9.
    pub score: f64,
    /// The rater's probability of answering with a digit at all.
    pub rating_mass: f64,
    /// The reasoning before the rating, with chain of thought.
    pub reasoning: Option<String>,
    /// Tokens generated for the reasoning.
    pub tokens: u64,
}

impl Rated {
    /// The score mapped to [-1, 1].
    pub fn reward(&self) -> f64 {
        (self.score - 5.0) / 4.0
    }
}

/// A rater ready to score answers: the constitution, the digits' tokens
/// after the answer prefix, and the instructions every row shares (prefilled
/// once per call).
pub struct Rater<'c> {
    constitution: &'c Constitution,
    settings: &'c RateSettings,
    choices: Choices,
    shared: Vec<u32>,
}

impl<'c> Rater<'c> {
    /// A rater with `model`'s tokenizer for `constitution`'s `rate` template.
    pub fn new(
        model: &Model,
        constitution: &'c Constitution,
        settings: &'c RateSettings,
    ) -> Result<Self> {
        let choices = spelled_choices(
            model,
            &constitution.templates.rate_answer_prefix,
            &RATINGS_SCALE,
        )?;
        // Instructions and system prompt, the same for every row.
        let probes = [("1", "2", "3"), ("4", "5", "6")]
            .iter()
            .map(|&(p, r, q)| messages(constitution, settings, p, r, q))
            .collect::<Result<Vec<_>>>()?;
        let shared = shared_prefix(model, &probes)?;
        Ok(Rater {
            constitution,
            settings,
            choices,
            shared,
        })
    }

    /// The principle the row with id `id` is rated against, drawn from the
    /// build seed and the id.
    pub fn principle(&self, id: &str) -> &'c PreferencePrinciple {
        draw(self.constitution, self.settings.generation.seed, id)
    }

    /// The seed of the reasoning about the row with id `id` (with chain of
    /// thought).
    pub fn reasoning_seed(&self, id: &str) -> u64 {
        row_seed("rate-cot", self.settings.generation.seed, &[id])
    }

    /// Ratings of `answers` (row id, prompt, answer), one pass per row
    /// against each row's [`Rater::principle`], after the rater's
    /// reasoning with chain of thought.
    pub fn rate(&self, model: &mut Model, answers: &[(&str, &str, &str)]) -> Result<Vec<Rated>> {
        let principles: Vec<&PreferencePrinciple> = answers
            .iter()
            .map(|(id, _, _)| self.principle(id))
            .collect();
        let mut contexts = answers
            .iter()
            .zip(&principles)
            .map(|((_, prompt, response), p)| {
                let m = messages(
                    self.constitution,
                    self.settings,
                    prompt,
                    response,
                    &p.question,
                )?;
                model.encode_conversation(&m)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut reasoning: Vec<(Option<String>, u64)> = vec![(None, 0); answers.len()];
        if self.settings.cot {
            let seeds: Vec<u64> = answers
                .iter()
                .map(|(id, _, _)| self.reasoning_seed(id))
                .collect();
            let cue = [self
                .constitution
                .templates
                .rate_answer_prefix
                .trim()
                .to_string()];
            reasoning = reason(
                model,
                &self.settings.generation,
                &cue,
                &mut contexts,
                &seeds,
            )?
            .into_iter()
            .map(|(text, tokens)| (Some(text), tokens))
            .collect();
        }
        let lp = choice_log_probs(model, contexts, &self.shared, &self.choices, &|i| {
            answers[i].0
        })?;
        Ok(principles
            .into_iter()
            .zip(&lp)
            .zip(reasoning)
            .map(|((principle, lp), (reasoning, tokens))| {
                let (score, rating_mass) = expected_rating(lp);
                Rated {
                    principle: principle.clone(),
                    score,
                    rating_mass,
                    reasoning,
                    tokens,
                }
            })
            .collect())
    }
}

/// Rates every answer of `input` (a responses or revisions table) into
/// the `ratings` table at `out`.
pub fn rate(
    input: &TableFile,
    model: &mut Model,
    constitution: &Constitution,
    settings: &RateSettings,
    out: &Path,
    progress: &mut dyn FnMut(StageProgress),
) -> Result<StageSummary> {
    settings.generation.validate()?;
    let rows = items(input)?;
    let rater = Rater::new(model, constitution, settings)?;
    let constitution_hash = constitution.hash();
    let provenance = rate_provenance(
        input,
        settings,
        &model.dir.provenance.content_hash,
        &constitution_hash,
    )?;
    let (mut writer, state) = match ShardedWriter::open(
        out,
        &RATINGS,
        &provenance.build_key(&RATINGS),
        &[input.path()],
    )? {
        Opened::Finished(table) => return Ok(StageSummary::cached(table)),
        Opened::Writer(w, s) => (w, s),
    };
    let total = rows.len();
    let start = (state.rows as usize).min(total);
    let (name, hash) = (
        model.dir.provenance.name.clone(),
        model.dir.provenance.content_hash.clone(),
    );
    let seed = settings.generation.seed;
    let before = model.engine.stats();
    let mut tokens = 0u64;
    for range in windows(start, total, settings.generation.shard_rows) {
        let end = range.end;
        let window = &rows[range];
        let answers: Vec<(&str, &str, &str)> = window
            .iter()
            .map(|it| (it.id.as_str(), it.prompt.as_str(), it.response.as_str()))
            .collect();
        let rated = rater.rate(model, &answers)?;
        tokens += rated.iter().map(|r| r.tokens).sum::<u64>();
        let batch: Vec<Rating> = window
            .iter()
            .zip(rated)
            .map(|(it, r)| {
                Rating {
                    id: String::new(),
                    item_id: it.id.clone(),
                    source: input.table_name().unwrap_or("responses").into(),
                    prompt_id: it.prompt_id.clone(),
                    prompt: it.prompt.clone(),
                    response: it.response.clone(),
                    principle_id: r.principle.id.clone(),
                    principle: r.principle.question.clone(),
                    model: name.clone(),
                    model_hash: hash.clone(),
                    constitution: constitution.name.clone(),
                    constitution_hash: constitution_hash.clone(),
                    cot: settings.cot,
                    seed: row_seed("rate", seed, &[&it.id]),
                    score: r.score,
                    reward: r.reward(),
                    rating_mass: r.rating_mass,
                    reasoning: r.reasoning,
                }
                .with_id()
            })
            .collect();
        writer.commit(&Rating::to_batch(&batch)?)?;
        model.check_stop(writer.committed_rows())?;
        progress(StageProgress {
            rows_done: end as u64,
            rows_total: total as u64,
            tokens,
        });
    }
    let table = writer.finish(&provenance)?;
    let counts = Generation {
        tokens,
        context_overflows: 0,
    };
    Ok(StageSummary::generated(table, start, total, counts).scored(before, &model.engine))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The tiny model (written under `dir`) and the harmlessness constitution.
    fn tiny_rater(dir: &Path) -> (Model, Constitution) {
        charter_model::write_tiny(&dir.join("tiny"), 5).unwrap();
        let model = Model::open(&dir.join("tiny"), 1).unwrap();
        let c = Constitution::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../constitutions/harmless.toml"),
        )
        .unwrap();
        (model, c)
    }

    /// Each digit's log-probability after `context` and the answer prefix,
    /// scored alone: what one pass per row must agree with.
    fn plain_log_probs(model: &mut Model, mut context: Vec<u32>, choices: &Choices) -> Vec<f64> {
        context.extend_from_slice(&choices.prefix);
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = choices
            .options
            .iter()
            .map(|o| (context.clone(), o.clone()))
            .collect();
        model
            .engine
            .score(&pairs, 1)
            .unwrap()
            .iter()
            .map(|t| t.iter().sum())
            .collect()
    }

    /// One pass per row with the shared prefix reused gives the digits'
    /// log-probabilities of plain pairwise scoring, and the score is their
    /// expectation computed by hand.
    #[test]
    fn ratings_are_the_expectation_over_the_plain_scores_of_the_digits() {
        let dir = tempfile::tempdir().unwrap();
        let (mut model, c) = tiny_rater(dir.path());
        let settings = RateSettings::default();
        let choices =
            spelled_choices(&model, &c.templates.rate_answer_prefix, &RATINGS_SCALE).unwrap();
        let rows = [
            ("How do I pick a lock?", "I can't help with that."),
            (
                "Write a short poem about rain.",
                "Rain on the roof, soft and steady.",
            ),
        ];
        let question = &c.preference_principles[0].question;
        let contexts: Vec<Vec<u32>> = rows
            .iter()
            .map(|(p, r)| {
                model
                    .encode_conversation(&messages(&c, &settings, p, r, question).unwrap())
                    .unwrap()
            })
            .collect();
        let probes = [("1", "2", "3"), ("4", "5", "6")]
            .map(|(p, r, q)| messages(&c, &settings, p, r, q).unwrap());
        let shared = shared_prefix(&model, &probes).unwrap();
        assert!(!shared.is_empty() && contexts.iter().all(|x| x.starts_with(&shared)));
        let one_pass =
            choice_log_probs(&mut model, contexts.clone(), &shared, &choices, &|_| "row").unwrap();
        for (context, lp) in contexts.into_iter().zip(one_pass) {
            let plain = plain_log_probs(&mut model, context, &choices);
            assert_eq!(lp, plain);
            let p: Vec<f64> = plain.iter().map(|l| l.exp()).collect();
            let mass: f64 = p.iter().sum();
            let by_hand = (1..=9).zip(&p).map(|(k, p)| f64::from(k) * p).sum::<f64>() / mass;
            let (score, rating_mass) = expected_rating(&lp);
            assert!((score - by_hand).abs() < 1e-12, "{score} vs {by_hand}");
            assert!((rating_mass - mass).abs() < 1e-12);
            assert!((1.0..=9.0).contains(&score) && mass > 0.0 && mass <= 1.0);
        }
    }

    /// With chain of thought the reasoning is sampled from the row's seed,
    /// stops before the rater writes a rating itself, and the digits are
    /// scored after it and a newline exactly as a plain pass would.
    #[test]
    fn reasoned_ratings_read_the_digits_after_the_reasoning() {
        let dir = tempfile::tempdir().unwrap();
        let (mut model, c) = tiny_rater(dir.path());
        let settings = RateSettings {
            cot: true,
            generation: GenSettings {
                max_new_tokens: 12,
                ..GenSettings::DEFAULT
            },
        };
        assert_ne!(settings.canonical(), RateSettings::default().canonical());
        let rater = Rater::new(&model, &c, &settings).unwrap();
        let rows = [
            ("row-1", "How do I pick a lock?", "I can't help with that."),
            ("row-2", "Say hi.", "Hi there!"),
            ("row-3", "Say hi.", "Hi there!"),
        ];
        let rated = rater.rate(&mut model, &rows).unwrap();
        assert_eq!(rated, rater.rate(&mut model, &rows).unwrap(), "seeded");
        assert!(rated.iter().all(|r| r.tokens <= 12));
        assert!(rated.iter().any(|r| r.tokens > 0));
        let choices =
            spelled_choices(&model, &c.templates.rate_answer_prefix, &RATINGS_SCALE).unwrap();
        for ((_, prompt, answer), r) in rows.iter().zip(&rated) {
            let reasoning = r.reasoning.as_deref().unwrap();
            assert!(!reasoning.contains("Rating:"), "{reasoning}");
            let m = messages(&c, &settings, prompt, answer, &r.principle.question).unwrap();
            assert!(m.last().unwrap().content.contains("Think it through"));
            let mut context = model.encode_conversation(&m).unwrap();
            context.extend(
                model
                    .tokenizer
                    .encode(&format!("{reasoning}\n"), false)
                    .unwrap(),
            );
            let plain = plain_log_probs(&mut model, context, &choices);
            let (score, rating_mass) = expected_rating(&plain);
            assert!((r.score - score).abs() < 1e-12, "{} vs {score}", r.score);
            assert!((r.rating_mass - rating_mass).abs() < 1e-12);
        }
        // The same answer under another row's seed is reasoned about anew.
        assert_ne!(rater.reasoning_seed("row-2"), rater.reasoning_seed("row-3"));
    }

    #[test]
    fn expected_rating_over_the_digits() {
        let uniform = [(1.0f64 / 9.0).ln(); 9];
        let (score, mass) = expected_rating(&uniform);
        assert!((score - 5.0).abs() < 1e-12);
        assert!((mass - 1.0).abs() < 1e-12);
        // Half the next-token mass on "2", a quarter on "8": normalised over
        // the digits, 2/3 and 1/3.
        let mut lp = [f64::NEG_INFINITY; 9];
        lp[1] = 0.5f64.ln();
        lp[7] = 0.25f64.ln();
        let (score, mass) = expected_rating(&lp);
        assert!((score - (2.0 * 2.0 / 3.0 + 8.0 / 3.0)).abs() < 1e-12);
        assert!((mass - 0.75).abs() < 1e-12);
        // Far below zero still normalises without underflow.
        let low: Vec<f64> = uniform.iter().map(|l| l - 2000.0).collect();
        assert!((expected_rating(&low).0 - 5.0).abs() < 1e-9);
    }
}
