//! `critique` and `revise`: the rounds of Constitutional AI's supervised
//! phase (Bai et al. 2022 §3.1).
//!
//! Round r critiques an answer — the initial response for r = 1, round
//! r − 1's revision after that — against a critique principle drawn for the
//! row and round from the row's seed (with replacement), then `revise`
//! rewrites the answer following the same principle's revision request.
//! The model sees the constitution's worked examples as earlier turns of
//! the same conversation, then the prompt and the answer, then the request.

use std::path::Path;

use charter_gen::Request;
use charter_model::Message;
use charter_table::{
    CRITIQUES, Critique, InputRef, Opened, Provenance, REVISIONS, Record, Response, Revision,
    ShardedWriter, TableFile,
};
use serde_json::json;

use crate::constitution::{Constitution, CritiquePrinciple};
use crate::error::{Error, Result};
use crate::generate::{GenSettings, StageProgress, StageSummary, run_windows};
use crate::model::Model;
use crate::seed::row_seed;
use crate::stop::StopStrings;

/// Version of the critique stage: bump when the same inputs would give different rows.
pub const CRITIQUE_VERSION: u32 = 1;
/// Version of the revise stage.
pub const REVISE_VERSION: u32 = 1;

/// Settings of a critique run: the `critique` command's flags and a build
/// file's `critique` stage.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct CritiqueSettings {
    /// The round [default: 1 for responses, the input's last round + 1 for revisions].
    #[arg(long, value_name = "R")]
    pub round: Option<u32>,
    /// How the critiques are generated.
    #[serde(skip)]
    #[command(flatten)]
    pub generation: GenSettings,
}

impl CritiqueSettings {
    /// Checks the values a user can get wrong; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        if self.round == Some(0) {
            return Err(Error::invalid("round", "rounds start at 1"));
        }
        self.generation.validate()
    }
}

/// An answer to critique: a response or an earlier revision.
struct Answer {
    prompt_id: String,
    prompt: String,
    /// The row critiqued.
    parent_id: String,
    /// The initial response the chain started from.
    response_id: String,
    text: String,
}

/// The answers of a `responses` table (round 1) or of a `revisions` table
/// (round `round`, critiquing round − 1's revisions; by default the input's
/// last round + 1).
fn answers(input: &TableFile, round: Option<u32>) -> Result<(Vec<Answer>, u32)> {
    match input.table_name() {
        Some("responses") => {
            if let Some(r) = round.filter(|&r| r != 1) {
                return Err(Error::Settings(format!(
                    "{}: a responses table starts round 1, not --round {r}",
                    input.path().display()
                )));
            }
            let rows: Vec<Response> = input.rows()?;
            let answers = rows
                .into_iter()
                .map(|r| Answer {
                    prompt_id: r.prompt_id,
                    prompt: r.prompt,
                    parent_id: r.id.clone(),
                    response_id: r.id,
                    text: r.text,
                })
                .collect();
            Ok((answers, 1))
        }
        Some("revisions") => {
            let rows: Vec<Revision> = input.rows()?;
            let last = rows.iter().map(|r| r.round).max().unwrap_or(0);
            let round = round.unwrap_or(last + 1);
            if round < 2 {
                return Err(Error::Settings(format!(
                    "{}: revisions are critiqued from round 2 on, not --round {round}",
                    input.path().display()
                )));
            }
            let answers: Vec<Answer> = rows
                .into_iter()
                .filter(|r| r.round == round - 1)
                .map(|r| Answer {
                    prompt_id: r.prompt_id,
                    prompt: r.prompt,
                    parent_id: r.id,
                    response_id: r.response_id,
                    text: r.text,
                })
                .collect();
            if answers.is_empty() {
                return Err(Error::Settings(format!(
                    "{}: no round-{} revisions to critique in round {round}",
                    input.path().display(),
                    round - 1
                )));
            }
            Ok((answers, round))
        }
        other => Err(Error::Settings(format!(
            "{}: critique reads a `responses` or `revisions` table, not {}",
            input.path().display(),
            other.map_or("an unnamed table".to_string(), |t| format!("`{t}`"))
        ))),
    }
}

/// The principle drawn for an answer in a round.
fn draw<'c>(c: &'c Constitution, seed: u64, parent_id: &str, round: u32) -> &'c CritiquePrinciple {
    let r = row_seed("principle", seed, &[parent_id, &round.to_string()]);
    &c.critique_principles[(r % c.critique_principles.len() as u64) as usize]
}

