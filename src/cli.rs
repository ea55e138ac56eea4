//! Command-line arguments. Each subcommand's arguments stop in its file under `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Build Constitutional AI training data as reproducible Parquet tables.
///
/// Every subcommand reads and writes plain Parquet; `-` as a path means
/// standard input or output, so subcommands compose in pipelines.
#[derive(Debug, Parser)]
#[command(
    name = "charter",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    /// Print no progress or summaries on stderr (errors are still printed).
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Work with prompt sets.
    #[command(subcommand)]
    Prompts(PromptsCommand),
    /// Drop duplicate rows of any charter table, judged by one text column.
    Dedup(DedupArgs),
    /// Flag degenerate rows of a responses, critiques or revisions table, and drop them.
    Filter(FilterArgs),
    /// Show a table: name, rows, schema, provenance, content hash and sample rows.
    Inspect(InspectArgs),
    /// Import, describe and create model directories.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Check, import and show constitutions (`constitutions/*.toml`).
    #[command(subcommand)]
    Constitution(ConstitutionCommand),
    /// Answer one message with a model, for a quick look at it.
    Chat(ChatArgs),
    /// Answer every prompt of a `prompts` table: writes a `responses` table.
    Respond(RespondArgs),
    /// Critique every answer of a `responses` (round 1) or `revisions` table against a drawn principle.
    Critique(CritiqueArgs),
    /// Revise every critiqued answer following its principle's revision request.
    Revise(ReviseArgs),
    /// Pair two answers to the same prompt: samples of one table, or two tables.
    Pair(PairArgs),
    /// Label every pair with AI feedback: soft preferences from the labeller's probabilities.
    Label(LabelArgs),
    /// Rate every answer of a `responses` or `revisions` table from 1 to 9 against a drawn principle: direct RLAIF's reward, from the rater's digit probabilities.
    Rate(RateArgs),
    /// Write labels or revisions in the JSON-lines layouts common trainers read.
    Export(ExportArgs),
    /// Generate synthetic user messages for every category of a classifier constitution: writes a `queries` table.
    Queries(QueriesArgs),
    /// Add copies of queries encoded, enciphered or wrapped in jailbreak templates.
    Augment(AugmentArgs),
    /// Judge every query against a classifier constitution: soft targets P(blocked) from a labeller's probabilities.
    Target(TargetArgs),
    /// Run a build file: a graph of stages, each rebuilt only when its inputs, settings, model or constitution changed.
    Build(BuildArgs),
    /// Measure a model or labeller.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Train on charter's tables: SFT on revisions, a preference model or DPO on labels.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Add preference-model scores to a responses, revisions, pairs or labels table.
    Score(ScoreArgs),
    /// Add an input guard's score and verdict to a prompts, queries, targets, responses or revisions table; `classify calibrate` sets its threshold.
    Classify(ClassifyArgs),
    /// Remove what interrupted charter runs left under a directory: `*.partial` work, stale lock files, temporary files.
    Gc(GcArgs),
    /// Write a build's report: one HTML page with its graph, row quality, labels, training and evaluations.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GcArgs {
    /// The directory to clean, searched recursively (links are not followed).
    pub(crate) dir: PathBuf,
    /// List what would be removed, and remove nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Turn a GGUF file (llama architecture) or a HuggingFace safetensors checkpoint directory (llama, mistral, qwen2) into a model directory.
    Import(ModelImportArgs),
    /// Describe a model directory.
    Info(ModelInfoArgs),
    /// Write a tiny random-weight model directory (2 layers, byte-level tokenizer) for tests.
    Tiny(ModelTinyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ModelImportArgs {
    /// A GGUF file, or a HuggingFace checkpoint directory (config.json, tokenizer.json, tokenizer_config.json, *.safetensors).
    pub(crate) source: PathBuf,
    /// The model directory to write.
    #[arg(short, long, value_name = "DIR")]
    pub(crate) output: PathBuf,
    /// Weight type of the generation graph.
    #[arg(long, value_enum, default_value_t = charter_model::Dtype::F32)]
    pub(crate) dtype: charter_model::Dtype,
    /// Replace a model directory of other content at the output (never anything that is not a charter model directory).
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ModelInfoArgs {
    /// The model directory.
    pub(crate) dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ModelTinyArgs {
    /// The model directory to write.
    #[arg(short, long, value_name = "DIR")]
    pub(crate) output: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Replace a model directory of other content at the output (never anything that is not a charter model directory).
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConstitutionCommand {
    /// Parse and validate a constitution; print its name, version, counts and content hash.
    Check(ConstitutionCheckArgs),
    /// Turn a public JSON constitution (HuggingFace CAI recipe, or the CAI paper's
    /// CritiqueRevisionInstructions.json) into charter's TOML.
    ///
    /// The layout is told from the JSON's shape. Neither layout has preference
    /// principles: give them with `--preferences`, else the file is written
    /// with a warning and fails `check` until some are added.
    Import(ConstitutionImportArgs),
    /// Print a constitution as charter reads it, defaults filled in.
    Show(ConstitutionShowArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ConstitutionCheckArgs {
    /// The constitution (TOML).
    pub(crate) file: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ConstitutionImportArgs {
    /// The JSON file to import.
    pub(crate) source: PathBuf,
    /// Preference principles: a JSON list of questions (as in RLMadisonInstructions.json).
    #[arg(long, value_name = "FILE")]
    pub(crate) preferences: Option<PathBuf>,
    /// Name of the constitution [default: the output file's stem].
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// The TOML file to write (`-` for standard output).
    #[arg(short, long, value_name = "TOML")]
    pub(crate) output: String,
}

#[derive(Debug, Args)]
pub(crate) struct ConstitutionShowArgs {
    /// The constitution (TOML).
    pub(crate) file: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    /// The model directory.
    #[arg(short, long, value_name = "DIR")]
    pub(crate) model: PathBuf,
    /// The user message.
    pub(crate) message: String,
    #[command(flatten)]
    pub(crate) generation: charter_stages::GenSettings,
    #[command(flatten)]
    pub(crate) guard: crate::commands::GuardFlags,
}

#[derive(Debug, Args)]
pub(crate) struct RespondArgs {
    /// The model directory.
    #[arg(short, long, value_name = "DIR")]
    pub(crate) model: PathBuf,
    /// Input `prompts` table, or a classifier's `queries` (`-` for standard input).
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,
    /// Output `responses` table (`-` for standard output: not resumable).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: String,
    #[command(flatten)]
    pub(crate) settings: charter_stages::RespondSettings,
    #[command(flatten)]
    pub(crate) guard: crate::commands::GuardFlags,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PromptsCommand {
    /// Import prompts from JSONL, CSV, Parquet or text files into a `prompts` table, deduplicated.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// Input files (`-` for standard input).
    #[arg(required = true, value_name = "FILES")]
    pub(crate) inputs: Vec<PathBuf>,

    /// Output `prompts` table (`-` for standard output).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: String,

    #[command(flatten)]
    pub(crate) settings: charter_stages::ImportSettings,

    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DedupArgs {
    /// Input table (`-` for standard input).
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,

    /// Output table, same schema (`-` for standard output).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: String,

    #[command(flatten)]
    pub(crate) settings: charter_stages::TableDedupSettings,

    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// A build file, or the output directory of a build (holding `build-report.json`).
    pub(crate) build: PathBuf,
    /// The page to write [default: `report.html` in the build's output directory].
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct FilterArgs {
    /// Input table: responses, critiques or revisions (`-` for standard input).
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,

    /// Output table: the kept rows with a `quality_flags` column (`-` for standard output).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: String,

    #[command(flatten)]
    pub(crate) settings: charter_stages::FilterSettings,

    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The table (`-` for standard input).
    pub(crate) table: PathBuf,

    /// Show the first N rows.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub(crate) head: usize,

    /// Show N rows drawn uniformly at random without replacement, in table order, instead of
    /// the first ones. The draw depends only on the row count and --seed, not on row groups.
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "head",
        allow_negative_numbers = true,
        value_parser = |s: &str| s.parse::<u64>().ok().filter(|&n| n > 0).ok_or("expected a number of rows, at least 1")
    )]
    pub(crate) sample: Option<u64>,

    /// The seed of --sample: the same table and seed give the same rows.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 0,
        requires = "sample",
        allow_negative_numbers = true
    )]
    pub(crate) seed: u64,

    /// Summarise every column: type, nulls, distinct values; min, mean, quantiles and max of
    /// numbers, of text lengths (characters) and of list lengths; true/false counts; the values
    /// of text columns with at most 20 of them. Quantiles interpolate linearly between order
    /// statistics, as numpy's default (pandas/polars `quantile(q, interpolation="linear")`).
    #[arg(long)]
    pub(crate) stats: bool,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    /// Recompute the content hash from the rows and fail if it differs from the recorded one.
    #[arg(long)]
    pub(crate) verify: bool,
}

/// Flags of the stages that run a model with a constitution.
#[derive(Debug, Args)]
pub(crate) struct ModelStageFlags {
    /// The model directory.
    #[arg(short, long, value_name = "DIR")]
    pub(crate) model: PathBuf,
    /// The constitution (TOML).
    #[arg(short, long, value_name = "TOML")]
    pub(crate) constitution: PathBuf,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CritiqueArgs {
    /// Input `responses` table (round 1) or `revisions` table (later rounds); `-` for standard input.
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,
    /// Output `critiques` table (`-` for standard output: not resumable).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) stage: ModelStageFlags,
    #[command(flatten)]
    pub(crate) settings: charter_stages::CritiqueSettings,
}

#[derive(Debug, Args)]
pub(crate) struct ReviseArgs {
    /// Input `critiques` table (`-` for standard input).
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,
    /// Output `revisions` table (`-` for standard output: not resumable).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) stage: ModelStageFlags,
    #[command(flatten)]
    pub(crate) generation: charter_stages::GenSettings,
}

#[derive(Debug, Args)]
pub(crate) struct PairArgs {
    /// Input `responses` (or `revisions`, with `--against`) table (`-` for standard input).
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,
    /// Pair each answer of the input with its counterpart in this table instead.
    #[arg(long, value_name = "TABLE")]
    pub(crate) against: Option<PathBuf>,
    /// Output `pairs` table (`-` for standard output).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: PathBuf,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LabelArgs {
    /// Input `pairs` table (`-` for standard input).
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,
    /// Output `labels` table (`-` for standard output: not resumable).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) stage: ModelStageFlags,
    #[command(flatten)]
    pub(crate) settings: charter_stages::LabelSettings,
}

#[derive(Debug, Args)]
pub(crate) struct RateArgs {
    /// Input `responses` or `revisions` table (`-` for standard input).
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,
    /// Output `ratings` table (`-` for standard output: not resumable).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) stage: ModelStageFlags,
    #[command(flatten)]
    pub(crate) settings: charter_stages::RateSettings,
}

#[derive(Debug, Args)]
pub(crate) struct QueriesArgs {
    /// Output `queries` table (`-` for standard output: not resumable).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: PathBuf,
    /// The generator and the classifier constitution.
    #[command(flatten)]
    pub(crate) stage: ModelStageFlags,
    #[command(flatten)]
    pub(crate) settings: charter_stages::classifier::QuerySettings,
}

#[derive(Debug, Args)]
pub(crate) struct AugmentArgs {
    /// Input `queries` table (`-` for standard input).
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,
    /// Output `queries` table (`-` for standard output).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: PathBuf,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// The model that writes rewrites (`paraphrase`, `past`, `future`).
    #[arg(short, long, value_name = "DIR")]
    pub(crate) model: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) settings: charter_stages::classifier::AugmentSettings,
}

#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    /// Input `queries` table, or a `responses` table answering them (for
    /// an output guard) (`-` for standard input).
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,
    /// With a responses table: the queries table they answer.
    #[arg(long, value_name = "TABLE")]
    pub(crate) queries: Option<PathBuf>,
    /// Output `targets` table (`-` for standard output: not resumable).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: PathBuf,
    /// The labeller and the classifier constitution.
    #[command(flatten)]
    pub(crate) stage: ModelStageFlags,
    #[command(flatten)]
    pub(crate) settings: charter_stages::classifier::TargetSettings,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// Input `labels` (preference) or `revisions` (sft) table (`-` for standard input).
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,
    /// Output JSON-lines file (`-` for standard output).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) settings: charter_stages::ExportSettings,
}

#[derive(Debug, Subcommand)]
pub(crate) enum EvalCommand {
    /// Agreement of an AI labeller with human comparisons: alignment, calibration, position bias.
    #[command(alias = "labeler")]
    Labeller(EvalLabellerArgs),
    /// Policy B against policy A on held-out prompts, judged by the AI labeller: win rate with a 95% interval, and Elo.
    Policy(EvalPolicyArgs),
    /// A policy's guards on harmful and harmless queries: attack success unguarded and guarded, over-refusal, AUROC and TPR at low FPR, compute overhead.
    Guard(Box<crate::commands::EvalGuardArgs>),
}

#[derive(Debug, Args)]
pub(crate) struct EvalPolicyArgs {
    /// Policy A, the baseline (a model directory).
    #[arg(short = 'a', long = "policy-a", value_name = "DIR")]
    pub(crate) a: PathBuf,
    /// Policy B, the one evaluated.
    #[arg(short = 'b', long = "policy-b", value_name = "DIR")]
    pub(crate) b: PathBuf,
    /// The constitution the labeller judges by (harmlessness or helpfulness).
    #[arg(short, long, value_name = "TOML")]
    pub(crate) constitution: PathBuf,
    /// Held-out prompts (a `prompts` table).
    #[arg(short, long, value_name = "PROMPTS")]
    pub(crate) input: PathBuf,
    /// Directory for both policies' responses, the pairs, the labels and report.json (cached and resumable).
    #[arg(short, long, value_name = "DIR")]
    pub(crate) output: PathBuf,
    /// The AI feedback model [default: policy A].
    #[arg(long, value_name = "DIR", alias = "labeler")]
    pub(crate) labeller: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) settings: charter_stages::PolicyEvalSettings,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EvalLabellerArgs {
    /// JSON lines: `conversation`, `response_a`, `response_b`, `preferred` ("A" or "B"), optional `principle`.
    #[arg(long, value_name = "JSONL")]
    pub(crate) comparisons: PathBuf,
    /// Score only the order given (A first); by default both orders are scored and averaged.
    #[arg(long)]
    pub(crate) no_swap: bool,
    /// Let the labeller reason before answering.
    #[arg(long)]
    pub(crate) cot: bool,
    /// Write the report as JSON to this file too.
    #[arg(short, long, value_name = "JSON")]
    pub(crate) output: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) stage: ModelStageFlags,
    #[command(flatten)]
    pub(crate) generation: charter_stages::GenSettings,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("emit_or_submit").args(["emit", "submit"])))]
pub(crate) struct BuildArgs {
    /// The build file (TOML; see examples/cai.toml).
    pub(crate) file: PathBuf,
    /// Print what would run and why, and run nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Delete this stage's output (and any partial build of it) first, so it runs again (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub(crate) force: Vec<String>,
    /// Print the build report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Run one shard of N: the row-parallel stages for the prompts whose shard is I (0-based), under <out>/shards/I-of-N/.
    #[arg(long, value_name = "I/N", value_parser = parse_shard, conflicts_with_all = ["merge", "status", "emit"])]
    pub(crate) shard: Option<charter_build::Shard>,
    /// Merge the shards' tables into the build's own (byte-identical to an unsharded build), then run the global stages.
    #[arg(long, conflicts_with_all = ["status", "emit"])]
    pub(crate) merge: bool,
    /// Show what each shard has done (done, partial with rows, missing), and run nothing.
    #[arg(long, conflicts_with = "emit")]
    pub(crate) status: bool,
    /// How many shards (for --merge and --status: by default the one count found under <out>/shards/).
    #[arg(long, value_name = "N")]
    pub(crate) shards: Option<u32>,
    /// Print the job files that run the build as N shards and a merge: a Slurm submission script, or Kubernetes Jobs.
    #[arg(long, value_enum, requires = "shards")]
    pub(crate) emit: Option<EmitArg>,
    /// Write the Slurm script to <out>/shards/ and run it: sbatch submits the shards and the merge (charter holds no credentials: sbatch uses yours).
    #[arg(long, value_enum, requires = "shards", conflicts_with_all = ["emit", "shard", "merge", "status"])]
    pub(crate) submit: Option<SubmitArg>,
    #[command(flatten)]
    pub(crate) launch: LaunchFlags,
}

/// A scheduler `--emit` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EmitArg {
    /// A bash script submitting Slurm job arrays and the merge job (`--dependency=afterok`).
    Slurm,
    /// A Kubernetes Indexed Job and a suspended merge Job, as YAML.
    K8s,
}

/// A scheduler `--submit` submits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SubmitArg {
    /// `sbatch`, through the script `--emit slurm` prints.
    Slurm,
}

