//! `charter build` on the tiny model: a whole SL+RL graph, caching to
//! byte-identical files, minimal rebuilds with dry-run reasons, build-file
//! errors, and resumption after SIGKILL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{charter, constitution, fails, file, inspect, ok};

/// A tiny model and a prompts table of `n` prompts in `dir`.
pub(crate) fn setup(dir: &Path, n: usize) -> (String, String) {
    let model = dir.join("tiny");
    let model = model.to_str().unwrap().to_string();
    ok(&["model", "tiny", "-o", &model, "--seed", "5"]);
    let lines: String = (0..n)
        .map(|i| format!("Question {i}: how do I pick a lock?\n"))
        .collect();
    let input = file(dir, "p.txt", lines);
    let prompts = dir.join("prompts.parquet");
    ok(&[
        "prompts",
        "import",
        &input,
        "-o",
        prompts.to_str().unwrap(),
        "--no-near-dup",
    ]);
    (model, prompts.to_str().unwrap().to_string())
}

/// respond → critique → revise → critique → revise → pair → label → two exports.
pub(crate) fn pipeline(
    model: &str,
    prompts: &str,
    constitution: &str,
    crit2_extra: &str,
) -> String {
    format!(
        r#"[build]
seed = 1
model = "{model}"
constitution = "{constitution}"
out = "out"

[defaults]
max_new_tokens = 8
batch_size = 4
shard_rows = 4

[[stage]]
name = "prompts"
kind = "table"
path = "{prompts}"

[[stage]]
name = "responses"
kind = "respond"
input = "prompts"
samples = 2

[[stage]]
name = "critiques-1"
kind = "critique"
input = "responses"

[[stage]]
name = "revisions-1"
kind = "revise"
input = "critiques-1"

[[stage]]
name = "critiques-2"
kind = "critique"
input = "revisions-1"
{crit2_extra}

[[stage]]
name = "revisions-2"
kind = "revise"
input = "critiques-2"

[[stage]]
name = "pairs"
kind = "pair"
input = "responses"

[[stage]]
name = "labels"
kind = "label"
input = "pairs"

[[stage]]
name = "prefs"
kind = "export"
input = "labels"
format = "preference"

[[stage]]
name = "sft"
kind = "export"
input = "revisions-2"
"#
    )
}

