//! Build-file parsing and planning: order, paths, overrides, located errors.

use super::*;
use charter_stages::ExportFormat;

const BASE: &str = r#"
[build]
model = "m"
constitution = "c.toml"
out = "o"
[defaults]
max_new_tokens = 8
[[stage]]
name = "prompts"
kind = "table"
path = "p.parquet"
"#;

fn parse(extra: &str) -> Result<BuildPlan> {
    BuildPlan::from_toml(&format!("{BASE}{extra}"), Path::new("dir/b.toml"))
}

fn err(extra: &str) -> String {
    parse(extra).unwrap_err().to_string()
}

#[test]
fn stages_run_after_their_inputs_with_resolved_paths_and_overrides() {
    let plan = parse(
        r#"
[[stage]]
name = "crit"
kind = "critique"
input = "resp"
temperature = 0
[[stage]]
name = "resp"
kind = "respond"
input = "prompts"
samples = 2
[[stage]]
name = "sft"
kind = "export"
input = "rev"
[[stage]]
name = "rev"
kind = "revise"
input = "crit"
"#,
    )
    .unwrap();
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["prompts", "resp", "crit", "rev", "sft"]);
    assert_eq!(plan.out, Path::new("dir/o"));
    let crit = plan.stage("crit").unwrap();
    assert_eq!(crit.output, Path::new("dir/o/crit.parquet"));
    assert_eq!(crit.model.as_deref(), Some(Path::new("dir/m")));
    let StageOp::Critique(settings) = &crit.op else {
        panic!("critique op")
    };
    assert_eq!(settings.generation.temperature, 0.0);
    assert_eq!(settings.generation.max_new_tokens, 8);
    let sft = plan.stage("sft").unwrap();
    assert_eq!(sft.output, Path::new("dir/o/sft.jsonl"));
    assert!(matches!(
        sft.op,
        StageOp::Export(ExportSettings {
            format: Some(ExportFormat::Sft),
            chat: false
        })
    ));
}

#[test]
fn errors_name_the_file_line_column_stage_and_field() {
    // BASE ends on line 11; the extra text starts on line 12.
    let stage = "[[stage]]\nname = \"r\"\nkind = \"respond\"\ninput = \"prompts\"\n";
    let e = err(&format!("{stage}tempurature = 1\n"));
    assert!(
        e.starts_with("dir/b.toml:16:1: stage `r`, field `tempurature`: is not a field of a `respond` stage (it takes: input, output, model, seed, samples, limit, temperature,"),
        "{e}"
    );
    let e = err(&format!("{stage}max_new_tokens = \"x\"\n"));
    assert!(
        e.starts_with("dir/b.toml:16:18: stage `r`, field `max_new_tokens`:"),
        "{e}"
    );
    let e = err("[[stage]]\nname = \"r\"\nkind = \"respond\"\ninput = \"nope\"\n");
    assert_eq!(
        e,
        "dir/b.toml:15:9: stage `r`, field `input`: no stage is named `nope`"
    );
    let e = err(&format!("{stage}round = 2\n"));
    assert!(
        e.starts_with(
            "dir/b.toml:16:1: stage `r`, field `round`: does not apply to a `respond` stage"
        ),
        "{e}"
    );
    // A value the stage's own check rejects is reported at the value.
    let e = err(&format!("{stage}top_p = 2.0\n"));
    assert!(
        e.starts_with("dir/b.toml:16:9: stage `r`, field `top_p`: must be"),
        "{e}"
    );
    let e = err(&format!("{stage}samples = 0\n"));
    assert!(
        e.starts_with("dir/b.toml:16:11: stage `r`, field `samples`:"),
        "{e}"
    );
    let e = err(
        "[[stage]]\nname = \"r\"\nkind = \"critique\"\ninput = \"prompts\"\n[[stage]]\nname = \"r\"\nkind = \"pair\"\ninput = \"prompts\"\n",
    );
    assert!(
        e.starts_with("dir/b.toml:17:8:") && e.contains("two stages"),
        "{e}"
    );
    let e = err("[[stage]]\nname = \"x\"\nkind = \"frobnicate\"\n");
    assert!(
        e.starts_with("dir/b.toml:14:8: stage `x`, field `kind`:") && e.contains("frobnicate"),
        "{e}"
    );
}

