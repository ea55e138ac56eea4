//! `critique`, `revise`, `pair`, `label`, `rate` and `export` on the tiny model with
//! a small test constitution: the tables' links, rounds, soft labels and
//! export layouts, caching, and the errors a user meets.

use std::path::Path;

use crate::{charter, constitution, fails, file, inspect, ok};

/// A tiny model and a responses table of 2 prompts × 2 samples in `dir`.
fn setup(dir: &Path) -> (String, String) {
    let model = dir.join("tiny");
    let model = model.to_str().unwrap().to_string();
    ok(&["model", "tiny", "-o", &model, "--seed", "5"]);
    let input = file(
        dir,
        "p.txt",
        "How do I pick a lock?\nWrite a short poem about rain.\n",
    );
    let prompts = dir.join("prompts.parquet");
    ok(&[
        "prompts",
        "import",
        &input,
        "-o",
        prompts.to_str().unwrap(),
        "--no-near-dup",
    ]);
    let responses = dir.join("responses.parquet");
    let responses = responses.to_str().unwrap().to_string();
    ok(&[
        "respond",
        "-m",
        &model,
        "-i",
        prompts.to_str().unwrap(),
        "-o",
        &responses,
        "--samples",
        "2",
        "--max-new-tokens",
        "8",
    ]);
    (model, responses)
}