/// Every file under `dir` but the build report, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if !["build-report.json", "report.html"].contains(&p.file_name().unwrap().to_str().unwrap())
        {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Runs a build with `--json`; returns stage → (status, tokens, content hash).
fn build(file: &str, extra: &[&str]) -> BTreeMap<String, (String, u64, String)> {
    let mut args = vec!["build", file, "--json"];
    args.extend(extra);
    let report: serde_json::Value = serde_json::from_slice(&ok(&args)).unwrap();
    let on_disk: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(file)
                .parent()
                .unwrap()
                .join("out/build-report.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(report, on_disk, "the report on disk is the one printed");
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                (
                    s["status"].as_str().unwrap().to_string(),
                    s["tokens"].as_u64().unwrap(),
                    s["content_hash"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// `--dry-run` lines: stage → "verdict: reasons" (the plan, before the
/// blank line that starts the cost estimate).
fn dry_run(file: &str) -> BTreeMap<String, String> {
    let out = String::from_utf8(ok(&["build", file, "--dry-run"])).unwrap();
    out.lines()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (name, rest) = l.split_once("  ").unwrap();
            (name.trim().to_string(), rest.trim().to_string())
        })
        .collect()
}

#[test]
fn a_build_runs_caches_and_rebuilds_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path(), 3);
    let c = constitution();
    let build_file = file(dir.path(), "cai.toml", pipeline(&model, &prompts, &c, ""));
    let out = dir.path().join("out");

    let plan = dry_run(&build_file);
    assert!(plan["responses"].starts_with("run: output"), "{plan:?}");
    assert!(
        plan["labels"].contains("input `pairs` will be rebuilt"),
        "{plan:?}"
    );

    let first = build(&build_file, &[]);
    assert_eq!(first.len(), 10);
    assert_eq!(first["prompts"].0, "source");
    for (stage, (status, tokens, _)) in &first {
        if stage != "prompts" {
            assert_eq!(status, "ran", "{stage}");
        }
        if ["responses", "critiques-1", "revisions-1", "critiques-2"].contains(&stage.as_str()) {
            assert!(*tokens > 0, "{stage} generated");
        }
    }
    assert_eq!(
        inspect(out.join("responses.parquet").to_str().unwrap())["rows"],
        6
    );
    let revisions = inspect(out.join("revisions-2.parquet").to_str().unwrap());
    assert_eq!(revisions["rows"], 6);
    assert_eq!(
        inspect(out.join("labels.parquet").to_str().unwrap())["rows"],
        3
    );
    let sft = std::fs::read_to_string(out.join("sft.jsonl")).unwrap();
    assert_eq!(sft.lines().count(), 6);
    let prefs = std::fs::read_to_string(out.join("prefs.jsonl")).unwrap();
    assert_eq!(prefs.lines().count(), 3);
    let before = snapshot(&out);
    assert_eq!(before.len(), 9, "9 outputs, no partial directories left");

    // Unchanged: nothing runs, nothing is rewritten.
    let plan = dry_run(&build_file);
    for (stage, line) in &plan {
        if stage != "prompts" {
            assert!(line.starts_with("up to date"), "{stage}: {line}");
        }
    }
    let second = build(&build_file, &[]);
    for (stage, (status, tokens, hash)) in &second {
        if stage != "prompts" {
            assert_eq!(status, "cached", "{stage}");
        }
        assert_eq!(*tokens, 0, "{stage} generated nothing");
        assert_eq!(hash, &first[stage].2);
    }
    assert_eq!(snapshot(&out), before, "every file byte-identical");

    // One setting of one stage: that stage and its downstream only.
    let changed = pipeline(&model, &prompts, &c, "max_new_tokens = 12");
    std::fs::write(&build_file, changed).unwrap();
    let plan = dry_run(&build_file);
    assert!(
        plan["critiques-2"].starts_with("run: settings changed: max_new_tokens 8 → 12"),
        "{plan:?}"
    );
    assert!(
        plan["revisions-2"].contains("input `critiques-2` will be rebuilt"),
        "{plan:?}"
    );
    assert!(plan["sft"].starts_with("run"), "{plan:?}");
    for stage in [
        "responses",
        "critiques-1",
        "revisions-1",
        "pairs",
        "labels",
        "prefs",
    ] {
        assert!(plan[stage].starts_with("up to date"), "{stage}: {plan:?}");
    }
    let third = build(&build_file, &[]);
    for (stage, (status, _, _)) in &third {
        let want = match stage.as_str() {
            "prompts" => "source",
            "critiques-2" | "revisions-2" | "sft" => "ran",
            _ => "cached",
        };
        assert_eq!(status, want, "{stage}");
    }
    let after = snapshot(&out);
    for (path, bytes) in &before {
        let name = path.file_name().unwrap().to_str().unwrap();
        let same = &after[path] == bytes;
        let rebuilt = ["critiques-2.parquet", "revisions-2.parquet", "sft.jsonl"].contains(&name);
        assert_eq!(same, !rebuilt, "{name}");
    }

    // --force reruns a stage to the same bytes; dry-run names it.
    let plan = String::from_utf8(ok(&[
        "build",
        &build_file,
        "--dry-run",
        "--force",
        "labels",
    ]))
    .unwrap();
    assert!(plan.contains("forced (--force)"), "{plan}");
    let forced = build(&build_file, &["--force", "labels"]);
    assert_eq!(forced["labels"].0, "ran");
    assert_eq!(forced["labels"].2, first["labels"].2);
    assert_eq!(forced["prefs"].0, "cached", "same labels, same export");
    assert_eq!(snapshot(&out), after);

    // Another constitution: dry-run says which hash changed.
    let edited = std::fs::read_to_string(&c)
        .unwrap()
        .replace("and say briefly why", "and explain why");
    let c2 = file(dir.path(), "c2.toml", edited);
    std::fs::write(
        &build_file,
        pipeline(&model, &prompts, &c2, "max_new_tokens = 12"),
    )
    .unwrap();
    let plan = dry_run(&build_file);
    assert!(
        plan["critiques-1"].contains("constitution hash changed"),
        "{plan:?}"
    );
    assert!(plan["responses"].starts_with("up to date"), "{plan:?}");

    // A stage's own seed, then another build seed: the seed is named.
    let seeded = pipeline(&model, &prompts, &c, "max_new_tokens = 12\nseed = 5");
    std::fs::write(&build_file, &seeded).unwrap();
    let plan = dry_run(&build_file);
    assert!(
        plan["critiques-2"].starts_with("run: settings changed: seed 1 → 5"),
        "{plan:?}"
    );
    std::fs::write(&build_file, seeded.replace("seed = 1\n", "seed = 2\n")).unwrap();
    let plan = dry_run(&build_file);
    assert!(
        plan["responses"].starts_with("run: settings changed: seed 1 → 2"),
        "{plan:?}"
    );
    assert!(
        plan["pairs"].starts_with("run: input `responses` will be rebuilt"),
        "{plan:?}"
    );

    // Another model, other prompts: dry-run names the model and input hashes.
    let model2 = dir.path().join("tiny2");
    let model2 = model2.to_str().unwrap();
    ok(&["model", "tiny", "-o", model2, "--seed", "6"]);
    let more = file(dir.path(), "more.txt", "A different question?\n");
    let prompts2 = dir.path().join("prompts2.parquet");
    let prompts2 = prompts2.to_str().unwrap();
    ok(&["prompts", "import", &more, "-o", prompts2, "--no-near-dup"]);
    std::fs::write(&build_file, pipeline(model2, &prompts, &c, "")).unwrap();
    let plan = dry_run(&build_file);
    assert!(
        plan["responses"].starts_with("run: model hash changed"),
        "{plan:?}"
    );
    std::fs::write(&build_file, pipeline(&model, prompts2, &c, "")).unwrap();
    let plan = dry_run(&build_file);
    assert!(
        plan["responses"].starts_with("run: input content hash changed: `prompts`"),
        "{plan:?}"
    );
    assert!(
        plan["critiques-1"].starts_with("run: input `responses` will be rebuilt"),
        "{plan:?}"
    );
}

#[test]
fn a_malformed_build_file_names_the_file_stage_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let head = "[build]\nmodel = \"m\"\nconstitution = \"c.toml\"\nout = \"out\"\n\
                [[stage]]\nname = \"prompts\"\nkind = \"table\"\npath = \"p.parquet\"\n";
    let cases = [
        (
            "[[stage]]\nname = \"answers\"\nkind = \"respond\"\ninput = \"prompts\"\nmax_new_tokens = \"many\"\n",
            vec!["stage `answers`", "field `max_new_tokens`"],
        ),
        (
            "[[stage]]\nname = \"answers\"\nkind = \"respond\"\ninput = \"prompts\"\ntempreature = 1.0\n",
            vec!["stage `answers`", "tempreature"],
        ),
        (
            "[[stage]]\nname = \"answers\"\nkind = \"respond\"\ninput = \"promts\"\n",
            vec!["stage `answers`", "field `input`", "`promts`"],
        ),
        (
            "[[stage]]\nname = \"pairs\"\nkind = \"pair\"\ninput = \"prompts\"\n\
             [[stage]]\nname = \"crit\"\nkind = \"critique\"\ninput = \"pairs\"\n",
            vec!["stage `crit`", "field `input`", "respond or revise"],
        ),
        (
            "[[stage]]\nname = \"a\"\nkind = \"critique\"\ninput = \"b\"\n\
             [[stage]]\nname = \"b\"\nkind = \"revise\"\ninput = \"a\"\n",
            vec!["cycle", "`a`", "`b`"],
        ),
        (
            "[[stage]]\nname = \"pairs\"\nkind = \"pair\"\ninput = \"prompts\"\nsamples = 2\n",
            vec!["stage `pairs`", "field `samples`", "does not apply"],
        ),
    ];
    for (i, (stage, wanted)) in cases.iter().enumerate() {
        let name = format!("bad{i}.toml");
        let path = file(dir.path(), &name, format!("{head}{stage}"));
        for args in [
            vec!["build", path.as_str()],
            vec!["build", path.as_str(), "--dry-run"],
        ] {
            let err = fails(&args, None);
            assert!(err.contains(&name), "case {i}: {err}");
            for w in wanted {
                assert!(err.contains(w), "case {i}: {w:?} not in {err}");
            }
        }
    }
    assert!(!dir.path().join("out").exists(), "nothing built");
    let missing = dir.path().join("none.toml");
    let err = fails(&["build", missing.to_str().unwrap()], None);
    assert!(err.contains("none.toml"), "{err}");
}

