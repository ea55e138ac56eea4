//! `label`: AI-feedback preference labels (Bai et al. 2022 §4; Lee et al.
//! 2023).
//!
//! For each pair, one preference principle is drawn from the row's seed.
//! The labeller sees the constitution's worked examples, then the
//! conversation, the principle's question and the two answers as (A) and
//! (B); after the answer prefix ("The answer is: ") the log-probabilities
//! of "(A)" and "(B)" are read with the engine's scoring mode and
//! normalised: a soft label, not a sampled answer. Both presentation orders
//! are scored and averaged (small labellers favour a slot), and with
//! chain of thought the labeller first writes its reasoning, which stays in
//! the row, and the averaged probability is clamped (CoT probabilities sit
//! near 0 or 1).
//!
//! Both choices are read from one pass over each context, and the prompt's
//! part no row changes (system prompt, worked examples: [`shared_prefix`])
//! is run once per call and its cache reused; see
//! [`charter_gen::Engine::score_choices`].

use std::path::Path;

use charter_gen::{Completion, Request};
use charter_model::Message;
use charter_table::{
    InputRef, LABELS, Label, Opened, PAIRS, Pair, Provenance, Record, ShardedWriter, TableFile,
};
use serde_json::json;

use crate::constitution::{Constitution, PreferencePrinciple};
use crate::error::{Error, Result};
use crate::generate::{GenSettings, Generation, StageProgress, StageSummary, windows};
use crate::model::Model;
use crate::seed::row_seed;
use crate::stop::StopStrings;

/// Version of the label stage.
pub const LABEL_VERSION: u32 = 1;

/// Settings of a label run: the `label` command's flags and a build file's
/// `label` stage.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct LabelSettings {
    /// Score both presentation orders and average them (`--no-swap`: only
    /// the order shown, A first).
    #[arg(long = "no-swap", action = clap::ArgAction::SetFalse)]
    pub swap: bool,
    /// Let the labeller reason before answering (the reasoning is kept;
    /// probabilities are clamped).
    #[arg(long)]
    pub cot: bool,
    /// The range chain-of-thought probabilities are clamped to.
    #[arg(long, value_name = "LO,HI", default_value = "0.4,0.6", value_parser = parse_clamp)]
    pub clamp: (f64, f64),
    /// Generation of the reasoning (with `cot`), seed, batch and window.
    #[serde(skip)]
    #[command(flatten)]
    pub generation: GenSettings,
}

impl Default for LabelSettings {
    fn default() -> Self {
        LabelSettings {
            swap: true,
            cot: false,
            clamp: (0.4, 0.6),
            generation: GenSettings::DEFAULT,
        }
    }
}

/// `LO,HI` as two numbers.
fn parse_clamp(text: &str) -> std::result::Result<(f64, f64), String> {
    let parse = |s: &str| s.trim().parse::<f64>().map_err(|e| format!("{s:?}: {e}"));
    match text.split_once(',') {
        Some((lo, hi)) => Ok((parse(lo)?, parse(hi)?)),
        None => Err(format!("expected LO,HI, got {text:?}")),
    }
}

impl LabelSettings {
    /// The settings that determine the output, as recorded in provenance.
    pub fn canonical(&self) -> serde_json::Value {
        let mut v = self.generation.canonical();
        v["swap"] = json!(self.swap);
        v["cot"] = json!(self.cot);
        v["clamp"] = json!([self.clamp.0, self.clamp.1]);
        v
    }

    /// Checks the values a user can get wrong; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        self.generation.validate()?;
        let (lo, hi) = self.clamp;
        if !(0.0..=0.5).contains(&lo) || !(0.5..=1.0).contains(&hi) {
            return Err(Error::invalid(
                "clamp",
                format!("must be LO,HI with 0 <= LO <= 0.5 <= HI <= 1, got {lo},{hi}"),
            ));
        }
        Ok(())
    }
}

/// The tokens of a scoring stage's options, checked to be distinct and to
/// decode back to their text: a tokenizer that cannot spell them cannot
/// judge.
pub(crate) struct Choices {
    /// The answer prefix without trailing whitespace, encoded.
    pub(crate) prefix: Vec<u32>,
    /// Each option with the prefix's trailing whitespace before it, encoded.
    pub(crate) options: Vec<Vec<u32>>,
}