/// What `--emit` and `--submit` ask of the scheduler.
#[derive(Debug, Args)]
#[command(next_help_heading = "Job files (--emit, --submit)")]
pub(crate) struct LaunchFlags {
    /// Shards running at once (Slurm `%K`, the Job's `parallelism`).
    #[arg(long, value_name = "K", requires = "emit_or_submit")]
    pub(crate) max_parallel: Option<u32>,
    /// CPUs per shard.
    #[arg(long, value_name = "C", requires = "emit_or_submit")]
    pub(crate) cpus_per_task: Option<u32>,
    /// Memory per shard (Slurm `16G`, Kubernetes `16Gi`).
    #[arg(long, value_name = "M", requires = "emit_or_submit")]
    pub(crate) mem: Option<String>,
    /// The charter executable on the nodes [default: this one].
    #[arg(long, value_name = "PATH", requires = "emit_or_submit")]
    pub(crate) charter: Option<String>,
    /// Slurm: the partition.
    #[arg(long, value_name = "P", requires = "emit_or_submit")]
    pub(crate) partition: Option<String>,
    /// Slurm: time limit per shard (`HH:MM:SS`); the task is signalled 120 s before it and requeued.
    #[arg(long, value_name = "T", requires = "emit_or_submit")]
    pub(crate) time: Option<String>,
    /// Slurm: the cluster's MaxArraySize; more shards are submitted as several arrays.
    #[arg(long, value_name = "S", default_value_t = charter_build::SLURM_MAX_ARRAY_SIZE)]
    pub(crate) max_array_size: u32,
    /// Kubernetes: the container image holding charter.
    #[arg(long, value_name = "IMAGE", default_value = "charter:latest")]
    pub(crate) image: String,
    /// Kubernetes: the ReadWriteMany PersistentVolumeClaim holding the build.
    #[arg(long, value_name = "NAME", default_value = "charter-build")]
    pub(crate) claim: String,
    /// Kubernetes: where the claim is mounted [default: the deepest directory holding everything the build reads and writes].
    #[arg(long, value_name = "DIR", requires = "emit_or_submit")]
    pub(crate) mount: Option<PathBuf>,
    /// Kubernetes: retries per shard (backoffLimitPerIndex).
    #[arg(long, value_name = "R", default_value_t = 3)]
    pub(crate) retries: u32,
}