#[test]
fn a_killed_build_resumes_to_the_same_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path(), 120);
    let c = constitution();
    let text = format!(
        r#"[build]
model = "{model}"
constitution = "{c}"
out = "out"
[defaults]
max_new_tokens = 32
temperature = 1.0
batch_size = 4
shard_rows = 4
[[stage]]
name = "prompts"
kind = "table"
path = "{prompts}"
[[stage]]
name = "responses"
kind = "respond"
input = "prompts"
[[stage]]
name = "critiques"
kind = "critique"
input = "responses"
[[stage]]
name = "revisions"
kind = "revise"
input = "critiques"
[[stage]]
name = "sft"
kind = "export"
input = "revisions"
"#
    );
    let whole_dir = dir.path().join("whole");
    let killed_dir = dir.path().join("killed");
    std::fs::create_dir_all(&whole_dir).unwrap();
    std::fs::create_dir_all(&killed_dir).unwrap();
    let whole = file(&whole_dir, "b.toml", &text);
    let killed = file(&killed_dir, "b.toml", &text);
    let expected = build(&whole, &[]);

    // Committed shards across all stages, from their journals.
    let out = killed_dir.join("out");
    let shards = || -> usize {
        let Ok(entries) = std::fs::read_dir(&out) else {
            return 0;
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("journal.jsonl"))
            .filter_map(|j| std::fs::read_to_string(j).ok())
            .map(|j| j.lines().count())
            .sum()
    };
    let finished = |stage: &str| out.join(format!("{stage}.parquet")).exists();
    let mut kills = 0;
    for _ in 0..4 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_charter"))
            .args(["build", &killed])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let before = shards();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if shards() >= before + 3 || child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        if finished("revisions") {
            break;
        }
    }
    assert!(
        kills > 0,
        "the build finished before it could be interrupted"
    );
    let resumed = build(&killed, &[]);
    assert!(
        resumed.values().any(|(s, _, _)| s == "resumed"),
        "some stage resumed from its journal: {resumed:?}"
    );
    for (stage, (_, _, hash)) in &expected {
        assert_eq!(
            hash, &resumed[stage].2,
            "{stage}: same content as uninterrupted"
        );
    }
    for name in [
        "responses.parquet",
        "critiques.parquet",
        "revisions.parquet",
        "sft.jsonl",
    ] {
        assert_eq!(
            std::fs::read(whole_dir.join("out").join(name)).unwrap(),
            std::fs::read(out.join(name)).unwrap(),
            "{name}"
        );
    }
    let status = charter(&["build", &killed, "--dry-run"], None);
    let plan = String::from_utf8(status.stdout).unwrap();
    assert!(!plan.contains(" run:"), "{plan}");
}

