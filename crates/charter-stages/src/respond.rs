//! `respond`: every prompt answered `samples` times — the first stage of
//! Constitutional AI's supervised phase (Bai et al. 2022 §3.1).

use std::path::Path;

use charter_gen::{GenerateOptions, Request};
use charter_model::Message;
use charter_table::{
    InputRef, Opened, Prompt, Provenance, Query, RESPONSES, Record, Response, ShardedWriter,
    TableFile,
};

use crate::error::{Error, Result};
use crate::generate::{GenSettings, StageProgress, StageSummary, run_windows};
use crate::guard::StreamGuard;
use crate::model::Model;
use crate::seed::row_seed;
use crate::stop::StopStrings;

/// Version of the respond stage: bump when the same inputs would give different rows.
pub const STAGE_VERSION: u32 = 1;

/// The most answers per prompt a run takes: far beyond what any recipe
/// samples (two for pairs, tens for best-of-n), low enough that a typo
/// cannot request billions of rows.
pub const MAX_SAMPLES: u32 = 4096;

/// Settings of a respond run: the `respond` command's flags and a build
/// file's `respond` stage.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RespondSettings {
    /// Answers per prompt.
    #[arg(long, value_name = "K", default_value_t = RespondSettings::default().samples)]
    pub samples: u32,
    /// Answer only the first N prompts.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// How the answers are generated.
    #[serde(skip)]
    #[command(flatten)]
    pub generation: GenSettings,
}

impl Default for RespondSettings {
    fn default() -> Self {
        RespondSettings {
            samples: 1,
            limit: None,
            generation: GenSettings::DEFAULT,
        }
    }
}

impl RespondSettings {
    /// The settings that determine the output, as recorded in provenance.
    pub fn canonical(&self) -> serde_json::Value {
        let mut v = self.generation.canonical();
        v["samples"] = serde_json::json!(self.samples);
        v["limit"] = serde_json::json!(self.limit);
        v
    }

    /// Checks the values a user can get wrong; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        if self.samples == 0 || self.samples > MAX_SAMPLES {
            return Err(Error::invalid(
                "samples",
                format!("must be from 1 to {MAX_SAMPLES}, got {}", self.samples),
            ));
        }
        self.generation.validate()
    }
}

/// The provenance a respond run of `input` with the model whose content
/// hash is `model_hash` records: what its build key is made of.
pub fn provenance(
    settings: &RespondSettings,
    input: &TableFile,
    model_hash: &str,
) -> Result<Provenance> {
    Ok(Provenance {
        stage: "respond".into(),
        stage_version: STAGE_VERSION,
        settings: settings.canonical(),
        inputs: vec![InputRef {
            name: input.table_name().unwrap_or("prompts").into(),
            content_hash: input.content_hash_or_compute()?,
        }],
        model_hash: Some(model_hash.to_string()),
        constitution_hash: None,
    })
}

/// What a respond run did.
pub type RespondSummary = StageSummary;

/// Progress of a respond run, for display.
pub type RespondProgress = StageProgress;

/// The prompts of a prompts table, or the messages of a queries table
/// (a classifier's synthetic queries, answered to train its output guard;
/// the category and label go to `tags`).
fn prompts_of(input: &TableFile) -> Result<Vec<Prompt>> {
    if input.table_name() != Some("queries") {
        return Ok(input.rows()?);
    }
    Ok(input
        .rows::<Query>()?
        .into_iter()
        .enumerate()
        .map(|(i, q)| Prompt {
            id: q.id,
            text: q.text,
            source: "queries".into(),
            source_row: i as u64 + 1,
            tags: vec![
                format!("category:{}", q.category),
                format!("label:{}", q.label),
            ],
        })
        .collect())
}

/// Answers the prompts (or queries) of `input` with `model` into the
/// `responses` table at `out`; with a `guard`, refused rows hold
/// [`REFUSAL`](crate::REFUSAL) and `finish_reason` `guard_input` or
/// `guard_output`, and the guards are part of the build key.
///
/// Resumable: rows are generated and committed in windows of `shard_rows`
/// in input order; a rerun after a kill continues after the last committed
/// window with the same arithmetic, and a rerun of a finished build does
/// nothing.
pub fn respond(
    input: &TableFile,
    model: &mut Model,
    settings: &RespondSettings,
    guard: Option<&mut dyn StreamGuard>,
    out: &Path,
    progress: &mut dyn FnMut(RespondProgress),
) -> Result<RespondSummary> {
    settings.validate()?;
    let gs = &settings.generation;
    let mut prompts = prompts_of(input)?;
    if let Some(limit) = settings.limit {
        prompts.truncate(limit);
    }
    let mut provenance = provenance(settings, input, &model.dir.provenance.content_hash)?;
    if let Some(g) = &guard {
        provenance.settings["guard"] = g.describe();
    }
    let build_key = provenance.build_key(&RESPONSES);
    let (mut writer, state) =
        match ShardedWriter::open(out, &RESPONSES, &build_key, &[input.path()])? {
            Opened::Finished(table) => {
                return Ok(StageSummary::cached(table));
            }
            Opened::Writer(w, s) => (w, s),
        };

    // Work items in table order: prompt-major, then sample.
    let samples = settings.samples as usize;
    let total = prompts.len() * samples;
    let start = (state.rows as usize).min(total);
    let mut request = |model: &Model, item: usize| -> Result<Request> {
        let prompt = &prompts[item / samples];
        let sample = (item % samples).to_string();
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = &gs.system {
            messages.push(Message {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: prompt.text.clone(),
        });
        Ok(Request {
            prompt: model.encode_conversation(&messages)?,
            seed: row_seed("respond", gs.seed, &[&prompt.id, &sample]),
        })
    };

    let options = GenerateOptions {
        sampling: gs.sampling(),
        max_new_tokens: gs.max_new_tokens as usize,
        stop_ids: model.stop_ids.clone(),
        batch_size: gs.batch_size,
        max_context: model.max_context(),
        share_prefix: true,
        logprobs: false,
        readout: None,
    };
    let stop = StopStrings::new(&gs.stop);
    let model_name = model.dir.provenance.name.clone();
    let model_hash = model.dir.provenance.content_hash.clone();
    let counts = run_windows(
        model,
        &mut writer,
        &mut request,
        start,
        total,
        gs.shard_rows,
        &options,
        &stop,
        guard,
        progress,
        &mut |item, g| {
            let prompt = &prompts[item / samples];
            Ok(Response {
                id: String::new(),
                prompt_id: prompt.id.clone(),
                prompt: prompt.text.clone(),
                system: gs.system.clone(),
                sample: (item % samples) as u32,
                model: model_name.clone(),
                model_hash: model_hash.clone(),
                temperature: gs.temperature,
                top_p: gs.top_p,
                top_k: gs.top_k as u32,
                max_new_tokens: gs.max_new_tokens,
                seed: g.request.seed,
                finish_reason: g.finish_reason().to_string(),
                text: g.text,
                prompt_tokens: g.request.prompt.len() as u32,
                completion_tokens: g.completion_tokens,
            }
            .with_id())
        },
    )?;
    let table = writer.finish(&provenance)?;
    Ok(StageSummary::generated(table, start, total, counts))
}
