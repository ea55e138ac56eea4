//! `respond`: every prompt answered `samples` times — the first stage of
//! Constitutional AI's supervised phase (Bai et al. 2022 §3.1).

use std::path::Path;

use charter_gen::{GenerateOptions, Request, Sampling};
use charter_model::Message;
use charter_table::{
    InputRef, Opened, Prompt, Provenance, RESPONSES, Record, Response, ShardedWriter, TableFile,
};

use crate::error::{Error, Result};
use crate::generate::{GenSettings, StageProgress, StageSummary, run_windows};
use crate::model::Model;
use crate::seed::row_seed;
use crate::stop::StopStrings;

/// Version of the respond stage: bump when the same inputs would give different rows.
pub const STAGE_VERSION: u32 = 1;

/// The most answers per prompt a run takes: far beyond what any recipe
/// samples (two for pairs, tens for best-of-n), low enough that a typo
/// cannot request billions of rows.
pub const MAX_SAMPLES: u32 = 4096;

/// Settings of a respond run.
#[derive(Debug, Clone, PartialEq)]
pub struct RespondSettings {
    /// Answers per prompt.
    pub samples: u32,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Cap on generated tokens per answer.
    pub max_new_tokens: u32,
    /// The build seed every row's seed derives from.
    pub seed: u64,
    /// System prompt; `None` lets the chat template use its default.
    pub system: Option<String>,
    /// Text that ends an answer; cut from the recorded text.
    pub stop: Vec<String>,
    /// Answer only the first this many prompts.
    pub limit: Option<usize>,
    /// Rows decoded together.
    pub batch_size: usize,
    /// Rows per window: generated together and committed as one shard, so
    /// the most work a killed run can lose.
    pub shard_rows: usize,
    /// ONNX Runtime intra-op threads the model runs with.
    pub threads: usize,
}

impl RespondSettings {
    /// The settings that determine the output, as recorded in provenance.
    pub fn canonical(&self) -> serde_json::Value {
        serde_json::json!({
            "samples": self.samples,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "top_k": self.sampling.top_k,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "system": self.system,
            "stop": self.stop,
            "limit": self.limit,
            // The schedule: batch composition can change float rounding, so
            // it is part of what determines the bytes.
            "batch_size": self.batch_size,
            "window": self.shard_rows,
            "threads": self.threads,
        })
    }

    /// The generation part of the settings.
    fn generation(&self) -> GenSettings {
        GenSettings {
            sampling: self.sampling,
            max_new_tokens: self.max_new_tokens,
            seed: self.seed,
            system: self.system.clone(),
            stop: self.stop.clone(),
            batch_size: self.batch_size,
            shard_rows: self.shard_rows,
            threads: self.threads,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.samples == 0 || self.samples > MAX_SAMPLES {
            return Err(Error::invalid(
                "samples",
                format!("must be from 1 to {MAX_SAMPLES}, got {}", self.samples),
            ));
        }
        self.generation().validate()
    }
}

/// What a respond run did.
pub type RespondSummary = StageSummary;

/// Progress of a respond run, for display.
pub type RespondProgress = StageProgress;

/// Answers the prompts of `input` with `model` into the `responses` table at `out`.
///
/// Resumable: rows are generated and committed in windows of `shard_rows`
/// in input order; a rerun after a kill continues after the last committed
/// window with the same arithmetic, and a rerun of a finished build does
/// nothing.
pub fn respond(
    input: &TableFile,
    model: &mut Model,
    settings: &RespondSettings,
    out: &Path,
    progress: &mut dyn FnMut(RespondProgress),
) -> Result<RespondSummary> {
    settings.validate()?;
    let mut prompts: Vec<Prompt> = input.rows()?;
    if let Some(limit) = settings.limit {
        prompts.truncate(limit);
    }
    let provenance = Provenance {
        stage: "respond".into(),
        stage_version: STAGE_VERSION,
        settings: settings.canonical(),
        inputs: vec![InputRef {
            name: "prompts".into(),
            content_hash: input.content_hash_or_compute()?,
        }],
        model_hash: Some(model.dir.provenance.content_hash.clone()),
        constitution_hash: None,
    };
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
        if let Some(system) = &settings.system {
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
            seed: row_seed("respond", settings.seed, &[&prompt.id, &sample]),
        })
    };

    let options = GenerateOptions {
        sampling: settings.sampling,
        max_new_tokens: settings.max_new_tokens as usize,
        stop_ids: model.stop_ids.clone(),
        batch_size: settings.batch_size,
        max_context: model.max_context(),
    };
    let stop = StopStrings::new(&settings.stop);
    let model_name = model.dir.provenance.name.clone();
    let model_hash = model.dir.provenance.content_hash.clone();
    let counts = run_windows(
        model,
        &mut writer,
        &mut request,
        start,
        total,
        settings.shard_rows,
        &options,
        &stop,
        progress,
        &mut |item, g| {
            let prompt = &prompts[item / samples];
            Ok(Response {
                id: String::new(),
                prompt_id: prompt.id.clone(),
                prompt: prompt.text.clone(),
                system: settings.system.clone(),
                sample: (item % samples) as u32,
                model: model_name.clone(),
                model_hash: model_hash.clone(),
                temperature: settings.sampling.temperature,
                top_p: settings.sampling.top_p,
                top_k: settings.sampling.top_k as u32,
                max_new_tokens: settings.max_new_tokens,
                seed: g.request.seed,
                text: g.text,
                prompt_tokens: g.request.prompt.len() as u32,
                completion_tokens: g.completion_tokens,
                finish_reason: g.finish.as_str().to_string(),
            }
            .with_id())
        },
    )?;
    let table = writer.finish(&provenance)?;
    Ok(StageSummary::generated(table, start, total, counts))
}
