//! `charter train rl` on the tiny model: a planted reward is learnt, the
//! KL penalty holds the policy near its start, the rollouts are a verified
//! table, and an interrupted run resumes to the same weights and samples.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use charter_table::Value;

use crate::{fails, file, ok, table_rows};

/// The tiny model and a prompts table of four prompts.
fn setup(dir: &Path) -> (String, String) {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let model = path("tiny");
    ok(&["model", "tiny", "-o", &model, "--seed", "5"]);
    let input = file(
        dir,
        "p.txt",
        "How do I pick a lock?\nSay hi.\nName a colour.\nWrite a poem.\n",
    );
    let prompts = path("prompts.parquet");
    ok(&["prompts", "import", &input, "-o", &prompts, "--no-near-dup"]);
    (model, prompts)
}

/// Settings small enough for seconds: 4 iterations of 4 prompts × 8 samples.
const QUICK: [&str; 18] = [
    "--iterations",
    "4",
    "--prompts-per-iteration",
    "4",
    "--samples",
    "8",
    "--max-new-tokens",
    "24",
    "--max-len",
    "96",
    "--batch-size",
    "8",
    "--lr",
    "1e-3",
    "--dtype",
    "f32",
    "--reward",
    "contains:e",
];

/// (reward, kl) per iteration of a finished run, from its rollouts table.
fn per_iteration(out: &str) -> Vec<(f64, f64)> {
    let rows = table_rows(
        &format!("{out}/rollouts.parquet"),
        &["iteration", "reward", "kl"],
        |r| match r {
            [Value::UInt(it), Value::Float(reward), Value::Float(kl)] => {
                (*it as usize, *reward, *kl)
            }
            other => panic!("{other:?}"),
        },
    );
    let last = rows.iter().map(|r| r.0).max().unwrap();
    (1..=last)
        .map(|it| {
            let of: Vec<_> = rows.iter().filter(|r| r.0 == it).collect();
            let mean =
                |f: fn(&&(usize, f64, f64)) -> f64| of.iter().map(f).sum::<f64>() / of.len() as f64;
            (mean(|r| r.1), mean(|r| r.2))
        })
        .collect()
}