/// The graph of `pipeline`, then the training half: SFT on the revisions
/// (responses mixed in), a preference model and DPO from the SFT model on
/// the labels, answers from the DPO model, and an evaluation of it against
/// the base model. `sft_lr` is SFT's learning rate.
fn training(model: &str, prompts: &str, constitution: &str, sft_lr: &str) -> String {
    let quick = "max_len = 96\nbatch_size = 2\ndtype = \"f32\"\ndevice = \"cpu\"";
    format!(
        r#"{}
[[stage]]
name = "sl"
kind = "train"
objective = "sft"
input = "revisions-2"
mix = ["responses"]
lr = {sft_lr}
{quick}

[[stage]]
name = "pm"
kind = "train"
objective = "pm"
input = "labels"
held_out = 0.0
{quick}

[[stage]]
name = "rl"
kind = "train"
objective = "dpo"
model = "sl"
input = "labels"
beta = 0.2
reference_cache = "dpo-cache"
{quick}

[[stage]]
name = "rl-answers"
kind = "respond"
model = "rl"
input = "prompts"

[[stage]]
name = "scored"
kind = "score"
input = "rl-answers"
model = "pm"
max_len = 96

[[stage]]
name = "vs-base"
kind = "eval"
input = "prompts"
a = "{model}"
b = "rl"
limit = 2
"#,
        pipeline(model, prompts, constitution, "")
    )
}

