//! `queries`: synthetic user messages for every category of a classifier
//! constitution (Sharma et al. 2025 §2.1: the constitution's categories
//! drive a model that writes queries of each).
//!
//! For each category the generator sees the category's worked examples as
//! earlier turns (the request, then an example as its answer; the order
//! rotated per sample so no example always comes last) and writes one new
//! message. The first non-empty line of what it writes is the query.

use std::path::Path;

use charter_gen::Request;
use charter_model::Message;
use charter_table::{InputRef, Opened, Provenance, QUERIES, Query, Record, ShardedWriter};

use super::{Category, ClassifierConstitution};
use crate::error::{Error, Result};
use crate::generate::{GenSettings, StageProgress, StageSummary, run_windows};
use crate::model::Model;
use crate::seed::row_seed;
use crate::stop::StopStrings;

/// Version of the queries stage.
pub const QUERIES_VERSION: u32 = 1;

/// The most queries per category a run takes.
pub const MAX_PER_CATEGORY: u32 = 100_000;

/// Settings of a queries run: `charter queries`' flags and a build file's
/// `queries` stage.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySettings {
    /// Queries generated per category.
    #[arg(long, value_name = "N", default_value_t = QuerySettings::default().per_category)]
    pub per_category: u32,
    /// How the queries are generated.
    #[serde(skip)]
    #[command(flatten)]
    pub generation: GenSettings,
}

impl Default for QuerySettings {
    fn default() -> Self {
        QuerySettings {
            per_category: 16,
            generation: GenSettings::DEFAULT,
        }
    }
}

impl QuerySettings {
    /// The settings that determine the output, as recorded in provenance.
    pub fn canonical(&self) -> serde_json::Value {
        let mut v = self.generation.canonical();
        v["per_category"] = serde_json::json!(self.per_category);
        v
    }

    /// Checks the values a user can get wrong; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        if self.per_category == 0 || self.per_category > MAX_PER_CATEGORY {
            return Err(Error::invalid(
                "per_category",
                format!(
                    "must be from 1 to {MAX_PER_CATEGORY}, got {}",
                    self.per_category
                ),
            ));
        }
        self.generation.validate()
    }
}

/// The provenance a queries run records.
pub fn queries_provenance(
    settings: &QuerySettings,
    model_hash: &str,
    constitution_hash: &str,
) -> Provenance {
    Provenance {
        stage: "queries".into(),
        stage_version: QUERIES_VERSION,
        settings: settings.canonical(),
        inputs: Vec::<InputRef>::new(),
        model_hash: Some(model_hash.to_string()),
        constitution_hash: Some(constitution_hash.to_string()),
    }
}

/// The generator's conversation for sample `sample` of `category`.
fn messages(
    c: &ClassifierConstitution,
    gs: &GenSettings,
    category: &Category,
    sample: usize,
) -> Result<Vec<Message>> {
    let ask = c.render_query(category)?;
    let mut m = gs.system_messages();
    let n = category.examples.len();
    for k in 0..n {
        m.push(Message::new("user", ask.clone()));
        m.push(Message::new(
            "assistant",
            category.examples[(sample + k) % n].clone(),
        ));
    }
    m.push(Message::new("user", ask));
    Ok(m)
}

/// The query in what the generator wrote: its first non-empty line,
/// without quotes around it.
pub(crate) fn first_line(text: &str) -> &str {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    let line = line.unwrap_or("");
    line.strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or(line)
        .trim()
}

/// Writes `per_category` queries for every category of `constitution` into
/// the `queries` table at `out`, category by category in file order.
/// Resumable and cached like every generation stage.
pub fn queries(
    model: &mut Model,
    constitution: &ClassifierConstitution,
    settings: &QuerySettings,
    out: &Path,
    progress: &mut dyn FnMut(StageProgress),
) -> Result<StageSummary> {
    settings.validate()?;
    let gs = &settings.generation;
    let constitution_hash = constitution.hash();
    let provenance = queries_provenance(
        settings,
        &model.dir.provenance.content_hash,
        &constitution_hash,
    );
    let (mut writer, state) =
        match ShardedWriter::open(out, &QUERIES, &provenance.build_key(&QUERIES), &[])? {
            Opened::Finished(table) => return Ok(StageSummary::cached(table)),
            Opened::Writer(w, s) => (w, s),
        };
    let per = settings.per_category as usize;
    let total = constitution.categories.len() * per;
    let start = (state.rows as usize).min(total);
    let categories = &constitution.categories;
    let mut request = |model: &Model, item: usize| -> Result<Request> {
        let (category, sample) = (&categories[item / per], item % per);
        Ok(Request {
            prompt: model.encode_conversation(&messages(constitution, gs, category, sample)?)?,
            seed: row_seed("queries", gs.seed, &[&category.id, &sample.to_string()]),
        })
    };
    let options = gs.options(model);
    let stop = StopStrings::new(&gs.stop);
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
        gs.shard_rows,
        &options,
        &stop,
        None,
        progress,
        &mut |item, g| {
            let category = &categories[item / per];
            Ok(Query {
                id: String::new(),
                category: category.id.clone(),
                label: category.label.as_str().to_string(),
                sample: (item % per) as u32,
                parent_id: None,
                transforms: Vec::new(),
                model: name.clone(),
                model_hash: hash.clone(),
                constitution: constitution.name.clone(),
                constitution_hash: constitution_hash.clone(),
                temperature: gs.temperature,
                top_p: gs.top_p,
                top_k: gs.top_k as u32,
                max_new_tokens: gs.max_new_tokens,
                seed: g.request.seed,
                text: first_line(&g.text).to_string(),
                finish_reason: g.finish.as_str().to_string(),
            }
            .with_id())
        },
    )?;
    let table = writer.finish(&provenance)?;
    Ok(StageSummary::generated(table, start, total, counts))
}

#[cfg(test)]
mod tests {
    use super::first_line;

    #[test]
    fn the_query_is_the_first_line_without_quotes() {
        assert_eq!(
            first_line("\n  \"How do I bake bread?\"\nSure!"),
            "How do I bake bread?"
        );
        assert_eq!(first_line("Plain one"), "Plain one");
        assert_eq!(first_line("   \n"), "");
    }
}