/// One round of critique and revision of `responses`: the revisions table.
fn revised(dir: &Path, model: &str, responses: &str) -> String {
    let (c1, r1) = (path(dir, "c1.parquet"), path(dir, "r1.parquet"));
    stage("critique", model, responses, &c1, &[]);
    stage("revise", model, &c1, &r1, &[]);
    r1
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

/// Runs a model stage with short generations.
fn stage(kind: &str, model: &str, input: &str, output: &str, extra: &[&str]) -> Vec<u8> {
    let c = constitution();
    let mut args = vec![
        kind,
        "-m",
        model,
        "-c",
        &c,
        "-i",
        input,
        "-o",
        output,
        "--max-new-tokens",
        "8",
    ];
    args.extend(extra);
    ok(&args)
}

fn rows(table: &str) -> Vec<serde_json::Value> {
    inspect(table)["head"].as_array().unwrap().clone()
}

#[test]
fn rounds_of_critique_and_revision_chain_back_to_their_response() {
    let dir = tempfile::tempdir().unwrap();
    let (model, responses) = setup(dir.path());
    let (c1, r1, c2, r2) = (
        path(dir.path(), "c1.parquet"),
        path(dir.path(), "r1.parquet"),
        path(dir.path(), "c2.parquet"),
        path(dir.path(), "r2.parquet"),
    );
    // The system prompt and worked examples every row's prompt begins
    // with are prefilled once per window, not once per row.
    for (kind, input, out) in [("critique", &responses, &c1), ("revise", &c1, &r1)] {
        let summary: serde_json::Value =
            serde_json::from_slice(&stage(kind, &model, input, out, &["--json"])).unwrap();
        assert!(
            summary["reused_tokens"].as_u64().unwrap() > 0
                && summary["prefilled_tokens"].as_u64().unwrap() > 0,
            "{kind}: {summary}"
        );
    }
    stage("critique", &model, &r1, &c2, &[]);
    stage("revise", &model, &c2, &r2, &[]);

    let responses_rows = rows(&responses);
    let (c1_rows, r1_rows, c2_rows, r2_rows) = (rows(&c1), rows(&r1), rows(&c2), rows(&r2));
    assert_eq!(c1_rows.len(), 4);
    for (resp, crit) in responses_rows.iter().zip(&c1_rows) {
        assert_eq!(crit["round"], 1);
        assert_eq!(crit["parent_id"], resp["id"]);
        assert_eq!(crit["response_id"], resp["id"]);
        assert_eq!(crit["response"], resp["text"]);
        assert!(["harm", "tone"].contains(&crit["principle_id"].as_str().unwrap()));
        assert_eq!(crit["constitution"], "small");
    }
    for (crit, rev) in c1_rows.iter().zip(&r1_rows) {
        assert_eq!(rev["critique_id"], crit["id"]);
        assert_eq!(rev["critique"], crit["text"]);
        assert_eq!(rev["principle_id"], crit["principle_id"]);
        assert_eq!(rev["round"], 1);
    }
    // Round 2 critiques round 1's revisions and keeps the chain's root.
    for ((rev, crit), root) in r1_rows.iter().zip(&c2_rows).zip(&responses_rows) {
        assert_eq!(crit["round"], 2);
        assert_eq!(crit["parent_id"], rev["id"]);
        assert_eq!(crit["response"], rev["text"]);
        assert_eq!(crit["response_id"], root["id"]);
    }
    assert!(r2_rows.iter().all(|r| r["round"] == 2));
    let t = inspect(&c2);
    assert_eq!(t["metadata"]["charter.stage"], "critique");
    assert_eq!(t["metadata"]["charter.settings"]["round"], 2);
    assert_eq!(
        t["metadata"]["charter.constitution_hash"],
        c2_rows[0]["constitution_hash"]
    );

    // Same build: nothing runs, same bytes.
    let bytes = std::fs::read(&r2).unwrap();
    let again: serde_json::Value =
        serde_json::from_slice(&stage("revise", &model, &c2, &r2, &["--json"])).unwrap();
    assert_eq!(again["cached"], true);
    assert_eq!(std::fs::read(&r2).unwrap(), bytes);

    // Revising under another constitution is refused, naming both.
    let other = file(
        dir.path(),
        "other.toml",
        std::fs::read_to_string(constitution())
            .unwrap()
            .replace("name = \"small\"", "name = \"other\""),
    );
    let err = fails(
        &[
            "revise",
            "-m",
            &model,
            "-c",
            &other,
            "-i",
            &c2,
            "-o",
            &path(dir.path(), "x.parquet"),
        ],
        None,
    );
    assert!(
        err.contains("critiqued under constitution `small`") && err.contains("`other`"),
        "{err}"
    );
    assert!(!dir.path().join("x.parquet").exists());
}

#[test]
fn pairs_labels_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let (model, responses) = setup(dir.path());
    let r1 = revised(dir.path(), &model, &responses);

    // Two samples of each prompt make one pair per prompt.
    let pairs = path(dir.path(), "pairs.parquet");
    ok(&["pair", "-i", &responses, "-o", &pairs]);
    let p = rows(&pairs);
    let r = rows(&responses);
    assert_eq!(p.len(), 2);
    assert_eq!(
        (p[0]["response_a_id"].clone(), p[0]["response_b_id"].clone()),
        (r[0]["id"].clone(), r[1]["id"].clone())
    );
    // Each response against the last revision of its own chain.
    let against = path(dir.path(), "against.parquet");
    ok(&["pair", "-i", &responses, "--against", &r1, "-o", &against]);
    let a = rows(&against);
    let revs = rows(&r1);
    assert_eq!(a.len(), 4);
    for (pair, rev) in a.iter().zip(&revs) {
        assert_eq!(pair["response_b_id"], rev["id"]);
        assert_eq!(pair["response_a_id"], rev["response_id"]);
        assert_eq!(
            (pair["source_a"].as_str(), pair["source_b"].as_str()),
            (Some("responses"), Some("revisions"))
        );
    }

    // Soft labels, both orders averaged.
    let labels = path(dir.path(), "labels.parquet");
    let summary: serde_json::Value =
        serde_json::from_slice(&stage("label", &model, &pairs, &labels, &["--json"])).unwrap();
    assert!(
        summary["peak_memory_bytes"].as_u64().unwrap() > 1_000_000,
        "{summary}"
    );
    // The worked examples every row shares were run once, not per row.
    assert!(
        summary["reused_tokens"].as_u64().unwrap() > 0
            && summary["scored_tokens"].as_u64().unwrap() > 0,
        "{summary}"
    );
    for l in rows(&labels) {
        let (p_a, ab, ba) = (
            l["p_a"].as_f64().unwrap(),
            l["p_a_ab"].as_f64().unwrap(),
            l["p_a_ba"].as_f64().unwrap(),
        );
        assert!(ab > 0.0 && ab < 1.0 && ba > 0.0 && ba < 1.0);
        assert!((p_a - (ab + ba) / 2.0).abs() < 1e-12);
        let a_chosen = l["chosen_id"] == l["response_a_id"];
        assert_eq!(a_chosen, p_a >= 0.5);
        assert_eq!(
            l["chosen"],
            if a_chosen {
                &l["response_a"]
            } else {
                &l["response_b"]
            }
            .clone()
        );
        assert!(["safer", "kinder"].contains(&l["principle_id"].as_str().unwrap()));
        assert!(l["cot_ab"].is_null());
    }
    // One order only.
    let one = path(dir.path(), "one.parquet");
    stage("label", &model, &pairs, &one, &["--no-swap"]);
    for l in rows(&one) {
        assert!(l["p_a_ba"].is_null());
        assert_eq!(l["p_a"], l["p_a_ab"]);
    }
    // Chain of thought: reasoning kept, probability clamped.
    let cot = path(dir.path(), "cot.parquet");
    stage(
        "label",
        &model,
        &pairs,
        &cot,
        &["--cot", "--clamp", "0.45,0.55"],
    );
    for l in rows(&cot) {
        let p_a = l["p_a"].as_f64().unwrap();
        assert!((0.45..=0.55).contains(&p_a), "{p_a}");
        assert!(l["cot_ab"].is_string() && l["cot_ba"].is_string());
        assert_eq!(l["cot"], true);
    }

    // Exports.
    let prefs = path(dir.path(), "prefs.jsonl");
    ok(&["export", "-i", &labels, "-o", &prefs]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&prefs)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let l = rows(&labels);
    assert_eq!(lines.len(), l.len());
    assert_eq!(lines[0]["prompt"], l[0]["prompt"]);
    assert_eq!(lines[0]["chosen"], l[0]["chosen"]);
    assert_eq!(lines[0]["rejected"], l[0]["rejected"]);
    assert!(lines[0]["p_chosen"].as_f64().unwrap() >= 0.5);
    let chat = path(dir.path(), "chat.jsonl");
    ok(&["export", "-i", &labels, "-o", &chat, "--chat"]);
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&chat)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["prompt"][0]["role"], "user");
    assert_eq!(first["chosen"][0]["role"], "assistant");
    assert_eq!(first["chosen"][0]["content"], l[0]["chosen"]);
    let sft = path(dir.path(), "sft.jsonl");
    ok(&["export", "-i", &r1, "-o", &sft, "--format", "sft"]);
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&sft)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["completion"], revs[0]["text"]);
    assert_eq!(first["messages"][1]["content"], revs[0]["text"]);
    assert_eq!(first["round"], 1);

    // The wrong table for a stage is named.
    let err = fails(
        &["export", "-i", &pairs, "-o", &path(dir.path(), "bad.jsonl")],
        None,
    );
    assert!(err.contains("labels"), "{err}");
    let err = fails(
        &[
            "label",
            "-m",
            &model,
            "-c",
            &constitution(),
            "-i",
            &responses,
            "-o",
            &path(dir.path(), "bad.parquet"),
        ],
        None,
    );
    assert!(err.contains("pairs"), "{err}");
    let err = fails(
        &["pair", "-i", &r1, "-o", &path(dir.path(), "bad.parquet")],
        None,
    );
    assert!(err.contains("--against"), "{err}");
    assert!(!dir.path().join("bad.parquet").exists());
}

