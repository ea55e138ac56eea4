//! One module per subcommand: arguments → settings → a library call → output.

mod build;
mod chat;
mod classifier;
mod constitution;
mod dedup;
mod eval_guard;
mod filter;
mod gc;
mod guard;
mod inspect;
mod model;
mod prompts_import;
mod report;
mod respond;
mod stages;
mod train;

pub(crate) use eval_guard::EvalGuardArgs;
pub(crate) use guard::GuardFlags;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use charter_table::{Output, TableSummary};

use crate::cli::{Cli, Command, ModelCommand, PromptsCommand};

/// Runs the parsed command line.
pub(crate) fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Prompts(PromptsCommand::Import(args)) => prompts_import::run(args, cli.quiet),
        Command::Dedup(args) => dedup::run(args, cli.quiet),
        Command::Filter(args) => filter::run(args, cli.quiet),
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
        Command::Rate(args) => stages::rate(args, cli.quiet),
        Command::Export(args) => stages::export(args, cli.quiet),
        Command::Queries(args) => classifier::queries(args, cli.quiet),
        Command::Augment(args) => classifier::augment(args, cli.quiet),
        Command::Target(args) => classifier::target(args, cli.quiet),
        Command::Build(args) => build::run(args, cli.quiet),
        Command::Eval(crate::cli::EvalCommand::Labeller(args)) => stages::eval_labeller(args),
        Command::Eval(crate::cli::EvalCommand::Guard(args)) => eval_guard::run(*args, cli.quiet),
        Command::Eval(crate::cli::EvalCommand::Policy(args)) => {
            stages::eval_policy(args, cli.quiet)
        }
        Command::Train(command) => train::run(command, cli.quiet),
        Command::Score(args) => train::score(args, cli.quiet),
        Command::Classify(args) => classifier::classify(args, cli.quiet),
        Command::Gc(args) => gc::run(args),
        Command::Report(args) => report::run(args, cli.quiet),
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

/// Where a command writes: the path given, or for `-` a scratch file that
/// is copied to standard output once complete. Stages write through a
/// resumable journal beside their output, which standard output cannot
/// hold; the scratch directory goes away with this value.
pub(crate) struct OutputFile {
    output: Output,
    path: PathBuf,
    _scratch: Option<tempfile::TempDir>,
}

impl OutputFile {
    /// `arg` as given on the command line; `file_name` names the scratch file
    /// (its extension matters to stages that check it).
    pub(crate) fn new(arg: &Path, file_name: &str) -> Result<Self> {
        let output = Output::parse(&arg.to_string_lossy());
        Ok(match &output {
            Output::Path(path) => OutputFile {
                path: path.clone(),
                output,
                _scratch: None,
            },
            Output::Stdout => {
                let dir = tempfile::tempdir().context("creating a temporary directory")?;
                OutputFile {
                    path: dir.path().join(file_name),
                    output,
                    _scratch: Some(dir),
                }
            }
        })
    }

    /// The file the library writes.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the result goes, for messages.
    pub(crate) fn output(&self) -> &Output {
        &self.output
    }

    /// Copies a finished scratch file to standard output.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.output == Output::Stdout {
            let mut file = std::fs::File::open(&self.path)
                .with_context(|| format!("reading {}", self.path.display()))?;
            let mut stdout = std::io::stdout().lock();
            std::io::copy(&mut file, &mut stdout).context("writing standard output")?;
            stdout.flush().context("writing standard output")?;
        }
        Ok(())
    }
}

/// What a command that writes one table did: the table written, or found
/// up to date (`cached`).
struct Wrote<'a> {
    output: &'a Output,
    table: &'a TableSummary,
    cached: bool,
}

impl Wrote<'_> {
    /// `--json`: the command's `fields` and the table's, one object on stdout.
    fn json(&self, mut fields: serde_json::Value) {
        let t = self.table;
        fields["kept"] = t.rows.into();
        fields["cached"] = self.cached.into();
        fields["output"] = self.output.display().into();
        fields["content_hash"] = t.content_hash.clone().into();
        fields["build_key"] = t.build_key.clone().into();
        println!("{fields}");
    }

    /// On stderr unless `quiet`: `ran()` when it wrote, or that the output
    /// was up to date (the same `same`), then where the rows are.
    fn say(&self, quiet: bool, same: &str, ran: impl FnOnce() -> String) {
        if quiet {
            return;
        }
        if self.cached {
            eprintln!(
                "{} is up to date (same {same}): nothing to do",
                self.output.display()
            );
        } else {
            eprintln!("{}", ran());
        }
        eprintln!("{}", written(self.output, self.table));
    }
}

/// The most resident memory this process has held, in bytes (Linux's
/// `VmHWM`; `None` where the kernel does not say).
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `bytes` in GB with two decimals, for summaries.
fn gigabytes(bytes: Option<u64>) -> String {
    bytes.map_or("unknown".into(), |b| format!("{:.2} GB", b as f64 / 1e9))
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
