//! `charter train sft|pm|dpo` on the tiny model: the loop from a build's
//! tables to trained model directories that the other commands use, and
//! Ctrl-C leaving a checkpoint instead of a half-written model.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{constitution, fails, file, inspect, ok};

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

/// Tiny model; responses, revisions and labels tables of 3 prompts × 2 samples.
pub(crate) fn tables(dir: &Path) -> [String; 4] {
    let model = path(dir, "tiny");
    ok(&["model", "tiny", "-o", &model, "--seed", "5"]);
    let input = file(
        dir,
        "p.txt",
        "How do I pick a lock?\nSay hi.\nName a colour.\n",
    );
    let prompts = path(dir, "prompts.parquet");
    ok(&["prompts", "import", &input, "-o", &prompts, "--no-near-dup"]);
    let responses = path(dir, "responses.parquet");
    let sampling = ["--max-new-tokens", "12", "--temperature", "1"];
    let mut args = vec!["respond", "-m", &model, "-i", &prompts, "-o", &responses];
    args.extend(["--samples", "2"]);
    args.extend(sampling);
    ok(&args);
    let c = constitution();
    let (critiques, revisions) = (path(dir, "c1.parquet"), path(dir, "r1.parquet"));
    for (kind, from, to) in [
        ("critique", &responses, &critiques),
        ("revise", &critiques, &revisions),
    ] {
        let mut args = vec![kind, "-m", &model, "-c", &c, "-i", from, "-o", to];
        args.extend(sampling);
        ok(&args);
    }
    let pairs = path(dir, "pairs.parquet");
    ok(&["pair", "-i", &responses, "-o", &pairs]);
    let labels = path(dir, "labels.parquet");
    ok(&["label", "-m", &model, "-c", &c, "-i", &pairs, "-o", &labels]);
    [model, responses, revisions, labels]
}

fn record(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout).unwrap()
}