/// The options "(A)" and "(B)" after `prefix`.
pub(crate) fn choices(model: &Model, prefix: &str) -> Result<Choices> {
    spelled_choices(model, prefix, &["(A)", "(B)"])
}

/// The options `texts` after `prefix`; no option may be a prefix of
/// another's tokens, so that their probabilities are of disjoint events.
pub(crate) fn spelled_choices(model: &Model, prefix: &str, texts: &[&str]) -> Result<Choices> {
    // Trailing whitespace goes with the choice, as a tokenizer would split it.
    let trimmed = prefix.trim_end();
    let sep = &prefix[trimmed.len()..];
    let t = &model.tokenizer;
    let texts: Vec<String> = texts.iter().map(|x| format!("{sep}{x}")).collect();
    let options = texts
        .iter()
        .map(|x| t.encode(x, false))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let spelled = options
        .iter()
        .zip(&texts)
        .all(|(ids, text)| !ids.is_empty() && t.decode(ids, false).is_ok_and(|d| &d == text));
    let nested = options.iter().enumerate().any(|(i, a)| {
        options
            .iter()
            .enumerate()
            .any(|(j, b)| i != j && b.starts_with(a))
    });
    if !spelled || nested {
        return Err(Error::Settings(format!(
            "model `{}`: its tokenizer cannot spell the answer choices {texts:?} \
             distinctly (got {options:?}); it cannot be a labeller",
            model.dir.provenance.name
        )));
    }
    Ok(Choices {
        prefix: t.encode(trimmed, false)?,
        options,
    })
}

pub(crate) fn draw<'c>(c: &'c Constitution, seed: u64, pair_id: &str) -> &'c PreferencePrinciple {
    let r = row_seed("principle", seed, &[pair_id]);
    &c.preference_principles[(r % c.preference_principles.len() as u64) as usize]
}

/// The labeller's conversation for one order, up to its open assistant turn.
fn messages(
    c: &Constitution,
    settings: &LabelSettings,
    conversation: &str,
    question: &str,
    first: &str,
    second: &str,
) -> Result<Vec<Message>> {
    let mut m = settings.generation.system_messages();
    let template = if settings.cot { "label_cot" } else { "label" };
    for ex in &c.label_examples {
        m.push(Message::new(
            "user",
            c.render(
                template,
                &json!({"conversation": ex.conversation, "question": ex.question,
                        "response_a": ex.response_a, "response_b": ex.response_b}),
            )?,
        ));
        let reasoning = match (&ex.reasoning, settings.cot) {
            (Some(r), true) => format!("{r}\n"),
            _ => String::new(),
        };
        m.push(Message::new(
            "assistant",
            format!(
                "{reasoning}{}({})",
                c.templates.label_answer_prefix, ex.answer
            ),
        ));
    }
    m.push(Message::new(
        "user",
        c.render(
            template,
            &json!({"conversation": conversation, "question": question,
                    "response_a": first, "response_b": second}),
        )?,
    ));
    Ok(m)
}

/// The log-probabilities of each option (for labels "(A)" and "(B)") after
/// each context followed by the answer prefix, each context run once, and `shared` (a prefix of many
/// contexts, see [`shared_prefix`]) once for all; `row` names the row of a
/// context too long to score.
pub(crate) fn choice_log_probs<'r>(
    model: &mut Model,
    mut contexts: Vec<Vec<u32>>,
    shared: &[u32],
    choices: &Choices,
    row: &dyn Fn(usize) -> &'r str,
) -> Result<Vec<Vec<f64>>> {
    let longest = choices.options.iter().map(Vec::len).max().unwrap_or(0);
    for (i, ctx) in contexts.iter_mut().enumerate() {
        ctx.extend_from_slice(&choices.prefix);
        let tokens = ctx.len() + longest;
        if tokens > model.max_context() {
            return Err(Error::ContextOverflow {
                row: row(i).to_string(),
                tokens,
                limit: model.max_context(),
            });
        }
    }
    let scores = model
        .engine
        .score_choices(&contexts, shared, &choices.options)?;
    Ok(scores
        .iter()
        .map(|s| s.iter().map(|option| option.iter().sum()).collect())
        .collect())
}