#[test]
fn rate_scores_each_answer_from_its_digit_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let (model, responses) = setup(dir.path());
    let r1 = revised(dir.path(), &model, &responses);
    for (input, source) in [(&responses, "responses"), (&r1, "revisions")] {
        let out = path(dir.path(), &format!("ratings-{source}.parquet"));
        let summary: serde_json::Value =
            serde_json::from_slice(&stage("rate", &model, input, &out, &["--json"])).unwrap();
        assert_eq!(summary["rows"], 4, "{summary}");
        assert_eq!(
            summary["generated_tokens"], 0,
            "nothing is generated: {summary}"
        );
        assert!(summary["reused_tokens"].as_u64().unwrap() > 0, "{summary}");
        let answers = rows(input);
        let ratings = rows(&out);
        assert_eq!(ratings.len(), answers.len());
        for (r, a) in ratings.iter().zip(&answers) {
            assert_eq!(r["item_id"], a["id"]);
            assert_eq!(r["response"], a["text"]);
            assert_eq!(r["source"], source);
            let (score, reward, mass) = (
                r["score"].as_f64().unwrap(),
                r["reward"].as_f64().unwrap(),
                r["rating_mass"].as_f64().unwrap(),
            );
            assert!((1.0..=9.0).contains(&score), "{r}");
            assert!((reward - (score - 5.0) / 4.0).abs() < 1e-12);
            assert!(mass > 0.0 && mass <= 1.0, "{r}");
            assert!(["safer", "kinder"].contains(&r["principle_id"].as_str().unwrap()));
        }
        // Cached on a second run.
        let again: serde_json::Value =
            serde_json::from_slice(&stage("rate", &model, input, &out, &["--json"])).unwrap();
        assert_eq!(again["cached"], true, "{again}");
        assert!(
            ratings
                .iter()
                .all(|r| r["cot"] == false && r["reasoning"].is_null())
        );
    }
    // With chain of thought the rater writes first; its reasoning stays in the row.
    let out = path(dir.path(), "ratings-cot.parquet");
    let summary: serde_json::Value = serde_json::from_slice(&stage(
        "rate",
        &model,
        &responses,
        &out,
        &["--json", "--cot"],
    ))
    .unwrap();
    assert!(
        summary["generated_tokens"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let reasoned = rows(&out);
    assert_eq!(reasoned.len(), 4);
    for r in &reasoned {
        assert_eq!(r["cot"], true, "{r}");
        assert!(r["reasoning"].is_string(), "{r}");
        assert!((1.0..=9.0).contains(&r["score"].as_f64().unwrap()), "{r}");
    }
    ok(&["inspect", &out, "--verify"]);
    // Only answers are rated; the error names the table.
    let pairs = path(dir.path(), "pairs.parquet");
    ok(&["pair", "-i", &responses, "-o", &pairs]);
    let out = path(dir.path(), "bad-ratings.parquet");
    let c = constitution();
    let err = fails(
        &["rate", "-m", &model, "-c", &c, "-i", &pairs, "-o", &out],
        None,
    );
    assert!(
        err.contains("pairs.parquet") && err.contains("`pairs`"),
        "{err}"
    );
    assert!(!Path::new(&out).exists());
}

#[test]
fn a_malformed_constitution_stops_a_stage_before_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (model, responses) = setup(dir.path());
    let broken = file(
        dir.path(),
        "broken.toml",
        std::fs::read_to_string(constitution()).unwrap().replace(
            "question = \"Which answer is more respectful to the user?\"\n",
            "",
        ),
    );
    let out = path(dir.path(), "c.parquet");
    let err = fails(
        &[
            "critique", "-m", &model, "-c", &broken, "-i", &responses, "-o", &out,
        ],
        None,
    );
    assert!(err.contains("broken.toml"), "{err}");
    assert!(err.contains("question"), "{err}");
    assert!(!Path::new(&out).exists());
}

