//! Outputs are never lost or mixed: a second writer of the same output is
//! refused, an input is never its own output, a directory is never taken
//! for a table, counts are bounded, and an oversized prompt costs no memory
//! in proportion to its size.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::respond::{prompts, tiny};
use crate::{charter, fails, file, inspect, ok};

fn respond_args<'a>(model: &'a str, input: &'a str, out: &'a str, seed: &'a str) -> Vec<&'a str> {
    vec![
        "respond",
        "-m",
        model,
        "-i",
        input,
        "-o",
        out,
        "--max-new-tokens",
        "48",
        "--temperature",
        "1",
        "--seed",
        seed,
        "--shard-rows",
        "8",
    ]
}

/// Starts `charter` with `args`, its output discarded.
fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_charter"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `done` until it holds or a minute has passed; returns whether it held.
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn a_second_writer_of_the_same_output_is_refused_and_never_mixes_rows() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let table = prompts(dir.path(), 200);
    let out = dir.path().join("r.parquet");
    let out_str = out.to_str().unwrap();
    let lock = dir.path().join("r.parquet.lock");
    let alone = dir.path().join("alone.parquet");
    ok(&respond_args(&model, &table, alone.to_str().unwrap(), "3"));
    let expected = inspect(alone.to_str().unwrap())["content_hash"].clone();
    for round in 0..3 {
        let _ = std::fs::remove_file(&out);
        let mut first = spawn(&respond_args(&model, &table, out_str, "3"));
        assert!(
            wait_until(|| lock.exists()),
            "round {round}: the first writer claims its output"
        );
        let err = fails(&respond_args(&model, &table, out_str, "4"), None);
        assert!(err.contains("being written by process"), "{err}");
        assert!(err.contains(&format!("process {}", first.id())), "{err}");
        assert!(err.contains("r.parquet.lock"), "{err}");
        let status = first.wait().unwrap();
        assert!(status.success(), "round {round}: the first writer finishes");
        assert!(!lock.exists(), "the claim is released");
        assert_eq!(
            inspect(out_str)["content_hash"],
            expected,
            "round {round}: the first writer's rows alone"
        );
        ok(&["inspect", out_str, "--verify"]);
    }
}

#[test]
fn a_killed_writer_leaves_a_claim_the_next_run_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let table = prompts(dir.path(), 200);
    let out = dir.path().join("r.parquet");
    let out_str = out.to_str().unwrap();
    let lock = dir.path().join("r.parquet.lock");
    let journal = dir.path().join("r.parquet.partial/journal.jsonl");
    let mut child = spawn(&respond_args(&model, &table, out_str, "3"));
    wait_until(|| {
        let shards = std::fs::read_to_string(&journal).map_or(0, |j| j.lines().count());
        shards >= 3 || child.try_wait().unwrap().is_some()
    });
    assert!(child.try_wait().unwrap().is_none(), "killed while running");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(lock.exists(), "a killed writer leaves its lock file");
    let dead = std::fs::read_to_string(&lock).unwrap();
    assert!(dead.contains(&format!("\"pid\":{}", child.id())), "{dead}");
    // What a writer killed while merging leaves beside its output.
    let torn = dir.path().join(".r.parquet.Xy12Ab.partial");
    std::fs::write(&torn, b"PAR1 half a table").unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&ok(&{
        let mut a = respond_args(&model, &table, out_str, "3");
        a.push("--json");
        a
    }))
    .unwrap();
    assert!(summary["resumed_rows"].as_u64().unwrap() > 0, "{summary}");
    assert!(!lock.exists());
    assert!(
        !torn.exists(),
        "the next claimant removes a dead writer's temporary file"
    );
}