/// The conversation up to the critique request: system message, worked
/// examples, then the prompt, the answer and the request.
fn critique_messages(
    c: &Constitution,
    settings: &GenSettings,
    prompt: &str,
    answer: &str,
    request: &str,
) -> Result<Vec<Message>> {
    let mut m = settings.system_messages();
    for ex in &c.critique_examples {
        m.push(Message::new("user", ex.prompt.clone()));
        m.push(Message::new("assistant", ex.response.clone()));
        m.push(Message::new(
            "user",
            c.render(
                "critique",
                &json!({"critique_request": ex.critique_request, "prompt": ex.prompt, "response": ex.response}),
            )?,
        ));
        m.push(Message::new("assistant", ex.critique.clone()));
        m.push(Message::new(
            "user",
            c.render(
                "revision",
                &json!({"revision_request": ex.revision_request, "critique": ex.critique}),
            )?,
        ));
        m.push(Message::new("assistant", ex.revision.clone()));
    }
    m.push(Message::new("user", prompt.to_string()));
    m.push(Message::new("assistant", answer.to_string()));
    m.push(Message::new(
        "user",
        c.render(
            "critique",
            &json!({"critique_request": request, "prompt": prompt, "response": answer}),
        )?,
    ));
    Ok(m)
}

fn input_ref(name: &str, input: &TableFile) -> Result<InputRef> {
    Ok(InputRef {
        name: name.into(),
        content_hash: input.content_hash_or_compute()?,
    })
}

/// The provenance a critique of `input` records (what its build key is
/// made of): `round` as given, else the round the input calls for (1 for
/// responses, the last round + 1 for revisions).
pub fn critique_provenance(
    input: &TableFile,
    settings: &CritiqueSettings,
    model_hash: &str,
    constitution_hash: &str,
) -> Result<Provenance> {
    let round = match settings.round {
        Some(r) => r,
        None => answers(input, None)?.1,
    };
    let mut canonical = settings.generation.canonical();
    canonical["round"] = json!(round);
    Ok(Provenance {
        stage: "critique".into(),
        stage_version: CRITIQUE_VERSION,
        settings: canonical,
        inputs: vec![input_ref(input.table_name().unwrap_or("input"), input)?],
        model_hash: Some(model_hash.to_string()),
        constitution_hash: Some(constitution_hash.to_string()),
    })
}

/// The provenance a revision of the critiques in `input` records.
pub fn revise_provenance(
    input: &TableFile,
    settings: &GenSettings,
    model_hash: &str,
    constitution_hash: &str,
) -> Result<Provenance> {
    Ok(Provenance {
        stage: "revise".into(),
        stage_version: REVISE_VERSION,
        settings: settings.canonical(),
        inputs: vec![input_ref("critiques", input)?],
        model_hash: Some(model_hash.to_string()),
        constitution_hash: Some(constitution_hash.to_string()),
    })
}

/// Critiques every answer of `input` (a `responses` table for round 1, a
/// `revisions` table for later rounds) into the `critiques` table at `out`.
pub fn critique(
    input: &TableFile,
    model: &mut Model,
    constitution: &Constitution,
    critique_settings: &CritiqueSettings,
    out: &Path,
    progress: &mut dyn FnMut(StageProgress),
) -> Result<StageSummary> {
    critique_settings.validate()?;
    let settings = &critique_settings.generation;
    let (answers, round) = answers(input, critique_settings.round)?;
    let provenance = critique_provenance(
        input,
        &CritiqueSettings {
            round: Some(round),
            generation: settings.clone(),
        },
        &model.dir.provenance.content_hash,
        &constitution.hash(),
    )?;
    let (mut writer, state) = match ShardedWriter::open(
        out,
        &CRITIQUES,
        &provenance.build_key(&CRITIQUES),
        &[input.path()],
    )? {
        Opened::Finished(table) => return Ok(StageSummary::cached(table)),
        Opened::Writer(w, s) => (w, s),
    };
    let total = answers.len();
    let before = model.engine.stats();
    let start = (state.rows as usize).min(total);
    let mut request = |model: &Model, item: usize| -> Result<Request> {
        let a = &answers[item];
        let p = draw(constitution, settings.seed, &a.parent_id, round);
        let messages = critique_messages(constitution, settings, &a.prompt, &a.text, &p.critique)?;
        Ok(Request {
            prompt: model.encode_conversation(&messages)?,
            seed: row_seed(
                "critique",
                settings.seed,
                &[&a.parent_id, &round.to_string()],
            ),
        })
    };
    let options = settings.options(model);
    let stop = StopStrings::new(&settings.stop);
    let (name, hash) = (
        model.dir.provenance.name.clone(),
        model.dir.provenance.content_hash.clone(),
    );
    let constitution_hash = constitution.hash();
    let counts = run_windows(
        model,
        &mut writer,
        &mut request,
        start,
        total,
        settings.shard_rows,
        &options,
        &stop,
        None,
        progress,
        &mut |item, g| {
            let a = &answers[item];
            let p = draw(constitution, settings.seed, &a.parent_id, round);
            Ok(Critique {
                id: String::new(),
                prompt_id: a.prompt_id.clone(),
                parent_id: a.parent_id.clone(),
                response_id: a.response_id.clone(),
                round,
                prompt: a.prompt.clone(),
                response: a.text.clone(),
                principle_id: p.id.clone(),
                critique_request: p.critique.clone(),
                text: g.text,
                model: name.clone(),
                model_hash: hash.clone(),
                constitution: constitution.name.clone(),
                constitution_hash: constitution_hash.clone(),
                temperature: settings.temperature,
                top_p: settings.top_p,
                top_k: settings.top_k as u32,
                max_new_tokens: settings.max_new_tokens,
                seed: g.request.seed,
                prompt_tokens: g.request.prompt.len() as u32,
                completion_tokens: g.completion_tokens,
                finish_reason: g.finish.as_str().to_string(),
            }
            .with_id())
        },
    )?;
    Ok(
        StageSummary::generated(writer.finish(&provenance)?, start, total, counts)
            .scored(before, &model.engine),
    )
}