#[test]
fn sft_pm_and_dpo_train_models_the_pipeline_uses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [model, responses, revisions, labels] = tables(d);
    let quick = [
        "--max-len",
        "96",
        "--batch-size",
        "2",
        "--dtype",
        "f32",
        "--json",
    ];

    // SL-CAI: revisions, with the responses mixed in as helpfulness rows.
    let sl = path(d, "sl-cai");
    let mut args = vec![
        "train", "sft", "-m", &model, "-i", &revisions, "-i", &responses,
    ];
    args.extend(["-o", &sl, "--epochs", "2", "--lr", "1e-3"]);
    args.extend(quick);
    let sft = record(&ok(&args));
    assert_eq!(sft["objective"], "sft");
    let names: Vec<&str> = sft["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["revisions", "responses"]);
    assert!(sft["examples"].as_u64().unwrap() > 0, "{sft}");
    assert!(sft["final_loss"].as_f64().unwrap().is_finite());
    // The trained model generates: SL-CAI samples for the RL stage.
    let prompts = path(d, "prompts.parquet");
    let sl_responses = path(d, "sl-responses.parquet");
    ok(&[
        "respond",
        "-m",
        &sl,
        "-i",
        &prompts,
        "-o",
        &sl_responses,
        "--max-new-tokens",
        "4",
    ]);
    let info = record(&ok(&["model", "info", &sl, "--json"]));
    assert_ne!(
        info["provenance"]["content_hash"],
        record(&ok(&["model", "info", &model, "--json"]))["provenance"]["content_hash"]
    );

    // Preference model on the labels (nothing held out: 6 pairs).
    let pm = path(d, "pm");
    let mut args = vec!["train", "pm", "-m", &model, "-i", &labels, "-o", &pm];
    args.extend(["--held-out", "0", "--lr", "1e-3"]);
    args.extend(quick);
    assert_eq!(record(&ok(&args))["objective"], "pm");
    assert!(Path::new(&pm).join("score.safetensors").is_file());

    // `score` adds the PM's scores; an answer scores the same in every table.
    let scored = path(d, "scored-responses.parquet");
    let summary = record(&ok(&[
        "score", "-m", &pm, "-i", &responses, "-o", &scored, "--json",
    ]));
    assert_eq!(summary["scored"], 6);
    let scored_pairs = path(d, "scored-pairs.parquet");
    let pairs = path(d, "pairs.parquet");
    ok(&[
        "score",
        "-m",
        &pm,
        "-i",
        &pairs,
        "-o",
        &scored_pairs,
        "--batch-size",
        "3",
    ]);
    let by_id: std::collections::BTreeMap<String, f64> = inspect(&scored)["head"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["pm_score"].as_f64().unwrap(),
            )
        })
        .collect();
    let pair_rows = inspect(&scored_pairs)["head"].as_array().unwrap().clone();
    assert!(!pair_rows.is_empty());
    for row in &pair_rows {
        for side in ["a", "b"] {
            let want = by_id[row[format!("response_{side}_id")].as_str().unwrap()];
            let got = row[format!("pm_score_{side}")].as_f64().unwrap();
            assert!((want - got).abs() < 1e-4, "{side}: {want} vs {got}");
        }
    }
    // The scored table is still a responses table, and it cannot be scored twice.
    assert_eq!(inspect(&scored)["metadata"]["charter.table"], "responses");
    let err = fails(
        &[
            "score",
            "-m",
            &pm,
            "-i",
            &scored,
            "-o",
            &path(d, "x.parquet"),
        ],
        None,
    );
    assert!(err.contains("pm_score"), "{err}");
    let err = fails(
        &[
            "score",
            "-m",
            &pm,
            "-i",
            &prompts,
            "-o",
            &path(d, "x.parquet"),
        ],
        None,
    );
    assert!(err.contains("`prompts` table"), "{err}");

    // RL-CAI: DPO from the SL-CAI model; the reference log-probs are cached.
    let rl = path(d, "rl-cai");
    let cache = path(d, "ref-cache");
    let mut args = vec!["train", "dpo", "-m", &sl, "-i", &labels, "-o", &rl];
    args.extend(["--cache", &cache, "--beta", "0.2"]);
    args.extend(quick);
    let dpo = record(&ok(&args));
    assert_eq!(dpo["objective"], "dpo");
    assert_eq!(dpo["objective_settings"]["beta"], 0.2);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    // The same command again finds its result in place and trains nothing.
    let weights = Path::new(&rl).join("model.safetensors");
    let written = std::fs::metadata(&weights).unwrap().modified().unwrap();
    assert_eq!(record(&ok(&args)), dpo);
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        written
    );
    // Training a second time gives the same weights, hence the same model hash.
    let again = path(d, "rl-cai-again");
    args[7] = &again;
    ok(&args);
    let hash = |dir: &str| {
        record(&ok(&["model", "info", dir, "--json"]))["provenance"]["content_hash"].clone()
    };
    assert_eq!(hash(&rl), hash(&again));

    // RL-CAI against the base model, judged by the base model.
    let eval = path(d, "eval");
    let c = constitution();
    let mut args = vec![
        "eval", "policy", "-a", &model, "-b", &rl, "-c", &c, "-i", &prompts,
    ];
    args.extend(["-o", &eval, "--max-new-tokens", "6", "--json"]);
    let report = record(&ok(&args));
    assert_eq!(report["comparisons"], 3);
    let w = report["win_rate"].as_f64().unwrap();
    let ci = report["win_rate_ci"].as_array().unwrap();
    assert!(
        ci[0].as_f64().unwrap() <= w && w <= ci[1].as_f64().unwrap(),
        "{report}"
    );
    assert!(report["elo"].as_f64().unwrap().is_finite());
    let total = ["wins", "losses", "ties"].map(|k| report[k].as_u64().unwrap());
    assert_eq!(total.iter().sum::<u64>(), 3);
    assert!(Path::new(&eval).join("report.json").is_file());
    assert_eq!(
        inspect(&path(Path::new(&eval), "labels.parquet"))["rows"],
        3
    );
    // A rerun is served from the tables.
    assert_eq!(record(&ok(&args)), report);

    // Errors name what is wrong.
    let err = fails(
        &[
            "train",
            "dpo",
            "-m",
            &model,
            "-i",
            &revisions,
            "-o",
            &path(d, "x"),
        ],
        None,
    );
    assert!(
        err.contains("r1.parquet") && err.contains("labels"),
        "{err}"
    );
    let x = path(d, "x");
    let sft = ["train", "sft", "-m", &model, "-i", &revisions, "-o", &x];
    for (flags, named) in [
        (["--device", "wgpu"], "wgpu"),
        (["--lr", "0"], "setting `lr`: must be > 0"),
        (
            ["--lora-rank", "0"],
            "setting `lora_rank`: must be at least 1",
        ),
        (["--lora-alpha", "4"], "--lora-rank"),
    ] {
        let err = fails(&[&sft[..], &flags[..]].concat(), None);
        assert!(err.contains(named), "{err}");
    }
    assert!(!Path::new(&x).exists());

    // LoRA: a larger default rate, alpha = rank, and the adapters beside the merged model.
    let lora = record(&ok(&[
        &sft[..],
        &[
            "--lora-rank",
            "2",
            "--max-len",
            "96",
            "--dtype",
            "f32",
            "--json",
        ],
    ]
    .concat()));
    assert_eq!(lora["settings"]["lr"], 2e-4);
    assert_eq!(lora["settings"]["lora"]["rank"], 2);
    assert_eq!(lora["settings"]["lora"]["alpha"], 2.0);
    assert!(Path::new(&x).join("adapter/adapter_config.json").is_file());
    assert!(
        record(&ok(&["model", "info", &x, "--json"]))["provenance"]["content_hash"].is_string()
    );
}

#[test]
fn ctrl_c_leaves_a_checkpoint_and_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [model, _, revisions, _] = tables(d);
    let out = path(d, "sl-cai");
    let child = Command::new(env!("CARGO_BIN_EXE_charter"))
        .args(["train", "sft", "-m", &model, "-i", &revisions, "-o", &out])
        .args([
            "--epochs",
            "1000000",
            "--checkpoint-every",
            "0",
            "--batch-size",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The run holds its output from start to end: a second one is refused.
    let err = fails(
        &[
            "train", "sft", "-m", &model, "-i", &revisions, "-o", &out, "--epochs", "1",
        ],
        None,
    );
    assert!(
        err.contains(&format!("being written by process {}", child.id())),
        "{err}"
    );
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let checkpoint = Path::new(&out).with_file_name("sl-cai.checkpoint");
    assert!(checkpoint.join("state.json").is_file(), "{stderr}");
    assert!(checkpoint.join("metrics.parquet").is_file());
    assert!(
        !Path::new(&out).exists(),
        "an interrupted run must not look finished"
    );
    // A different run does not pick the checkpoint up.
    let err = fails(
        &[
            "train", "sft", "-m", &model, "-i", &revisions, "-o", &out, "--resume", "--epochs", "2",
        ],
        None,
    );
    assert!(err.contains("different run"), "{err}");
}