#[test]
fn a_build_trains_evaluates_and_retrains_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path(), 3);
    let c = constitution();
    let build_file = file(
        dir.path(),
        "loop.toml",
        training(&model, &prompts, &c, "1e-4"),
    );
    let out = dir.path().join("out");

    let plan = dry_run(&build_file);
    assert!(plan["sl"].starts_with("run: output"), "{plan:?}");
    assert!(
        plan["rl"].contains("model `sl` will be rebuilt"),
        "{plan:?}"
    );
    assert!(
        plan["vs-base"].contains("model `rl` will be rebuilt"),
        "{plan:?}"
    );
    // The DPO stage runs after the SFT stage whose model it starts from.
    let listed = String::from_utf8(ok(&["build", &build_file, "--dry-run"])).unwrap();
    let order: Vec<&str> = listed
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let at = |s: &str| order.iter().position(|o| *o == s).unwrap();
    assert!(at("sl") < at("rl") && at("rl") < at("rl-answers") && at("rl") < at("vs-base"));

    let first = build(&build_file, &[]);
    for stage in ["sl", "pm", "rl", "rl-answers", "vs-base"] {
        assert_eq!(first[stage].0, "ran", "{stage}");
        assert!(first[stage].1 > 0, "{stage}: tokens trained or generated");
    }
    // Trained directories record their inputs; later stages use them.
    let sl: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sl/charter-train.json")).unwrap()).unwrap();
    assert_eq!(sl["objective"], "sft");
    assert_eq!(
        sl["inputs"].as_array().unwrap().len(),
        2,
        "revisions and responses"
    );
    assert_eq!(sl["settings"]["lr"], 1e-4);
    assert_eq!(
        sl["device"].as_str().unwrap().split(' ').next(),
        Some("cpu")
    );
    let rl: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("rl/charter-train.json")).unwrap()).unwrap();
    assert_eq!(
        rl["base_model"]["content_hash"].as_str(),
        Some(first["sl"].2.as_str())
    );
    let answers = inspect(out.join("rl-answers.parquet").to_str().unwrap());
    assert_eq!(answers["rows"], 3);
    assert_eq!(
        answers["metadata"]["charter.model_hash"].as_str(),
        Some(first["rl"].2.as_str()),
        "{answers}"
    );
    assert!(out.join("pm/score.safetensors").is_file());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("vs-base/report.json")).unwrap()).unwrap();
    assert_eq!(report["report"]["comparisons"], 2);
    assert!(out.join("vs-base/eval-key.json").is_file());
    // The page shows the training curves and the evaluation.
    crate::report::check_page(
        &out,
        &[
            "<h2>Training</h2>",
            ">sl <",
            ">pm <",
            ">rl <",
            "Policy evaluations",
            "vs-base",
        ],
    );
    // The score stage makes what `charter score` makes.
    assert_eq!(first["scored"].0, "ran");
    let scored = out.join("scored.parquet");
    let cli_scored = dir.path().join("cli-scored.parquet");
    ok(&[
        "score",
        "-m",
        out.join("pm").to_str().unwrap(),
        "-i",
        out.join("rl-answers.parquet").to_str().unwrap(),
        "-o",
        cli_scored.to_str().unwrap(),
        "--max-len",
        "96",
    ]);
    let (a, b) = (
        inspect(scored.to_str().unwrap()),
        inspect(cli_scored.to_str().unwrap()),
    );
    assert_eq!(a["build_key"], b["build_key"]);
    assert_eq!(a["content_hash"], b["content_hash"]);
    assert!(a["head"][0]["pm_score"].is_f64(), "{a}");

    // Unchanged: everything is up to date and nothing trains again.
    let plan = dry_run(&build_file);
    for (stage, line) in &plan {
        if stage != "prompts" {
            assert!(line.starts_with("up to date"), "{stage}: {line}");
        }
    }
    let second = build(&build_file, &[]);
    for stage in ["sl", "pm", "rl", "rl-answers", "scored", "vs-base"] {
        assert_eq!(second[stage].0, "cached", "{stage}");
        assert_eq!(second[stage].2, first[stage].2, "{stage}");
    }

    // Another SFT learning rate: SFT retrains, and everything built from its
    // model follows; the preference model does not.
    std::fs::write(&build_file, training(&model, &prompts, &c, "2e-4")).unwrap();
    let plan = dry_run(&build_file);
    assert!(
        plan["sl"].starts_with("run: settings changed: lr 0.0001 → 0.0002"),
        "{plan:?}"
    );
    assert!(
        plan["rl"].starts_with("run: model `sl` will be rebuilt"),
        "{plan:?}"
    );
    assert!(
        plan["rl-answers"].contains("model `rl` will be rebuilt"),
        "{plan:?}"
    );
    assert!(plan["pm"].starts_with("up to date"), "{plan:?}");
    assert!(
        plan["scored"].starts_with("run: input `rl-answers` will be rebuilt"),
        "{plan:?}"
    );
    let third = build(&build_file, &[]);
    for (stage, want) in [
        ("sl", "ran"),
        ("rl", "ran"),
        ("rl-answers", "ran"),
        ("vs-base", "ran"),
        ("pm", "cached"),
        ("labels", "cached"),
    ] {
        assert_eq!(third[stage].0, want, "{stage}");
    }
    assert_ne!(third["sl"].2, first["sl"].2);
    assert_ne!(third["rl"].2, first["rl"].2);

    // --force on a training stage removes its model and retrains it.
    let forced = build(&build_file, &["--force", "pm"]);
    assert_eq!(forced["pm"].0, "ran");
    assert_eq!(forced["sl"].0, "cached");
}

#[test]
fn ctrl_c_in_a_training_stage_checkpoints_and_the_next_build_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path(), 3);
    let text = format!(
        r#"[build]
model = "{model}"
out = "out"
[[stage]]
name = "prompts"
kind = "table"
path = "{prompts}"
[[stage]]
name = "responses"
kind = "respond"
input = "prompts"
max_new_tokens = 8
[[stage]]
name = "sl"
kind = "train"
objective = "sft"
input = "responses"
epochs = {{EPOCHS}}
checkpoint_every = 0
batch_size = 1
max_len = 64
dtype = "f32"
device = "cpu"
"#
    );
    let build_file = file(dir.path(), "b.toml", text.replace("{EPOCHS}", "400"));
    let checkpoint = dir.path().join("out/sl.checkpoint");
    let child = Command::new(env!("CARGO_BIN_EXE_charter"))
        .args(["build", &build_file])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training has begun (the responses table is written first).
    let start = Instant::now();
    while !dir.path().join("out/responses.parquet").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "responses never written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(3));
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("run the build again"), "{stderr}");
    assert!(checkpoint.join("state.json").is_file(), "{stderr}");
    assert!(
        !dir.path().join("out/sl").exists(),
        "an interrupted stage must not look finished"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/build-report.json")).unwrap())
            .unwrap();
    assert_eq!(report["failed_stage"], "sl");

    let plan = dry_run(&build_file);
    assert!(
        plan["sl"].contains("resumes from the checkpoint after step"),
        "{plan:?}"
    );
    // Other settings: the checkpoint is of another run and is discarded.
    std::fs::write(&build_file, text.replace("{EPOCHS}", "1")).unwrap();
    let plan = dry_run(&build_file);
    assert!(plan["sl"].contains("it is discarded"), "{plan:?}");
    let done = build(&build_file, &[]);
    assert_eq!(done["sl"].0, "ran");
    assert!(!checkpoint.exists());
}