/// The tokens every one of `probes` begins with: given conversations that
/// differ in everything a row fills in, the part of a stage's prompt that
/// no row changes (system prompt, worked examples, instructions), whose
/// cache scoring computes once. It depends on the stage's settings alone,
/// never on its rows, so every shard of a build reuses the same prefix.
///
/// The last tokens before the first filled-in text are left out: how they
/// split depends on that text (a tokenizer may keep the space before a
/// digit apart and merge it into a word), and a row whose tokens do not
/// start with the prefix is scored without it.
pub(crate) fn shared_prefix(model: &Model, probes: &[Vec<Message>]) -> Result<Vec<u32>> {
    const BOUNDARY: usize = 2;
    let mut encoded = probes.iter().map(|m| model.encode_conversation(m));
    let Some(first) = encoded.next() else {
        return Ok(Vec::new());
    };
    let mut prefix = first?;
    for other in encoded {
        let other = other?;
        let same = prefix
            .iter()
            .zip(&other)
            .take_while(|(a, b)| a == b)
            .count();
        prefix.truncate(same);
    }
    prefix.truncate(prefix.len().saturating_sub(BOUNDARY));
    Ok(prefix)
}

/// `p` of the first-shown answer from the log-probabilities of "(A)" and "(B)".
pub(crate) fn normalised(lp_a: f64, lp_b: f64) -> f64 {
    let m = lp_a.max(lp_b);
    let (ea, eb) = ((lp_a - m).exp(), (lp_b - m).exp());
    ea / (ea + eb)
}

/// One comparison for the labeller.
pub(crate) struct Comparison<'a> {
    /// What seeds the reasoning's sampling (the pair id).
    pub(crate) key: &'a str,
    /// The conversation as shown, e.g. `User: …`.
    pub(crate) conversation: String,
    /// The principle's question.
    pub(crate) question: &'a str,
    /// The answer shown as (A) in the first order.
    pub(crate) a: &'a str,
    /// The answer shown as (B) in the first order.
    pub(crate) b: &'a str,
}

/// The labeller's verdict on one comparison.
pub(crate) struct Judgement {
    /// P(A better) with A shown first.
    pub(crate) p_a_ab: f64,
    /// P(A better) with B shown first, when both orders are scored.
    pub(crate) p_a_ba: Option<f64>,
    /// Reasoning with A shown first, with chain of thought.
    pub(crate) cot_ab: Option<String>,
    /// Reasoning with B shown first.
    pub(crate) cot_ba: Option<String>,
}

