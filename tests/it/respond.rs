//! `charter model tiny|info`, `chat` and `respond` on the tiny random-weight model:
//! the responses table, caching, resumption after SIGKILL, context overflow.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{charter, fails, file, inspect, ok};

/// The tiny model (seed 3) in `dir`.
pub(crate) fn tiny(dir: &Path) -> String {
    let model = dir.join("tiny");
    ok(&[
        "model",
        "tiny",
        "-o",
        model.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    model.to_str().unwrap().to_string()
}

/// A prompts table of `n` distinct prompts in `dir`.
pub(crate) fn prompts(dir: &Path, n: usize) -> String {
    let lines: String = (0..n)
        .map(|i| format!("Question number {i}: how should I answer this?\n"))
        .collect();
    let input = file(dir, "prompts.txt", lines);
    let table = dir.join("prompts.parquet");
    ok(&[
        "prompts",
        "import",
        &input,
        "-o",
        table.to_str().unwrap(),
        "--no-near-dup",
    ]);
    table.to_str().unwrap().to_string()
}

#[test]
fn tiny_model_directory_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let info: serde_json::Value =
        serde_json::from_slice(&ok(&["model", "info", &model, "--json"])).unwrap();
    assert_eq!(info["config"]["num_hidden_layers"], 2);
    assert_eq!(info["config"]["vocab_size"], 259);
    assert_eq!(info["provenance"]["name"], "charter-tiny");
    assert_eq!(info["provenance"]["dtype"], "f32");
    // The same seed gives the same model hash; the directory holds nothing else.
    let again = dir.path().join("again");
    ok(&[
        "model",
        "tiny",
        "-o",
        again.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    let info2: serde_json::Value =
        serde_json::from_slice(&ok(&["model", "info", again.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(
        info["provenance"]["content_hash"],
        info2["provenance"]["content_hash"]
    );
    assert_eq!(
        std::fs::read(Path::new(&model).join("model.onnx.data")).unwrap(),
        std::fs::read(again.join("model.onnx.data")).unwrap()
    );
    let chat = ok(&[
        "chat",
        "-m",
        &model,
        "hello",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
    ]);
    assert!(!chat.is_empty());

    std::fs::remove_file(Path::new(&model).join("tokenizer.json")).unwrap();
    let err = fails(&["model", "info", &model], None);
    assert!(
        err.contains("not a complete charter model directory: missing tokenizer.json"),
        "{err}"
    );
}

#[test]
fn respond_writes_a_reproducible_responses_table() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let table = prompts(dir.path(), 5);
    let out = dir.path().join("responses.parquet");
    let out = out.to_str().unwrap();
    let args = [
        "respond",
        "-m",
        &model,
        "-i",
        &table,
        "-o",
        out,
        "--samples",
        "2",
        "--max-new-tokens",
        "12",
        "--batch-size",
        "3",
        "--json",
    ];
    let first: serde_json::Value = serde_json::from_slice(&ok(&args)).unwrap();
    assert_eq!(first["rows"], 10);
    assert_eq!(first["cached"], false);
    let t = inspect(out);
    assert_eq!(t["table"], "responses");
    assert_eq!(t["metadata"]["charter.stage"], "respond");
    assert_eq!(t["metadata"]["charter.settings"]["samples"], 2);
    let prompts_table = inspect(&table);
    assert_eq!(
        t["metadata"]["charter.inputs"][0]["content_hash"],
        prompts_table["content_hash"]
    );
    let rows = t["head"].as_array().unwrap();
    assert_eq!(rows[0]["prompt_id"], prompts_table["head"][0]["id"]);
    assert_eq!(rows[0]["prompt_id"], rows[1]["prompt_id"]);
    assert_eq!(
        (rows[0]["sample"].clone(), rows[1]["sample"].clone()),
        (0.into(), 1.into())
    );
    assert_ne!(rows[0]["seed"], rows[1]["seed"]);
    for row in rows {
        assert!(row["completion_tokens"].as_u64().unwrap() <= 12);
        assert!(["stop", "length"].contains(&row["finish_reason"].as_str().unwrap()));
        assert_eq!(row["model"], "charter-tiny");
    }
    let bytes = std::fs::read(out).unwrap();

    // Same build: nothing to do, same bytes.
    let second: serde_json::Value = serde_json::from_slice(&ok(&args)).unwrap();
    assert_eq!(second["cached"], true);
    assert_eq!(std::fs::read(out).unwrap(), bytes);

    // A new build seed gives new samples.
    let seeded = dir.path().join("seeded.parquet");
    let mut s = args.to_vec();
    s[6] = seeded.to_str().unwrap();
    s.extend(["--seed", "9"]);
    ok(&s);
    assert_ne!(
        inspect(seeded.to_str().unwrap())["content_hash"],
        t["content_hash"]
    );
}

/// Greedy answers of at most 40 tokens from `model` to `table`, written to
/// `out` with `extra` flags; the table as `inspect --json` shows it.
fn greedy(out: &Path, model: &str, table: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "respond",
        "-m",
        model,
        "-i",
        table,
        "-o",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "40",
        "--temperature",
        "0",
    ];
    args.extend(extra);
    ok(&args);
    inspect(out.to_str().unwrap())
}

#[test]
fn a_stop_string_ends_the_answer_and_is_cut_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let table = prompts(dir.path(), 1);
    let run = |name: &str, extra: &[&str]| {
        greedy(&dir.path().join(name), &model, &table, extra)["head"][0].clone()
    };
    let free = run("free.parquet", &[]);
    let text = free["text"].as_str().unwrap().to_string();
    // Stop at two characters from the middle of the unconstrained answer.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 10, "{text:?}");
    let needle: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = text[..text.find(&needle).unwrap()].to_string();
    let stopped = run("stopped.parquet", &["--stop", &needle]);
    assert_eq!(stopped["text"], cut.as_str());
    assert_eq!(stopped["finish_reason"], "stop");
    assert!(stopped["completion_tokens"].as_u64() < free["completion_tokens"].as_u64());
}

#[test]
fn the_repetition_settings_change_the_answer_and_are_recorded_only_when_on() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let table = prompts(dir.path(), 1);
    let run = |name: &str, extra: &[&str]| greedy(&dir.path().join(name), &model, &table, extra);
    let free = run("free.parquet", &[]);
    let settings = &free["metadata"]["charter.settings"];
    assert!(settings.get("repetition_penalty").is_none(), "{settings}");
    assert!(settings.get("no_repeat_ngram_size").is_none(), "{settings}");
    let banned = run(
        "banned.parquet",
        &["--no-repeat-ngram-size", "2", "--repetition-penalty", "1.3"],
    );
    let settings = &banned["metadata"]["charter.settings"];
    assert_eq!(settings["no_repeat_ngram_size"], 2);
    assert!((settings["repetition_penalty"].as_f64().unwrap() - 1.3).abs() < 1e-6);
    assert_ne!(banned["head"][0]["text"], free["head"][0]["text"]);

    let err = fails(
        &["chat", "-m", &model, "hello", "--repetition-penalty", "0"],
        None,
    );
    assert!(err.contains("setting `repetition_penalty`"), "{err}");
}

#[test]
fn a_prompt_longer_than_the_context_is_a_row_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    // The tiny model's tokenizer is one token per byte and its context 4,096 tokens.
    let input = file(
        dir.path(),
        "p.txt",
        format!("short one\n{}\n", "long ".repeat(1000)),
    );
    let table = dir.path().join("p.parquet");
    ok(&["prompts", "import", &input, "-o", table.to_str().unwrap()]);
    let out = dir.path().join("r.parquet");
    let summary: serde_json::Value = serde_json::from_slice(&ok(&[
        "respond",
        "-m",
        &model,
        "-i",
        table.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "--json",
    ]))
    .unwrap();
    assert_eq!(summary["context_overflows"], 1);
    let t = inspect(out.to_str().unwrap());
    assert_eq!(t["head"][1]["finish_reason"], "context");
    assert_eq!(t["head"][1]["text"], "");
    assert_eq!(t["head"][1]["completion_tokens"], 0);
}

#[test]
fn respond_refuses_the_wrong_table_and_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let table = prompts(dir.path(), 2);
    let out = dir.path().join("r.parquet");
    ok(&[
        "respond",
        "-m",
        &model,
        "-i",
        &table,
        "-o",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "2",
    ]);
    let again = dir.path().join("again.parquet");
    let err = fails(
        &[
            "respond",
            "-m",
            &model,
            "-i",
            out.to_str().unwrap(),
            "-o",
            again.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        err.contains("expected a `prompts` table, found a `responses` table"),
        "{err}"
    );
    let err = fails(
        &[
            "respond",
            "-m",
            &model,
            "-i",
            &table,
            "-o",
            again.to_str().unwrap(),
            "--top-p",
            "0",
        ],
        None,
    );
    assert!(err.contains("setting `top_p`: must be in (0, 1]"), "{err}");
    assert!(!again.exists());
    let err = fails(
        &[
            "respond",
            "-m",
            dir.path().to_str().unwrap(),
            "-i",
            &table,
            "-o",
            again.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        err.contains("not a complete charter model directory"),
        "{err}"
    );
}

#[test]
fn a_killed_respond_resumes_to_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let table = prompts(dir.path(), 400);
    let common = [
        "--max-new-tokens",
        "48",
        "--batch-size",
        "4",
        "--shard-rows",
        "4",
        "--temperature",
        "1",
    ];
    let whole = dir.path().join("whole.parquet");
    let mut args = vec![
        "respond",
        "-m",
        &model,
        "-i",
        &table,
        "-o",
        whole.to_str().unwrap(),
    ];
    args.extend(common);
    ok(&args);

    let out = dir.path().join("killed.parquet");
    let mut args = vec![
        "respond",
        "-m",
        &model,
        "-i",
        &table,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(common);
    let journal = dir.path().join("killed.parquet.partial/journal.jsonl");
    let mut kills = 0;
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_charter"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for a few more shards to be committed, then kill without warning.
        let before = std::fs::read_to_string(&journal)
            .map(|j| j.lines().count())
            .unwrap_or(0);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let now = std::fs::read_to_string(&journal)
                .map(|j| j.lines().count())
                .unwrap_or(0);
            if now >= before + 3 || child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        assert!(
            !out.exists() || kills == 0,
            "no table at the output path before the run finishes"
        );
    }
    assert!(kills > 0, "the run finished before it could be interrupted");
    let out_str = out.to_str().unwrap();
    let finished = charter(&args, None);
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    let resumed = inspect(out_str);
    let expected = inspect(whole.to_str().unwrap());
    assert_eq!(resumed["rows"], 400);
    assert_eq!(
        resumed["content_hash"], expected["content_hash"],
        "no row lost or duplicated"
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&whole).unwrap());
}

#[test]
fn a_missing_onnx_runtime_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let missing = dir.path().join("no-such-libonnxruntime.so");
    let out = Command::new(env!("CARGO_BIN_EXE_charter"))
        .args(["chat", "-m", &model, "hi"])
        .env("CHARTER_ORT_LIB", &missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("ONNX Runtime not found at {}", missing.display())),
        "{err}"
    );
    assert!(err.contains("run scripts/setup"), "{err}");

    // A file that is not a shared library: the loader's reason is shown.
    let bogus = file(dir.path(), "libbogus.so", "not a library");
    let out = Command::new(env!("CARGO_BIN_EXE_charter"))
        .args(["chat", "-m", &model, "hi"])
        .env("CHARTER_ORT_LIB", &bogus)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("cannot load ONNX Runtime from {bogus}")),
        "{err}"
    );
    assert!(
        err.contains("invalid ELF header") || err.contains("file too short"),
        "{err}"
    );
}