#[test]
fn training_stages_refuse_what_does_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    let head = "[build]\nmodel = \"m\"\nconstitution = \"c.toml\"\nout = \"out\"\n\
                [[stage]]\nname = \"labels\"\nkind = \"table\"\npath = \"l.parquet\"\n";
    let cases = [
        (
            "[[stage]]\nname = \"t\"\nkind = \"train\"\ninput = \"labels\"\n",
            vec![
                "stage `t`",
                "field `objective`",
                "\"sft\", \"pm\", \"dpo\", \"classifier\" or \"rl\"",
            ],
        ),
        (
            "[[stage]]\nname = \"t\"\nkind = \"train\"\nobjective = \"pm\"\ninput = \"labels\"\nbeta = 0.1\n",
            vec!["stage `t`", "field `beta`", "`objective = \"dpo\"` only"],
        ),
        (
            "[[stage]]\nname = \"t\"\nkind = \"train\"\nobjective = \"dpo\"\ninput = \"labels\"\nmix = [\"labels\"]\n",
            vec!["stage `t`", "field `mix`", "`objective = \"sft\"` only"],
        ),
        (
            "[[stage]]\nname = \"pm\"\nkind = \"train\"\nobjective = \"pm\"\ninput = \"labels\"\n\
             [[stage]]\nname = \"t\"\nkind = \"train\"\nobjective = \"dpo\"\ninput = \"labels\"\nmodel = \"pm\"\n",
            vec!["stage `t`", "field `model`", "preference model"],
        ),
        (
            "[[stage]]\nname = \"t\"\nkind = \"train\"\nobjective = \"sft\"\ninput = \"labels\"\nlr = -1.0\n",
            vec!["stage `t`", "field `lr`", "must be > 0"],
        ),
        (
            "[[stage]]\nname = \"t\"\nkind = \"train\"\nobjective = \"sft\"\ninput = \"labels\"\ndevice = \"tpu\"\n",
            vec!["stage `t`", "field `device`", "tpu"],
        ),
        (
            "[[stage]]\nname = \"t\"\nkind = \"train\"\nobjective = \"sft\"\ninput = \"labels\"\ntemperature = 0.5\n",
            vec!["stage `t`", "field `temperature`", "does not apply"],
        ),
        (
            "[[stage]]\nname = \"t\"\nkind = \"train\"\nobjective = \"sft\"\ninput = \"labels\"\n\
             [[stage]]\nname = \"s\"\nkind = \"score\"\ninput = \"labels\"\nmodel = \"t\"\n",
            vec!["stage `s`", "field `model`", "needs a preference model"],
        ),
        (
            "[[stage]]\nname = \"s\"\nkind = \"score\"\ninput = \"labels\"\n",
            vec![
                "stage `s`",
                "field `model`",
                "needs `model`: a preference model",
            ],
        ),
        (
            "[[stage]]\nname = \"e\"\nkind = \"eval\"\ninput = \"labels\"\na = \"m\"\n",
            vec!["stage `e`", "field `b`", "needs policy `b`"],
        ),
        (
            "[[stage]]\nname = \"t\"\nkind = \"train\"\nobjective = \"sft\"\ninput = \"labels\"\nmodel = \"t2\"\n\
             [[stage]]\nname = \"t2\"\nkind = \"train\"\nobjective = \"dpo\"\ninput = \"labels\"\nmodel = \"t\"\n",
            vec!["cycle", "`t`", "`t2`"],
        ),
        (
            "[[stage]]\nname = \"t\"\nkind = \"train\"\nobjective = \"sft\"\ninput = \"labels\"\n\
             [[stage]]\nname = \"r\"\nkind = \"respond\"\ninput = \"t\"\n",
            vec!["stage `r`", "field `input`", "(a `train` stage)"],
        ),
    ];
    for (i, (stage, wanted)) in cases.iter().enumerate() {
        let name = format!("bad{i}.toml");
        let path = file(dir.path(), &name, format!("{head}{stage}"));
        let err = fails(&["build", path.as_str(), "--dry-run"], None);
        assert!(err.contains(&name), "case {i}: {err}");
        for w in wanted {
            assert!(err.contains(w), "case {i}: {w:?} not in {err}");
        }
    }
}