/// Revises the answer of every critique of `input` following the revision
/// request of the critique's principle, into the `revisions` table at `out`.
pub fn revise(
    input: &TableFile,
    model: &mut Model,
    constitution: &Constitution,
    settings: &GenSettings,
    out: &Path,
    progress: &mut dyn FnMut(StageProgress),
) -> Result<StageSummary> {
    settings.validate()?;
    input.expect(&CRITIQUES)?;
    let critiques: Vec<Critique> = input.rows()?;
    let constitution_hash = constitution.hash();
    let mut principles = Vec::with_capacity(critiques.len());
    for (i, c) in critiques.iter().enumerate() {
        if c.constitution_hash != constitution_hash {
            return Err(Error::Settings(format!(
                "{} row {i}: critiqued under constitution `{}` ({}), this run uses `{}` ({})",
                input.path().display(),
                c.constitution,
                &c.constitution_hash[..c.constitution_hash.len().min(16)],
                constitution.name,
                &constitution_hash[..16]
            )));
        }
        let p = constitution
            .critique_principles
            .iter()
            .find(|p| p.id == c.principle_id)
            .ok_or_else(|| {
                Error::Settings(format!(
                    "{} row {i}: principle `{}` is not in constitution `{}`",
                    input.path().display(),
                    c.principle_id,
                    constitution.name
                ))
            })?;
        principles.push(p);
    }
    let provenance = revise_provenance(
        input,
        settings,
        &model.dir.provenance.content_hash,
        &constitution_hash,
    )?;
    let (mut writer, state) = match ShardedWriter::open(
        out,
        &REVISIONS,
        &provenance.build_key(&REVISIONS),
        &[input.path()],
    )? {
        Opened::Finished(table) => return Ok(StageSummary::cached(table)),
        Opened::Writer(w, s) => (w, s),
    };
    let total = critiques.len();
    let before = model.engine.stats();
    let start = (state.rows as usize).min(total);
    let mut request = |model: &Model, item: usize| -> Result<Request> {
        let (c, p) = (&critiques[item], &principles[item]);
        let mut messages = critique_messages(
            constitution,
            settings,
            &c.prompt,
            &c.response,
            &c.critique_request,
        )?;
        messages.push(Message::new("assistant", c.text.clone()));
        messages.push(Message::new(
            "user",
            constitution.render(
                "revision",
                &json!({"revision_request": p.revision, "critique": c.text}),
            )?,
        ));
        Ok(Request {
            prompt: model.encode_conversation(&messages)?,
            seed: row_seed("revise", settings.seed, &[&c.id]),
        })
    };
    let options = settings.options(model);
    let stop = StopStrings::new(&settings.stop);
    let (name, hash) = (
        model.dir.provenance.name.clone(),
        model.dir.provenance.content_hash.clone(),
    );
    let counts = run_windows(
        model,
        &mut writer,
        &mut request,
        start,
        total,
        settings.shard_rows,
        &options,
        &stop,
        None,
        progress,
        &mut |item, g| {
            let c = &critiques[item];
            Ok(Revision {
                id: String::new(),
                prompt_id: c.prompt_id.clone(),
                critique_id: c.id.clone(),
                response_id: c.response_id.clone(),
                round: c.round,
                prompt: c.prompt.clone(),
                response: c.response.clone(),
                principle_id: c.principle_id.clone(),
                critique: c.text.clone(),
                revision_request: principles[item].revision.clone(),
                text: g.text,
                model: name.clone(),
                model_hash: hash.clone(),
                constitution: constitution.name.clone(),
                constitution_hash: constitution_hash.clone(),
                temperature: settings.temperature,
                top_p: settings.top_p,
                top_k: settings.top_k as u32,
                max_new_tokens: settings.max_new_tokens,
                seed: g.request.seed,
                prompt_tokens: g.request.prompt.len() as u32,
                completion_tokens: g.completion_tokens,
                finish_reason: g.finish.as_str().to_string(),
            }
            .with_id())
        },
    )?;
    Ok(
        StageSummary::generated(writer.finish(&provenance)?, start, total, counts)
            .scored(before, &model.engine),
    )
}