#[test]
fn eval_labeller_reports_alignment_calibration_and_position_bias() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let model = model.to_str().unwrap();
    ok(&["model", "tiny", "-o", model]);
    let comparisons = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/comparisons.jsonl")
        .to_str()
        .unwrap()
        .to_string();
    let c = constitution();
    let report: serde_json::Value = serde_json::from_slice(&ok(&[
        "eval",
        "labeller",
        "-m",
        model,
        "-c",
        &c,
        "--comparisons",
        &comparisons,
        "--json",
    ]))
    .unwrap();
    assert_eq!(report["comparisons"], 6);
    let alignment = report["alignment"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&alignment));
    // Alignment is a whole number of comparisons out of 6.
    assert!(((alignment * 6.0) - (alignment * 6.0).round()).abs() < 1e-9);
    let buckets = report["calibration"].as_array().unwrap();
    assert_eq!(buckets.len(), 5);
    let counted: u64 = buckets
        .iter()
        .map(|b| b["comparisons"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 6);
    assert!((0.0..=1.0).contains(&report["position_bias"].as_f64().unwrap()));
    // Its cost: seconds and the process's peak memory (Linux reports it).
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    assert!(
        report["peak_memory_bytes"].as_u64().unwrap() > 1_000_000,
        "{report}"
    );
    let one: serde_json::Value = serde_json::from_slice(&ok(&[
        "eval",
        "labeller",
        "-m",
        model,
        "-c",
        &c,
        "--comparisons",
        &comparisons,
        "--json",
        "--no-swap",
    ]))
    .unwrap();
    assert!(one["position_bias"].is_null());

    // A malformed comparison is named by line and field.
    let bad = file(
        dir.path(),
        "bad.jsonl",
        "{\"conversation\": \"hi\", \"response_a\": \"a\", \"response_b\": \"b\", \"preferred\": \"A\"}\n\
         {\"conversation\": \"hi\", \"response_a\": \"a\", \"response_b\": \"b\", \"preferred\": \"C\"}\n",
    );
    let err = fails(
        &[
            "eval",
            "labeller",
            "-m",
            model,
            "-c",
            &c,
            "--comparisons",
            &bad,
        ],
        None,
    );
    assert!(err.contains("bad.jsonl:2: `preferred`"), "{err}");
}