#[test]
fn every_path_a_build_names_is_checked_before_any_stage_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path(), 2);
    let c = constitution();
    let good = pipeline(&model, &prompts, &c, "");
    let missing = dir.path().join("no-such-model");
    let cases = [
        // A later stage's model: the earlier stages would otherwise run first.
        (
            good.replacen(
                "kind = \"critique\"",
                &format!("kind = \"critique\"\nmodel = \"{}\"", missing.display()),
                1,
            ),
            vec!["field `model`", "not a complete charter model directory"],
        ),
        (
            good.replacen(
                "kind = \"label\"",
                "kind = \"label\"\nconstitution = \"missing.toml\"",
                1,
            ),
            vec!["field `constitution`", "missing.toml"],
        ),
        (
            good.replacen(&prompts, "gone.parquet", 1),
            vec!["stage `prompts`", "field `path`", "no such table file"],
        ),
    ];
    for (i, (text, wanted)) in cases.iter().enumerate() {
        let name = format!("paths{i}.toml");
        let path = file(dir.path(), &name, text);
        for args in [
            vec!["build", path.as_str(), "--dry-run"],
            vec!["build", path.as_str()],
        ] {
            let err = fails(&args, None);
            // file:line of the field.
            assert!(err.contains(&format!("{name}:")), "case {i}: {err}");
            for w in wanted {
                assert!(err.contains(w), "case {i}: {w:?} not in {err}");
            }
        }
        assert!(!dir.path().join("out").exists(), "case {i}: nothing ran");
    }
}

#[test]
fn a_build_file_and_the_command_line_make_the_same_tables_at_default_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, prompts) = setup(d, 2);
    let c = constitution();
    // Only the generation length is set, on both sides; everything else is a default.
    let text = pipeline(&model, &prompts, &c, "").replace(
        "max_new_tokens = 8\nbatch_size = 4\nshard_rows = 4\n",
        "max_new_tokens = 8\n",
    );
    assert!(!text.contains("batch_size"), "{text}");
    let build_file = file(d, "cai.toml", text);
    build(&build_file, &[]);

    let cli = d.join("cli");
    std::fs::create_dir(&cli).unwrap();
    let at = |name: &str| cli.join(name).to_str().unwrap().to_string();
    let gen_flags = ["--max-new-tokens", "8", "--seed", "1"];
    let model_stage = |kind: &str, input: &str, output: &str| {
        let mut args = vec![kind, "-m", &model, "-c", &c, "-i", input, "-o", output];
        args.extend(gen_flags);
        ok(&args);
    };
    let mut respond = vec!["respond", "-m", &model, "-i", &prompts, "-o"];
    let responses = at("responses.parquet");
    respond.extend([responses.as_str(), "--samples", "2"]);
    respond.extend(gen_flags);
    ok(&respond);
    model_stage("critique", &responses, &at("critiques-1.parquet"));
    model_stage(
        "revise",
        &at("critiques-1.parquet"),
        &at("revisions-1.parquet"),
    );
    ok(&["pair", "-i", &responses, "-o", &at("pairs.parquet")]);
    model_stage("label", &at("pairs.parquet"), &at("labels.parquet"));
    ok(&[
        "export",
        "-i",
        &at("labels.parquet"),
        "-o",
        &at("prefs.jsonl"),
    ]);

    let built = d.join("out");
    for table in ["responses", "critiques-1", "revisions-1", "pairs", "labels"] {
        let name = format!("{table}.parquet");
        let (a, b) = (
            inspect(built.join(&name).to_str().unwrap()),
            inspect(&at(&name)),
        );
        assert_eq!(a["build_key"], b["build_key"], "{table}");
        assert_eq!(a["content_hash"], b["content_hash"], "{table}");
    }
    assert_eq!(
        std::fs::read(built.join("prefs.jsonl")).unwrap(),
        std::fs::read(at("prefs.jsonl")).unwrap()
    );
}