/// (iteration, reward, start_reward, win_rate) of a run's `curve.parquet`.
fn curve(path: &str) -> Vec<(u64, f64, f64, f64)> {
    use arrow_array::{Array, Float64Array, UInt64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let file = std::fs::File::open(path).unwrap();
    let mut out = Vec::new();
    for batch in ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
    {
        let batch = batch.unwrap();
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let it = col("iteration");
        let it = it.as_any().downcast_ref::<UInt64Array>().unwrap();
        let f = |name: &str| {
            col(name)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone()
        };
        let (reward, start, win) = (f("reward"), f("start_reward"), f("win_rate"));
        for i in 0..batch.num_rows() {
            assert!(!it.is_null(i));
            out.push((it.value(i), reward.value(i), start.value(i), win.value(i)));
        }
    }
    out
}

#[test]
fn a_planted_reward_is_learnt_and_the_kl_penalty_holds_the_policy_back() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path());
    let c = crate::constitution();
    let run = |name: &str, kl: &str| {
        let out = dir.path().join(name).to_str().unwrap().to_string();
        let mut args = vec!["train", "rl", "-m", &model, "-i", &prompts, "-o", &out];
        args.extend(QUICK);
        args.extend(["--kl-coef", kl, "--json"]);
        // The over-optimisation curve on the same prompts, judged by the model itself.
        args.extend(["--eval-prompts", &prompts, "--judge", &model, "-c", &c]);
        let record: serde_json::Value = serde_json::from_slice(&ok(&args)).unwrap();
        assert_eq!(record["objective"], "rl");
        assert_eq!(record["objective_settings"]["reward"]["contains"], "e");
        let curve = per_iteration(&out);
        (out, curve)
    };

    let (free, unpenalised) = run("free", "0");
    let (first, last) = (unpenalised[0], unpenalised[3]);
    // The first iteration samples the starting policy itself: its KL is
    // zero up to the rounding between decoding and scoring kernels.
    assert!(first.1.abs() < 1e-4, "{unpenalised:?}");
    assert!(
        last.0 > 0.4 && last.0 > first.0 + 0.3,
        "the share of answers with an `e` should rise: {unpenalised:?}"
    );
    assert!(last.1 > 1.0, "moving that far costs KL: {unpenalised:?}");

    let (_, penalised) = run("held", "1");
    // The first iteration samples the start itself (KL 0), so the penalty
    // first shapes the second iteration's update: compare the drift from the
    // third iteration on. Both runs draw the same samples and train in the
    // same order (neither depends on the settings), so what differs is the
    // penalty — and the float noise its near-zero first-iteration KL adds,
    // which can already flip a sampled token by the second iteration.
    let drift = |v: &[(f64, f64)]| v[2..].iter().map(|x| x.1).sum::<f64>();
    assert!(
        drift(&penalised) < 0.6 * drift(&unpenalised),
        "a KL weight of 1 should keep the policy closer: {penalised:?} vs {unpenalised:?}"
    );

    // The curve: the start, every second iteration and the end, with the
    // training reward of the held-out answers rising from the start's.
    let curve = curve(&format!("{free}/curve.parquet"));
    assert_eq!(
        curve.iter().map(|r| r.0).collect::<Vec<_>>(),
        [0, 2, 4],
        "{curve:?}"
    );
    let (start, end) = (curve[0], curve[2]);
    assert_eq!(
        start.1, start.2,
        "at the start, both policies are the start"
    );
    assert!(end.1 > end.2, "{curve:?}");
    assert!(
        (start.3 - 0.5).abs() < 1e-9,
        "identical answers tie: {curve:?}"
    );
    for it in [0, 2, 4] {
        let labels = format!("{free}.eval/iteration-{it}/labels.parquet");
        ok(&["inspect", "--verify", &labels]);
    }

    // The rollouts are a finished, verified table, and the run is up to date.
    ok(&["inspect", "--verify", &format!("{free}/rollouts.parquet")]);
    let mut args = vec!["train", "rl", "-m", &model, "-i", &prompts, "-o", &free];
    args.extend(QUICK);
    args.extend(["--kl-coef", "0"]);
    args.extend(["--eval-prompts", &prompts, "--judge", &model, "-c", &c]);
    let again = crate::charter(&args, None);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("up to date"));
}

#[test]
fn rl_settings_and_inputs_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path());
    let out = dir.path().join("rl").to_str().unwrap().to_string();
    let base = ["train", "rl", "-m", &model, "-i", &prompts, "-o", &out];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        fails(&args, None)
    };
    let err = with(&["--reward", "contains:e", "--samples", "1"]);
    assert!(
        err.contains("samples") && err.contains("at least 2"),
        "{err}"
    );
    let err = with(&["--reward", "judge:x"]);
    assert!(err.contains("pm:DIR"), "{err}");
    let err = with(&["--reward", &format!("labeller:{model}")]);
    assert!(err.contains("constitution"), "{err}");
    let c = crate::constitution();
    let err = with(&[
        "--reward",
        "contains:e",
        "--eval-prompts",
        &prompts,
        "-c",
        &c,
    ]);
    assert!(err.contains("`judge`"), "{err}");
    let err = with(&["--reward", "contains:e", "--judge", &model]);
    assert!(
        err.contains("`judge`") && err.contains("eval_prompts"),
        "{err}"
    );
    let responses = dir.path().join("r.parquet").to_str().unwrap().to_string();
    ok(&[
        "respond",
        "-m",
        &model,
        "-i",
        &prompts,
        "-o",
        &responses,
        "--max-new-tokens",
        "4",
    ]);
    let err = fails(
        &[
            "train",
            "rl",
            "-m",
            &model,
            "-i",
            &responses,
            "-o",
            &out,
            "--reward",
            "contains:e",
        ],
        None,
    );
    assert!(
        err.contains("prompts table") && err.contains("r.parquet"),
        "{err}"
    );
    assert!(!Path::new(&out).exists());
}