/// Scores `items` in one or both orders (with reasoning first under
/// `settings.cot`); returns the verdicts and the tokens generated.
pub(crate) fn judge(
    model: &mut Model,
    constitution: &Constitution,
    settings: &LabelSettings,
    choices: &Choices,
    items: &[Comparison<'_>],
) -> Result<(Vec<Judgement>, u64)> {
    let orders = if settings.swap { 2 } else { 1 };
    let mut tokens = 0u64;
    // Conversations per item and order (A first, then B first).
    let mut convs = Vec::with_capacity(items.len() * orders);
    for it in items {
        convs.push(messages(
            constitution,
            settings,
            &it.conversation,
            it.question,
            it.a,
            it.b,
        )?);
        if settings.swap {
            convs.push(messages(
                constitution,
                settings,
                &it.conversation,
                it.question,
                it.b,
                it.a,
            )?);
        }
    }
    let mut contexts = convs
        .iter()
        .map(|m| model.encode_conversation(m))
        .collect::<Result<Vec<_>>>()?;
    let mut reasoning: Vec<Option<String>> = vec![None; contexts.len()];
    if settings.cot {
        let seeds: Vec<u64> = (0..contexts.len())
            .map(|i| {
                row_seed(
                    "label-cot",
                    settings.generation.seed,
                    &[items[i / orders].key, &(i % orders).to_string()],
                )
            })
            .collect();
        let texts = reason(model, &settings.generation, &[], &mut contexts, &seeds)?;
        tokens += texts.iter().map(|(_, n)| n).sum::<u64>();
        reasoning = texts.into_iter().map(|(text, _)| Some(text)).collect();
    }
    let probes = ["1", "2"]
        .iter()
        .map(|x| messages(constitution, settings, x, x, x, x))
        .collect::<Result<Vec<_>>>()?;
    let shared = shared_prefix(model, &probes)?;
    let lp = choice_log_probs(model, contexts, &shared, choices, &|i| {
        items[i / orders].key
    })?;
    let mut out = Vec::with_capacity(items.len());
    let mut reasoning = reasoning.into_iter();
    for k in 0..items.len() {
        let ab = k * orders;
        out.push(Judgement {
            p_a_ab: normalised(lp[ab][0], lp[ab][1]),
            // With B shown first, A is the second choice.
            p_a_ba: settings
                .swap
                .then(|| normalised(lp[ab + 1][1], lp[ab + 1][0])),
            cot_ab: reasoning.next().flatten(),
            cot_ba: if settings.swap {
                reasoning.next().flatten()
            } else {
                None
            },
        });
    }
    Ok((out, tokens))
}

/// Chain of thought: samples a reasoning after each of `contexts` (its
/// seed from `seeds`), cut at a stop string of `generation` or of `cue`
/// (text that starts the verdict itself, so a model that writes it is not
/// asked twice), and appends it and a newline to the context. Returns each
/// reasoning and the tokens generated for it.
pub(crate) fn reason(
    model: &mut Model,
    generation: &GenSettings,
    cue: &[String],
    contexts: &mut [Vec<u32>],
    seeds: &[u64],
) -> Result<Vec<(String, u64)>> {
    let options = generation.options(model);
    let stop = StopStrings::new(&[generation.stop.as_slice(), cue].concat());
    let requests: Vec<Request> = contexts
        .iter()
        .zip(seeds)
        .map(|(ctx, &seed)| Request {
            prompt: ctx.clone(),
            seed,
        })
        .collect();
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    let Model {
        engine, tokenizer, ..
    } = &mut *model;
    engine.generate(
        &requests,
        &options,
        &mut |_, t| stop.hit(tokenizer, t),
        &mut |c: Completion| -> Result<()> {
            let i = c.index;
            done[i] = Some(c);
            Ok(())
        },
    )?;
    let mut texts = Vec::with_capacity(done.len());
    for (c, context) in done.into_iter().zip(contexts.iter_mut()) {
        let c = c.ok_or_else(|| Error::Settings("internal: the engine skipped a row".into()))?;
        let text = model.decode(&c.tokens)?;
        let text = stop.truncate(&text).0.trim_end().to_string();
        context.extend(model.tokenizer.encode(&format!("{text}\n"), false)?);
        texts.push((text, c.tokens.len() as u64));
    }
    Ok(texts)
}

/// The provenance a label run over the pairs in `input` records.
pub fn label_provenance(
    input: &TableFile,
    settings: &LabelSettings,
    model_hash: &str,
    constitution_hash: &str,
) -> Result<Provenance> {
    Ok(Provenance {
        stage: "label".into(),
        stage_version: LABEL_VERSION,
        settings: settings.canonical(),
        inputs: vec![InputRef {
            name: "pairs".into(),
            content_hash: input.content_hash_or_compute()?,
        }],
        model_hash: Some(model_hash.to_string()),
        constitution_hash: Some(constitution_hash.to_string()),
    })
}

/// Labels every pair of `input` into the `labels` table at `out`.
pub fn label(
    input: &TableFile,
    model: &mut Model,
    constitution: &Constitution,
    settings: &LabelSettings,
    out: &Path,
    progress: &mut dyn FnMut(StageProgress),
) -> Result<StageSummary> {
    settings.validate()?;
    input.expect(&PAIRS)?;
    let choices = choices(model, &constitution.templates.label_answer_prefix)?;
    let pairs: Vec<Pair> = input.rows()?;
    let constitution_hash = constitution.hash();
    let provenance = label_provenance(
        input,
        settings,
        &model.dir.provenance.content_hash,
        &constitution_hash,
    )?;
    let (mut writer, state) = match ShardedWriter::open(
        out,
        &LABELS,
        &provenance.build_key(&LABELS),
        &[input.path()],
    )? {
        Opened::Finished(table) => {
            return Ok(StageSummary::cached(table));
        }
        Opened::Writer(w, s) => (w, s),
    };
    let total = pairs.len();
    let start = (state.rows as usize).min(total);
    let (name, hash) = (
        model.dir.provenance.name.clone(),
        model.dir.provenance.content_hash.clone(),
    );
    let before = model.engine.stats();
    let mut tokens = 0u64;
    for range in windows(start, total, settings.generation.shard_rows) {
        let end = range.end;
        let window_pairs = &pairs[range];
        let principles: Vec<&PreferencePrinciple> = window_pairs
            .iter()
            .map(|p| draw(constitution, settings.generation.seed, &p.id))
            .collect();
        let items: Vec<Comparison<'_>> = window_pairs
            .iter()
            .zip(&principles)
            .map(|(p, principle)| Comparison {
                key: &p.id,
                conversation: format!("User: {}", p.prompt),
                question: &principle.question,
                a: &p.response_a,
                b: &p.response_b,
            })
            .collect();
        let (judgements, used) = judge(model, constitution, settings, &choices, &items)?;
        tokens += used;
        let mut rows = Vec::with_capacity(window_pairs.len());
        for ((p, principle), j) in window_pairs.iter().zip(&principles).zip(judgements) {
            let (p_a_ab, p_a_ba) = (j.p_a_ab, j.p_a_ba);
            let mut p_a = p_a_ba.map_or(p_a_ab, |ba| (p_a_ab + ba) / 2.0);
            if settings.cot {
                p_a = p_a.clamp(settings.clamp.0, settings.clamp.1);
            }
            let a_wins = p_a >= 0.5;
            let (chosen, rejected) = if a_wins {
                (
                    (&p.response_a, &p.response_a_id),
                    (&p.response_b, &p.response_b_id),
                )
            } else {
                (
                    (&p.response_b, &p.response_b_id),
                    (&p.response_a, &p.response_a_id),
                )
            };
            rows.push(
                Label {
                    id: String::new(),
                    pair_id: p.id.clone(),
                    prompt_id: p.prompt_id.clone(),
                    prompt: p.prompt.clone(),
                    response_a_id: p.response_a_id.clone(),
                    response_b_id: p.response_b_id.clone(),
                    response_a: p.response_a.clone(),
                    response_b: p.response_b.clone(),
                    principle_id: principle.id.clone(),
                    principle: principle.question.clone(),
                    model: name.clone(),
                    model_hash: hash.clone(),
                    constitution: constitution.name.clone(),
                    constitution_hash: constitution_hash.clone(),
                    cot: settings.cot,
                    swap: settings.swap,
                    seed: row_seed("label", settings.generation.seed, &[&p.id]),
                    p_a,
                    p_a_ab,
                    p_a_ba,
                    cot_ab: j.cot_ab,
                    cot_ba: j.cot_ba,
                    chosen: chosen.0.clone(),
                    rejected: rejected.0.clone(),
                    chosen_id: chosen.1.clone(),
                    rejected_id: rejected.1.clone(),
                }
                .with_id(),
            );
        }
        writer.commit(&Label::to_batch(&rows)?)?;
        model.check_stop(writer.committed_rows())?;
        progress(StageProgress {
            rows_done: end as u64,
            rows_total: total as u64,
            tokens,
        });
    }
    let counts = Generation {
        tokens,
        context_overflows: 0,
    };
    Ok(
        StageSummary::generated(writer.finish(&provenance)?, start, total, counts)
            .scored(before, &model.engine),
    )
}

#[cfg(test)]
mod tests {
    use super::normalised;

    #[test]
    fn normalising_two_log_probabilities() {
        assert!((normalised(0.0, 0.0) - 0.5).abs() < 1e-12);
        assert!((normalised((0.75f64).ln(), (0.25f64).ln()) - 0.75).abs() < 1e-12);
        // Far below zero still normalises without underflow.
        assert!((normalised(-1000.0, -1000.0 - (3.0f64).ln()) - 0.75).abs() < 1e-12);
    }
}