#[test]
fn an_input_is_never_its_own_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let table = prompts(dir.path(), 2);
    let before = std::fs::read(&table).unwrap();
    let err = fails(&respond_args(&model, &table, &table, "3"), None);
    assert!(err.contains("writing it would destroy the input"), "{err}");
    // The same file through a symbolic link.
    let link = dir.path().join("link.parquet");
    std::os::unix::fs::symlink(&table, &link).unwrap();
    let err = fails(
        &respond_args(&model, &table, link.to_str().unwrap(), "3"),
        None,
    );
    assert!(err.contains("writing it would destroy the input"), "{err}");
    assert_eq!(std::fs::read(&table).unwrap(), before);

    let responses = dir.path().join("r.parquet");
    let responses = responses.to_str().unwrap();
    ok(&respond_args(&model, &table, responses, "3"));
    let before = std::fs::read(responses).unwrap();
    let c = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small-constitution.toml");
    let err = fails(
        &[
            "critique",
            "-m",
            &model,
            "-c",
            c.to_str().unwrap(),
            "-i",
            responses,
            "-o",
            responses,
        ],
        None,
    );
    assert!(err.contains("writing it would destroy the input"), "{err}");
    assert_eq!(std::fs::read(responses).unwrap(), before);

    let jsonl = file(dir.path(), "x.jsonl", "{\"prompt\": \"hello\"}\n");
    let err = fails(&["prompts", "import", &jsonl, "-o", &jsonl], None);
    assert!(err.contains("writing it would destroy the input"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&jsonl).unwrap(),
        "{\"prompt\": \"hello\"}\n"
    );
}

#[test]
fn a_directory_at_the_output_fails_before_any_generation() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let table = prompts(dir.path(), 2);
    let out = dir.path().join("existing");
    std::fs::create_dir(&out).unwrap();
    let err = fails(
        &respond_args(&model, &table, out.to_str().unwrap(), "3"),
        None,
    );
    assert!(err.contains("is a directory"), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "left alone");
}

#[test]
fn counts_are_checked_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let table = prompts(dir.path(), 2);
    let out = dir.path().join("r.parquet");
    let out = out.to_str().unwrap();
    for (flag, value, message) in [
        (
            "--samples",
            "4294967295",
            "setting `samples`: must be from 1 to 4096",
        ),
        (
            "--batch-size",
            "0",
            "setting `batch_size`: must be at least 1",
        ),
        (
            "--shard-rows",
            "0",
            "setting `shard_rows`: must be at least 1",
        ),
    ] {
        let mut args = vec!["respond", "-m", &model, "-i", &table, "-o", out];
        args.extend([flag, value]);
        let out = charter(&args, None);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{flag} {value}: a clean error exit"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{flag}: {err}");
    }
    assert!(!Path::new(out).exists());
    assert!(
        !Path::new(&format!("{out}.partial")).exists(),
        "nothing left behind"
    );
}

/// Peak resident memory (VmHWM) of a child, read until it exits.
fn peak_rss_kib(mut child: std::process::Child) -> (std::process::ExitStatus, u64) {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_huge_prompt_is_a_context_row_without_tokenising_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    // 20 MB in one prompt, far past any context window.
    let huge = format!(
        "{{\"prompt\": \"short one\"}}\n{{\"prompt\": \"{}\"}}\n",
        "many words again ".repeat(20 << 20 >> 4)
    );
    let input = file(dir.path(), "p.jsonl", huge);
    let table = dir.path().join("p.parquet");
    ok(&[
        "prompts",
        "import",
        &input,
        "-o",
        table.to_str().unwrap(),
        "--no-near-dup",
    ]);
    let out = dir.path().join("r.parquet");
    let child = spawn(&[
        "respond",
        "-m",
        &model,
        "-i",
        table.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "4",
    ]);
    let (status, peak_kib) = peak_rss_kib(child);
    assert!(status.success());
    // Tokenising the prompt took gigabytes; reading and writing it takes a few copies.
    assert!(peak_kib < 1 << 20, "peak RSS {peak_kib} KiB");
    let t = inspect(out.to_str().unwrap());
    let rows = t["head"].as_array().unwrap();
    let long = rows
        .iter()
        .find(|r| r["prompt"].as_str().unwrap().len() > 1000)
        .unwrap();
    assert_eq!(long["finish_reason"], "context");
    assert_eq!(long["completion_tokens"], 0);
    assert_eq!(long["prompt_tokens"], 4096, "the context window");
}