#[test]
fn defaults_hold_generation_settings_only_and_their_errors_are_located() {
    let text = BASE.replace("max_new_tokens = 8", "max_new_tokens = 8\nsamples = 2");
    let e = BuildPlan::from_toml(&text, Path::new("b.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("b.toml:8:1: [defaults], field `samples`: [defaults] holds generation settings: temperature,"),
        "{e}"
    );
    let text = BASE.replace("max_new_tokens = 8", "top_k = -1");
    let e = BuildPlan::from_toml(
        &format!("{text}[[stage]]\nname = \"r\"\nkind = \"respond\"\ninput = \"prompts\"\n"),
        Path::new("b.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("b.toml:7:9: stage `r`, field `top_k`:"),
        "{e}"
    );
}

#[test]
fn cycles_are_errors() {
    let e = err(r#"
[[stage]]
name = "a"
kind = "critique"
input = "b"
[[stage]]
name = "b"
kind = "revise"
input = "a"
"#);
    assert!(
        e.contains("cycle") && e.contains("`a`") && e.contains("`b`"),
        "{e}"
    );
}

#[test]
fn train_and_eval_stages_use_trained_models_and_their_own_settings() {
    let plan = BuildPlan::from_toml(
        r#"
[build]
model = "m"
constitution = "c.toml"
out = "o"
seed = 3
[defaults]
batch_size = 32
[[stage]]
name = "prompts"
kind = "table"
path = "p.parquet"
[[stage]]
name = "eval"
kind = "eval"
input = "prompts"
a = "m"
b = "rl"
limit = 4
[[stage]]
name = "rl-answers"
kind = "respond"
input = "prompts"
model = "rl"
[[stage]]
name = "rl"
kind = "train"
objective = "dpo"
model = "sl"
input = "labels"
lora_rank = 8
[[stage]]
name = "sl"
kind = "train"
objective = "sft"
input = "resp"
mix = ["prompts"]
lr = 3e-5
device = "cpu"
dtype = "f32"
[[stage]]
name = "resp"
kind = "respond"
input = "prompts"
[[stage]]
name = "labels"
kind = "table"
path = "l.parquet"
"#,
        Path::new("dir/b.toml"),
    )
    .unwrap();
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "prompts",
            "resp",
            "sl",
            "labels",
            "rl",
            "eval",
            "rl-answers"
        ]
    );

    let sl = plan.stage("sl").unwrap();
    assert_eq!(sl.output, Path::new("dir/o/sl"));
    assert_eq!(sl.inputs(), ["resp", "prompts"]);
    assert!(sl.model_stages.is_empty());
    let StageOp::Train(op) = &sl.op else {
        panic!("train op")
    };
    assert_eq!(op.task, Task::Sft);
    assert_eq!(op.settings.lr, 3e-5);
    assert_eq!(op.settings.seed, 3, "the build seed");
    assert_eq!(
        op.settings.batch_size,
        TrainSettings::default().batch_size,
        "[defaults] are generation settings and do not apply"
    );
    assert_eq!((op.device, op.dtype), (DeviceChoice::Cpu, Dtype::F32));

    let rl = plan.stage("rl").unwrap();
    assert_eq!(rl.model.as_deref(), Some(Path::new("dir/o/sl")));
    assert_eq!(rl.model_stages, ["sl"]);
    let StageOp::Train(op) = &rl.op else {
        panic!("train op")
    };
    assert_eq!(op.task, Task::Dpo { beta: 0.1 });
    assert_eq!(op.settings.lora.map(|l| (l.rank, l.alpha)), Some((8, 8.0)));
    assert_eq!(op.settings.lr, TrainSettings::default_lr(true));
    assert_eq!((op.device, op.dtype), (DeviceChoice::Auto, Dtype::Int8));

    let answers = plan.stage("rl-answers").unwrap();
    assert_eq!(answers.model.as_deref(), Some(Path::new("dir/o/rl")));
    assert_eq!(answers.dependencies(), ["prompts", "rl"]);

    let eval = plan.stage("eval").unwrap();
    assert_eq!(eval.output, Path::new("dir/o/eval"));
    assert_eq!(
        eval.model.as_deref(),
        Some(Path::new("dir/m")),
        "the labeller"
    );
    assert_eq!(eval.constitution.as_deref(), Some(Path::new("dir/c.toml")));
    let StageOp::Eval(op) = &eval.op else {
        panic!("eval op")
    };
    assert_eq!(op.a, Path::new("dir/m"));
    assert_eq!(op.b, Path::new("dir/o/rl"));
    assert_eq!(op.settings.limit, Some(4));
    assert_eq!(op.settings.generation.batch_size, 32, "[defaults] apply");
    assert!(op.settings.label().swap);
}

#[test]
fn an_rl_stage_resolves_its_reward_judge_and_held_out_prompts() {
    let rl = |extra: &str| {
        format!(
            r#"
[[stage]]
name = "held-out"
kind = "import"
files = ["h.txt"]
[[stage]]
name = "labels"
kind = "table"
path = "l.parquet"
[[stage]]
name = "pm"
kind = "train"
objective = "pm"
input = "labels"
[[stage]]
name = "rl"
kind = "train"
objective = "rl"
input = "prompts"
{extra}
"#
        )
    };
    let plan = parse(&rl(
        "reward = \"pm:pm\"\neval_prompts = \"held-out\"\njudge = \"m\"\niterations = 3",
    ))
    .unwrap();
    let stage = plan.stage("rl").unwrap();
    assert_eq!(stage.dependencies(), ["prompts", "held-out", "pm"]);
    let StageOp::Train(op) = &stage.op else {
        panic!("train op")
    };
    assert_eq!(op.task, Task::Rl);
    let settings = op.rl.as_ref().unwrap();
    assert_eq!(
        settings.reward,
        charter_train::RewardSource::Pm("dir/o/pm".into())
    );
    assert_eq!(settings.judge.as_deref(), Some(Path::new("dir/m")));
    assert_eq!(
        settings.constitution.as_deref(),
        Some(Path::new("dir/c.toml")),
        "the build's constitution, for the judge"
    );
    assert_eq!(settings.iterations, 3);
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    assert!(names.iter().position(|n| *n == "pm") < names.iter().position(|n| *n == "rl"));

    // A rule needs no constitution, and gets none.
    let plan = parse(&rl("reward = \"contains:Sure\"")).unwrap();
    let StageOp::Train(op) = &plan.stage("rl").unwrap().op else {
        panic!("train op")
    };
    assert_eq!(op.rl.as_ref().unwrap().constitution, None);

    for (extra, wanted) in [
        ("iterations = 2", "needs `reward`"),
        ("reward = \"labeller:pm\"", "trains a preference model"),
        (
            "reward = \"contains:x\"\neval_prompts = \"pm\"\njudge = \"m\"",
            "not a stage of prompts",
        ),
        ("reward = \"contains:x\"\nsamples = 1", "at least 2"),
    ] {
        let e = err(&rl(extra));
        assert!(e.contains(wanted), "{extra}: {e}");
    }
    let e = err(r#"
[[stage]]
name = "x"
kind = "train"
objective = "sft"
input = "prompts"
reward = "contains:x"
"#);
    assert!(e.contains("`reward`") && e.contains("rl"), "{e}");
}

#[test]
fn a_model_used_to_build_its_own_training_data_is_a_cycle() {
    let e = err(r#"
[[stage]]
name = "resp"
kind = "respond"
input = "prompts"
model = "sl"
[[stage]]
name = "sl"
kind = "train"
objective = "sft"
input = "resp"
"#);
    assert!(
        e.contains("cycle") && e.contains("`resp`") && e.contains("`sl`"),
        "{e}"
    );
}

/// A stage kind's settings, from the command line's flags: the long names
/// as build-file fields (a switch `--no-swap` is `swap = false`; a valued
/// `--no-repeat-ngram-size` is `no_repeat_ngram_size`).
fn flag_fields<A: clap::Args>() -> Vec<String> {
    let command = A::augment_args(clap::Command::new("stage"));
    command
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let field = match a.get_action() {
                clap::ArgAction::SetFalse => long.strip_prefix("no-").unwrap_or(long),
                _ => long,
            };
            Some(field.replace('-', "_"))
        })
        .collect()
}

#[test]
fn the_command_line_and_build_files_take_the_same_settings() {
    use charter_stages::classifier::{AugmentSettings, QuerySettings, TargetSettings};
    use charter_stages::{
        CritiqueSettings, ExportSettings, GenSettings, LabelSettings, PolicyEvalSettings,
        RateSettings, RespondSettings,
    };
    let cases = [
        (StageKind::Import, flag_fields::<ImportSettings>()),
        (StageKind::Dedup, flag_fields::<TableDedupSettings>()),
        (StageKind::Filter, flag_fields::<FilterSettings>()),
        (StageKind::Respond, flag_fields::<RespondSettings>()),
        (StageKind::Critique, flag_fields::<CritiqueSettings>()),
        (StageKind::Revise, flag_fields::<GenSettings>()),
        (StageKind::Label, flag_fields::<LabelSettings>()),
        (StageKind::Rate, flag_fields::<RateSettings>()),
        (StageKind::Score, flag_fields::<ScoreSettings>()),
        (StageKind::Export, flag_fields::<ExportSettings>()),
        (StageKind::Eval, flag_fields::<PolicyEvalSettings>()),
        (StageKind::Queries, flag_fields::<QuerySettings>()),
        (StageKind::Augment, flag_fields::<AugmentSettings>()),
        (StageKind::Target, flag_fields::<TargetSettings>()),
        (
            StageKind::Train,
            [
                flag_fields::<charter_train::TrainConfig>(),
                flag_fields::<charter_train::RlSettings>(),
            ]
            .concat(),
        ),
    ];
    for (kind, flags) in cases {
        let fields = kind.fields();
        for flag in &flags {
            assert!(
                fields.contains(&flag.as_str()),
                "{kind:?}: flag --{flag} has no build-file field"
            );
        }
        // The other way round; a train stage's objective settings are the
        // train subcommands' own flags.
        let description = kind.describe();
        let objective = ["objective", "held_out", "beta", "label_weight", "role"];
        for field in &description.settings {
            assert!(
                flags.iter().any(|f| f == field) || objective.contains(field),
                "{kind:?}: field `{field}` has no flag"
            );
        }
    }
}