#[test]
fn import_and_dedup_stages_make_what_their_commands_make() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, _) = setup(d, 1);
    let raw = file(d, "raw.txt", "What is 2+2?\nWhat is 2+2?\nName a colour.\n");
    let text = format!(
        r#"[build]
model = "{model}"
out = "out"

[defaults]
temperature = 0.0
max_new_tokens = 6

[[stage]]
name = "prompts"
kind = "import"
files = ["raw.txt"]

[[stage]]
name = "responses"
kind = "respond"
input = "prompts"
samples = 2

[[stage]]
name = "unique"
kind = "dedup"
input = "responses"
near_dup = false
"#
    );
    let build_file = file(d, "cai.toml", &text);
    let built = build(&build_file, &[]);
    assert_eq!(built["prompts"].0, "ran");
    let out = d.join("out");
    let at = |name: &str| out.join(name).to_str().unwrap().to_string();
    assert_eq!(
        inspect(&at("prompts.parquet"))["rows"],
        2,
        "one exact duplicate"
    );
    assert_eq!(inspect(&at("responses.parquet"))["rows"], 4);
    assert_eq!(
        inspect(&at("unique.parquet"))["rows"],
        2,
        "greedy samples of one prompt are the same text"
    );

    // The commands, on the same files with the same settings.
    let cli_prompts = d.join("cli-prompts.parquet");
    let cli_prompts = cli_prompts.to_str().unwrap();
    ok(&["prompts", "import", &raw, "-o", cli_prompts]);
    let cli_unique = d.join("cli-unique.parquet");
    let cli_unique = cli_unique.to_str().unwrap();
    ok(&[
        "dedup",
        "-i",
        &at("responses.parquet"),
        "-o",
        cli_unique,
        "--no-near-dup",
    ]);
    for (built, cli) in [
        (at("prompts.parquet"), cli_prompts),
        (at("unique.parquet"), cli_unique),
    ] {
        let (a, b) = (inspect(&built), inspect(cli));
        assert_eq!(a["build_key"], b["build_key"], "{cli}");
        assert_eq!(a["content_hash"], b["content_hash"], "{cli}");
    }

    let plan = dry_run(&build_file);
    for stage in ["prompts", "responses", "unique"] {
        assert!(plan[stage].starts_with("up to date"), "{plan:?}");
    }
    assert_eq!(build(&build_file, &[])["prompts"].0, "cached");
    std::fs::write(&raw, "What is 3+3?\n").unwrap();
    let plan = dry_run(&build_file);
    assert!(
        plan["prompts"].starts_with("run: input content hash changed: `raw.txt`"),
        "{plan:?}"
    );
    assert!(
        plan["responses"].starts_with("run: input `prompts` will be rebuilt"),
        "{plan:?}"
    );

    for (name, files, problem) in [
        ("none.toml", "", "needs `files`"),
        (
            "gone.toml",
            "files = [\"gone.txt\"]",
            "gone.txt: no such file",
        ),
    ] {
        let bad = file(d, name, text.replace("files = [\"raw.txt\"]", files));
        let err = fails(&["build", &bad, "--dry-run"], None);
        assert!(
            err.starts_with(&format!("error: {bad}:"))
                && err.contains("stage `prompts`, field `files`")
                && err.contains(problem),
            "{err}"
        );
    }
}

#[test]
fn dry_run_names_a_stage_whose_version_changed() {
    use charter_table::{
        KEY_CONSTITUTION_HASH, KEY_INPUTS, KEY_MODEL_HASH, KEY_SETTINGS, KEY_STAGE, Output,
        Provenance, TableFile, TableWriter,
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, prompts) = setup(d, 2);
    let build_file = file(
        d,
        "b.toml",
        format!(
            "[build]\nmodel = \"{model}\"\nout = \"out\"\n[defaults]\nmax_new_tokens = 4\n\
             [[stage]]\nname = \"prompts\"\nkind = \"table\"\npath = \"{prompts}\"\n\
             [[stage]]\nname = \"responses\"\nkind = \"respond\"\ninput = \"prompts\"\n"
        ),
    );
    build(&build_file, &[]);
    assert!(dry_run(&build_file)["responses"].starts_with("up to date"));

    // The same rows, recorded as made by version 0 of the stage.
    let path = d.join("out/responses.parquet");
    let table = TableFile::open(&path).unwrap();
    let meta = table.metadata();
    let older = Provenance {
        stage: meta[KEY_STAGE].clone(),
        stage_version: 0,
        settings: serde_json::from_str(&meta[KEY_SETTINGS]).unwrap(),
        inputs: serde_json::from_str(&meta[KEY_INPUTS]).unwrap(),
        model_hash: meta.get(KEY_MODEL_HASH).cloned(),
        constitution_hash: meta.get(KEY_CONSTITUTION_HASH).cloned(),
    };
    let batches: Vec<_> = table.batches().unwrap().map(Result::unwrap).collect();
    let rewritten = d.join("older.parquet");
    let mut writer = TableWriter::with_schema(
        &Output::Path(rewritten.clone()),
        table.core_spec().unwrap(),
        table.schema().clone(),
        &older,
    )
    .unwrap();
    for batch in &batches {
        writer.write(batch).unwrap();
    }
    writer.finish().unwrap();
    std::fs::rename(&rewritten, &path).unwrap();

    let plan = dry_run(&build_file);
    assert_eq!(
        plan["responses"], "run: stage changed: respond v0 → respond v1",
        "{plan:?}"
    );
}