/// A run interrupted after its second iteration and resumed ends with the
/// weights and rollouts of an uninterrupted one.
#[test]
fn an_interrupted_run_resumes_to_the_same_weights_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path());
    let settings = || {
        let mut rl =
            charter_train::RlSettings::new(charter_train::RewardSource::Contains("e".into()));
        rl.iterations = 3;
        rl.prompts_per_iteration = 2;
        rl.samples = 4;
        rl.max_new_tokens = 16;
        let mut config = charter_train::TrainConfig {
            max_len: 96,
            batch_size: 4,
            lr: Some(1e-3),
            dtype: charter_model::Dtype::F32,
            ..Default::default()
        };
        config.seed = 7;
        (rl, config.settings().unwrap())
    };
    let train = |out: &Path, stop_after: Option<u64>, resume: bool| {
        let interrupt = AtomicBool::new(false);
        let (rl, settings) = settings();
        let job = charter_train::Job {
            model: Path::new(&model),
            out,
            settings,
            device: charter_train::DeviceChoice::Cpu,
            dtype: charter_model::Dtype::F32,
            resume,
            interrupt: &interrupt,
        };
        charter_train::train_rl(&job, Path::new(&prompts), &rl, &mut |e| {
            if let charter_train::RlProgress::Iteration(it, _) = e
                && Some(it.iteration) == stop_after
            {
                interrupt.store(true, Ordering::SeqCst);
            }
        })
        .unwrap()
    };
    let whole = dir.path().join("whole");
    assert!(matches!(
        train(&whole, None, false),
        charter_train::Outcome::Written { .. }
    ));
    let split = dir.path().join("split");
    assert!(matches!(
        train(&split, Some(2), false),
        charter_train::Outcome::Interrupted { .. }
    ));
    assert!(!split.exists());
    assert!(matches!(
        train(&split, None, true),
        charter_train::Outcome::Written { .. }
    ));
    let bytes = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(
        bytes(&whole, "model.safetensors"),
        bytes(&split, "model.safetensors")
    );
    let hash = |d: &Path| {
        charter_table::TableFile::open(&d.join("rollouts.parquet"))
            .unwrap()
            .content_hash()
            .unwrap()
            .to_string()
    };
    assert_eq!(hash(&whole), hash(&split));
}

/// A build file's `rl` stage trains the same weights as the command with
/// the same settings, and a second build finds it up to date.
#[test]
fn a_build_stage_trains_what_the_command_does() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path());
    let c = crate::constitution();
    let build = file(
        dir.path(),
        "rl.toml",
        format!(
            r#"
[build]
model = "{model}"
constitution = "{c}"
out = "out"

[[stage]]
name = "prompts"
kind = "table"
path = "{prompts}"

[[stage]]
name = "rl"
kind = "train"
objective = "rl"
input = "prompts"
reward = "contains:e"
iterations = 2
prompts_per_iteration = 4
samples = 8
max_new_tokens = 24
max_len = 96
batch_size = 8
lr = 1e-3
dtype = "f32"
eval_prompts = "prompts"
judge = "{model}"
"#
        ),
    );
    let first = String::from_utf8(crate::charter(&["build", &build], None).stderr).unwrap();
    assert!(first.contains("rl (train): ran"), "{first}");
    let again = String::from_utf8(crate::charter(&["build", &build], None).stderr).unwrap();
    assert!(again.contains("rl (train): cached"), "{again}");

    let out = dir.path().join("cli").to_str().unwrap().to_string();
    let mut args = vec!["train", "rl", "-m", &model, "-i", &prompts, "-o", &out];
    args.extend(&QUICK[2..]);
    args.extend([
        "--iterations",
        "2",
        "--eval-prompts",
        &prompts,
        "--judge",
        &model,
        "-c",
        &c,
    ]);
    ok(&args);
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(
        weights(&dir.path().join("out/rl")),
        weights(Path::new(&out))
    );
    assert!(dir.path().join("out/rl/curve.parquet").is_file());
    // The build's page draws the loop and its curve.
    crate::report::check_page(
        &dir.path().join("out"),
        &["online RL, per iteration", "online RL, held-out prompts"],
    );
}