#[test]
fn every_stage_reads_and_writes_standard_streams_in_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (model, responses) = setup(dir.path());
    let c = constitution();
    let (c1, r1, pairs, labels, prefs) = (
        path(dir.path(), "c1.parquet"),
        path(dir.path(), "r1.parquet"),
        path(dir.path(), "pairs.parquet"),
        path(dir.path(), "labels.parquet"),
        path(dir.path(), "prefs.jsonl"),
    );
    stage("critique", &model, &responses, &c1, &[]);
    stage("revise", &model, &c1, &r1, &[]);
    ok(&["pair", "-i", &responses, "-o", &pairs]);
    stage("label", &model, &pairs, &labels, &[]);
    ok(&["export", "-i", &labels, "-o", &prefs]);

    // The same chain through pipes: each stage reads `-` and writes `-`.
    let piped = |args: &[&str], stdin: &[u8]| -> Vec<u8> {
        let out = charter(args, Some(stdin));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let model_flags = [
        "-m",
        model.as_str(),
        "-c",
        c.as_str(),
        "--max-new-tokens",
        "8",
    ];
    let with = |kind: &'static str| -> Vec<&str> {
        let mut a = vec![kind, "-i", "-", "-o", "-"];
        a.extend(model_flags);
        a
    };
    let crit = piped(&with("critique"), &std::fs::read(&responses).unwrap());
    let rev = piped(&with("revise"), &crit);
    let pair = piped(
        &["pair", "-i", "-", "-o", "-"],
        &std::fs::read(&responses).unwrap(),
    );
    let label = piped(&with("label"), &pair);
    let export = piped(&["export", "-i", "-", "-o", "-"], &label);

    for (bytes, file) in [
        (&crit, &c1),
        (&rev, &r1),
        (&pair, &pairs),
        (&label, &labels),
    ] {
        let copy = dir.path().join("copy.parquet");
        std::fs::write(&copy, bytes).unwrap();
        assert_eq!(
            inspect(copy.to_str().unwrap())["content_hash"],
            inspect(file)["content_hash"],
            "{file}: the piped table has the same rows"
        );
    }
    assert_eq!(export, std::fs::read(&prefs).unwrap());
}
