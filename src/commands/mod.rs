//! One module per subcommand: arguments → settings → a library call → output.

mod build;
mod chat;
mod constitution;
mod dedup;
mod gc;
mod inspect;
mod model;
mod prompts_import;
mod respond;
mod stages;
mod train;

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use charter_table::dedup::{DedupOptions, NearDupOptions};
use charter_table::{Output, TableSummary};

use crate::cli::{Cli, Command, DedupFlags, ModelCommand, PromptsCommand};

/// Runs the parsed command line.
pub(crate) fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Prompts(PromptsCommand::Import(args)) => prompts_import::run(args, cli.quiet),
        Command::Dedup(args) => dedup::run(args, cli.quiet),
        Command::Inspect(args) => inspect::run(args),
        Command::Model(ModelCommand::Import(args)) => model::import(args, cli.quiet),
        Command::Model(ModelCommand::Info(args)) => model::info(args),
        Command::Model(ModelCommand::Tiny(args)) => model::tiny(args, cli.quiet),
        Command::Constitution(command) => constitution::run(command, cli.quiet),
        Command::Chat(args) => chat::run(args),
        Command::Respond(args) => respond::run(args, cli.quiet),
        Command::Critique(args) => stages::critique(args, cli.quiet),
        Command::Revise(args) => stages::revise(args, cli.quiet),
        Command::Pair(args) => stages::pair(args, cli.quiet),
        Command::Label(args) => stages::label(args, cli.quiet),
        Command::Export(args) => stages::export(args, cli.quiet),
        Command::Build(args) => build::run(args, cli.quiet),
        Command::Eval(crate::cli::EvalCommand::Labeler(args)) => stages::eval_labeler(args),
        Command::Eval(crate::cli::EvalCommand::Policy(args)) => {
            stages::eval_policy(args, cli.quiet)
        }
        Command::Train(command) => train::run(command, cli.quiet),
        Command::Score(args) => train::score(args, cli.quiet),
        Command::Gc(args) => gc::run(args),
    }
}

/// The dedup options the flags ask for.
fn dedup_options(flags: &DedupFlags, exact: bool) -> Result<DedupOptions> {
    let t = flags.near_dup_threshold;
    anyhow::ensure!(
        t > 0.0 && t <= 1.0,
        "--near-dup-threshold must be in (0, 1], got {t}"
    );
    Ok(DedupOptions {
        exact,
        near: (!flags.no_near_dup).then_some(NearDupOptions {
            threshold: t,
            num_perm: flags.num_perm,
            ..NearDupOptions::default()
        }),
    })
}

/// The dedup settings as recorded in provenance.
fn dedup_settings(options: &DedupOptions) -> serde_json::Value {
    serde_json::json!({
        "exact": options.exact,
        "near": options.near.map(|n| serde_json::json!({
            "threshold": n.threshold,
            "num_perm": n.num_perm,
            "ngram": n.ngram,
        })),
    })
}

/// Reads a whole input file, or standard input for `-`.
fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
    }
}

/// Refuses `--json` when the table itself goes to stdout: the two would mix.
fn check_json_output(json: bool, output: &Output) -> Result<()> {
    anyhow::ensure!(
        !(json && *output == Output::Stdout),
        "--json prints to stdout, which `-o -` already uses for the table"
    );
    Ok(())
}

/// One line on stderr saying what was written.
fn written(output: &Output, summary: &TableSummary) -> String {
    format!(
        "wrote {} rows to {} (content hash {})",
        summary.rows,
        output.display(),
        &summary.content_hash[..16]
    )
}