fn parse_shard(s: &str) -> Result<charter_build::Shard, String> {
    charter_build::Shard::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub(crate) enum TrainCommand {
    /// Supervised fine-tuning on `revisions` tables (SL-CAI); `responses` tables mix in helpfulness rows.
    Sft(TrainSftArgs),
    /// A preference model (the backbone with a scalar head) on a `labels` table's soft labels.
    Pm(TrainPmArgs),
    /// DPO on a `labels` table with soft targets (RL-CAI); the starting model is the reference.
    Dpo(TrainDpoArgs),
    /// A constitutional classifier (the backbone with a scalar head) on a `targets` table.
    Classifier(TrainClassifierArgs),
    /// A streaming output guard that is a linear probe on the policy's own states, on a `targets` table: one dot product per generated token.
    Probe(TrainProbeArgs),
    /// Online RL on a `prompts` table (RL-CAI): sample from the policy, score with a preference model or the labeller, update with a KL penalty.
    Rl(TrainRlArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TrainFlags {
    /// The model directory to start from.
    #[arg(short, long, value_name = "DIR")]
    pub(crate) model: PathBuf,
    /// The model directory to write (a checkpoint is kept beside it, as DIR.checkpoint, until it is done).
    #[arg(short, long, value_name = "DIR")]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) config: charter_train::TrainConfig,
    /// Continue an interrupted run from its checkpoint (same inputs and settings).
    #[arg(long)]
    pub(crate) resume: bool,
    /// Print the training record as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TrainSftArgs {
    /// `revisions` tables, and `responses` tables to mix in (repeatable).
    #[arg(short, long, value_name = "TABLE", required = true)]
    pub(crate) input: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) flags: TrainFlags,
}

#[derive(Debug, Args)]
pub(crate) struct TrainPmArgs {
    /// The `labels` table.
    #[arg(short, long, value_name = "TABLE")]
    pub(crate) input: PathBuf,
    /// Share of pairs held out for the accuracy and calibration report.
    #[arg(long, value_name = "SHARE", default_value_t = charter_train::Task::DEFAULT_HELD_OUT)]
    pub(crate) held_out: f64,
    #[command(flatten)]
    pub(crate) flags: TrainFlags,
}

#[derive(Debug, Args)]
pub(crate) struct TrainClassifierArgs {
    /// The `targets` table.
    #[arg(short, long, value_name = "TABLE")]
    pub(crate) input: PathBuf,
    /// What the classifier reads: `input`, the user's message; `output`,
    /// every prefix of the answer as it streams.
    #[arg(long, value_enum)]
    pub(crate) role: charter_train::GuardRole,
    /// Share of rows held out for the AUROC and calibration report.
    #[arg(long, value_name = "SHARE", default_value_t = charter_train::Task::DEFAULT_HELD_OUT)]
    pub(crate) held_out: f64,
    /// Weight of the category's label in each target; the rest is the labeller's P(blocked).
    #[arg(long, value_name = "W", default_value_t = charter_train::Task::DEFAULT_LABEL_WEIGHT)]
    pub(crate) label_weight: f64,
    #[command(flatten)]
    pub(crate) flags: TrainFlags,
}

#[derive(Debug, Args)]
pub(crate) struct TrainProbeArgs {
    /// The policy whose states the probe reads (the model `respond --guard` will guard).
    #[arg(short, long, value_name = "DIR")]
    pub(crate) model: PathBuf,
    /// The `targets` table, judged with answers (`charter target --queries`).
    #[arg(short, long, value_name = "TABLE")]
    pub(crate) input: PathBuf,
    /// The probe's directory (`probe.json`; calibrate it with `charter classify calibrate`).
    #[arg(short, long, value_name = "DIR")]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) settings: charter_train::ProbeSettings,
    /// ONNX Runtime threads reading the policy's states [default: every core available].
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) threads: usize,
    /// Print the probe's record (without its weights) as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TrainRlArgs {
    /// The `prompts` table the policy answers.
    #[arg(short, long, value_name = "TABLE")]
    pub(crate) input: PathBuf,
    #[command(flatten)]
    pub(crate) rl: charter_train::RlSettings,
    #[command(flatten)]
    pub(crate) flags: TrainFlags,
}

#[derive(Debug, Args)]
pub(crate) struct TrainDpoArgs {
    /// The `labels` table.
    #[arg(short, long, value_name = "TABLE")]
    pub(crate) input: PathBuf,
    /// DPO's β: how far the policy may move from the reference.
    #[arg(long, default_value_t = charter_train::Task::DEFAULT_BETA)]
    pub(crate) beta: f64,
    /// Where the reference model's log-probabilities are cached
    /// [default: $XDG_CACHE_HOME/charter/dpo-reference or ~/.cache/charter/dpo-reference].
    #[arg(long, value_name = "DIR")]
    pub(crate) cache: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) flags: TrainFlags,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct ClassifyArgs {
    #[command(subcommand)]
    pub(crate) command: Option<ClassifyCommand>,
    /// The guard (`charter train classifier`), calibrated.
    #[arg(short, long, value_name = "DIR", required = true)]
    pub(crate) model: Option<PathBuf>,
    /// A prompts, queries, targets, responses or revisions table.
    #[arg(short, long, value_name = "IN", required = true)]
    pub(crate) input: Option<PathBuf>,
    /// The same table with `guard_score` and `guard_verdict` added (`-` for standard output).
    #[arg(short, long, value_name = "OUT", required = true)]
    pub(crate) output: Option<String>,
    #[command(flatten)]
    pub(crate) settings: charter_train::ScoreSettings,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClassifyCommand {
    /// Pick the guard's threshold on benign rows so that at most a target share of them is blocked.
    Calibrate(CalibrateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CalibrateArgs {
    /// The guard (`charter train classifier`).
    #[arg(short, long, value_name = "DIR")]
    pub(crate) model: PathBuf,
    /// Benign rows: a prompts, responses or revisions table, or the harmless rows of a queries or targets table.
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,
    /// The share of benign rows the guard may block.
    #[arg(long, value_name = "F")]
    pub(crate) target_fpr: f64,
    #[command(flatten)]
    pub(crate) settings: charter_train::ScoreSettings,
    /// Print the calibration as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ScoreArgs {
    /// The preference model directory (`charter train pm`).
    #[arg(short, long, value_name = "DIR")]
    pub(crate) model: PathBuf,
    /// A `responses`, `revisions`, `pairs` or `labels` table.
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: PathBuf,
    /// The same table with `pm_score` (or `pm_score_a`, `pm_score_b`) added (`-` for standard output).
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: String,
    #[command(flatten)]
    pub(crate) settings: charter_train::ScoreSettings,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}