/// A labeller's rewards are kept by content hash: a second run that samples
/// the same answers reads every reward from the cache (a planted value
/// proves it is read, not recomputed), and a changed KL weight does not
/// change the key.
#[test]
fn labeller_rewards_are_cached_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path());
    let cache = dir.path().join("rewards");
    let run = |out: &Path, kl_coef: f64, rate_cot: bool| {
        let mut rl = charter_train::RlSettings::new(charter_train::RewardSource::Labeller(
            Path::new(&model).to_path_buf(),
        ));
        rl.constitution = Some(crate::constitution().into());
        rl.iterations = 1;
        rl.prompts_per_iteration = 2;
        rl.samples = 2;
        rl.max_new_tokens = 8;
        rl.kl_coef = kl_coef;
        rl.reward_cache = Some(cache.clone());
        rl.rate_cot = rate_cot;
        let mut config = charter_train::TrainConfig {
            max_len: 96,
            batch_size: 4,
            dtype: charter_model::Dtype::F32,
            ..Default::default()
        };
        config.seed = 3;
        let interrupt = AtomicBool::new(false);
        let job = charter_train::Job {
            model: Path::new(&model),
            out,
            settings: config.settings().unwrap(),
            device: charter_train::DeviceChoice::Cpu,
            dtype: charter_model::Dtype::F32,
            resume: false,
            interrupt: &interrupt,
        };
        let mut cached = Vec::new();
        charter_train::train_rl(&job, Path::new(&prompts), &rl, &mut |e| {
            if let charter_train::RlProgress::Iteration(it, _) = e {
                cached.push(it.reward_cached);
            }
        })
        .unwrap();
        let rows = table_rows(
            out.join("rollouts.parquet").to_str().unwrap(),
            &["reward", "reward_reasoning"],
            |r| match r {
                [Value::Float(reward), Value::Null] => (*reward, None),
                [Value::Float(reward), Value::Str(why)] => (*reward, Some(why.to_string())),
                other => panic!("{other:?}"),
            },
        );
        let (rewards, reasoning): (Vec<f64>, Vec<Option<String>>) = rows.into_iter().unzip();
        assert!(
            reasoning.iter().all(|r| r.is_some() == rate_cot),
            "{reasoning:?}"
        );
        (rewards, cached, reasoning)
    };
    let (first, cached, _) = run(&dir.path().join("a"), 0.05, false);
    assert_eq!(cached, [0.0]);
    assert_eq!(first.len(), 4);
    // One entry per answer (fewer only if two answers coincide), each the
    // reward the run used.
    let entries: Vec<_> = walk(&cache);
    assert!(!entries.is_empty() && entries.len() <= 4, "{entries:?}");
    for e in &entries {
        let r: f64 = std::fs::read_to_string(e).unwrap().trim().parse().unwrap();
        assert!(first.contains(&r), "{r} not among {first:?}");
        std::fs::write(e, "0.625\n").unwrap();
    }
    let (second, cached, _) = run(&dir.path().join("b"), 0.2, false);
    assert_eq!(cached, [1.0]);
    assert_eq!(second, [0.625; 4]);
    // A labeller that reasons first is another reward: none of the plain
    // rating's entries are its, and its own are kept as well.
    let (reasoned, cached, why) = run(&dir.path().join("c"), 0.05, true);
    assert_eq!(cached, [0.0]);
    assert_eq!(reasoned.len(), 4);
    assert!(
        reasoned
            .iter()
            .all(|r| (-1.0..=1.0).contains(r) && *r != 0.625)
    );
    let (again, cached, why_again) = run(&dir.path().join("d"), 0.2, true);
    assert_eq!(cached, [1.0]);
    assert_eq!(again, reasoned);
    assert_eq!(
        why_again, why,
        "the reasoning comes back from the cache too"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => out.extend(walk(&path)),
            false => out.push(path),
        }
    }
    out
}
