//! A build split into shards (`--shard I/N`) and merged (`--merge`) on the
//! tiny model: the merged tables are the unsharded build's, byte for byte,
//! whatever N; a merge names missing and out-of-date shards; a shard
//! stopped by SIGTERM resumes to the same tables; a second process on the
//! same shard is refused; the job files `--emit` writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::build::setup;
use crate::{constitution, fails, file, ok};

/// respond (the first `limit` prompts, two samples) → two critique/revise
/// rounds → pairs of response and final revision → labels → an export.
fn graph(model: &str, prompts: &str, out: &str, max_new_tokens: u32) -> String {
    let c = constitution();
    format!(
        r#"[build]
seed = 4
model = "{model}"
constitution = "{c}"
out = "{out}"

[defaults]
max_new_tokens = {max_new_tokens}
temperature = 1.0
batch_size = 3
shard_rows = 5

[[stage]]
name = "prompts"
kind = "table"
path = "{prompts}"

[[stage]]
name = "responses"
kind = "respond"
input = "prompts"
samples = 2
limit = 9

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

[[stage]]
name = "revisions-2"
kind = "revise"
input = "critiques-2"

[[stage]]
name = "pairs"
kind = "pair"
input = "responses"
against = "revisions-2"

[[stage]]
name = "labels"
kind = "label"
input = "pairs"

[[stage]]
name = "ratings"
kind = "rate"
input = "revisions-2"

[[stage]]
name = "prefs"
kind = "export"
input = "labels"
format = "preference"

[[stage]]
name = "clean"
kind = "filter"
input = "revisions-2"
drop = ["repetition"]
"#
    )
}

const OUTPUTS: [&str; 9] = [
    "responses.parquet",
    "critiques-1.parquet",
    "revisions-1.parquet",
    "critiques-2.parquet",
    "revisions-2.parquet",
    "pairs.parquet",
    "labels.parquet",
    "ratings.parquet",
    "clean.parquet",
];

fn assert_same_outputs(a: &Path, b: &Path, what: &str) {
    for name in OUTPUTS.iter().copied().chain(["prefs.jsonl"]) {
        let (x, y) = (std::fs::read(a.join(name)), std::fs::read(b.join(name)));
        assert!(x.is_ok() && y.is_ok(), "{what}: {name} missing");
        assert!(x.unwrap() == y.unwrap(), "{what}: {name} differs");
    }
}

fn shard_rows(dir: &Path, table: &str) -> u64 {
    let path = dir.join(table);
    crate::inspect(path.to_str().unwrap())["rows"]
        .as_u64()
        .unwrap()
}

#[test]
fn merged_shards_are_the_unsharded_build_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path(), 14);
    let whole = file(
        dir.path(),
        "whole.toml",
        graph(&model, &prompts, "whole", 8),
    );
    ok(&["build", &whole]);
    for n in [1u32, 3, 4] {
        let out = format!("out-{n}");
        let b = file(
            dir.path(),
            &format!("b{n}.toml"),
            graph(&model, &prompts, &out, 8),
        );
        let mut responses = 0;
        for i in 0..n {
            ok(&["build", &b, "--shard", &format!("{i}/{n}")]);
            let shard = dir
                .path()
                .join(&out)
                .join("shards")
                .join(format!("{i}-of-{n}"));
            responses += shard_rows(&shard, "responses.parquet");
            // A shard builds only its own tables: no canonical output yet.
            assert!(!dir.path().join(&out).join("responses.parquet").exists());
        }
        assert_eq!(responses, 18, "{n} shards hold every response once");
        let status = String::from_utf8(ok(&["build", &b, "--status"])).unwrap();
        assert!(
            status.contains(&format!("{n} of {n} shards done")),
            "{status}"
        );
        ok(&["build", &b, "--merge"]);
        assert_same_outputs(
            &dir.path().join("whole"),
            &dir.path().join(&out),
            &format!("{n} shards"),
        );
        // Merged and cached: nothing left to do.
        let plan = String::from_utf8(ok(&["build", &b, "--merge", "--dry-run"])).unwrap();
        assert!(!plan.contains(" run:"), "{plan}");
    }
}

#[test]
fn a_merge_names_missing_and_out_of_date_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path(), 10);
    let b = file(dir.path(), "b.toml", graph(&model, &prompts, "out", 6));
    ok(&["build", &b, "--shard", "0/3"]);
    ok(&["build", &b, "--shard", "2/3"]);
    let status = String::from_utf8(ok(&["build", &b, "--status"])).unwrap();
    assert!(status.contains("1/3  missing"), "{status}");
    assert!(status.contains("2 of 3 shards done"), "{status}");
    let err = fails(&["build", &b, "--merge"], None);
    assert!(
        err.contains("stage `responses`: cannot merge 3 shards"),
        "{err}"
    );
    assert!(err.contains("shard 1/3: missing"), "{err}");
    assert!(!err.contains("shard 0/3"), "{err}");
    assert!(
        !dir.path().join("out/responses.parquet").exists(),
        "nothing merged from an incomplete set"
    );

    // Shard 1 built; then the settings change under shards 0 and 2.
    ok(&["build", &b, "--shard", "1/3"]);
    std::fs::write(&b, graph(&model, &prompts, "out", 7)).unwrap();
    ok(&["build", &b, "--shard", "1/3"]);
    let err = fails(&["build", &b, "--merge"], None);
    assert!(
        err.contains("shard 0/3: `responses` is out of date"),
        "{err}"
    );
    assert!(err.contains("max_new_tokens 6 → 7"), "{err}");
    assert!(err.contains("shard 2/3"), "{err}");
    assert!(!err.contains("shard 1/3"), "{err}");
    let plan = String::from_utf8(ok(&["build", &b, "--merge", "--dry-run"])).unwrap();
    assert!(plan.contains("responses    missing: shard 0/3"), "{plan}");

    // Several shard counts on disk: the merge asks which.
    ok(&["build", &b, "--shard", "0/2"]);
    let err = fails(&["build", &b, "--merge"], None);
    assert!(
        err.contains("shards of several counts (2, 3): give --shards N"),
        "{err}"
    );
    // A shard index out of range is refused by the command line.
    let err = fails(&["build", &b, "--shard", "3/3"], None);
    assert!(err.contains("INDEX/COUNT"), "{err}");
}

/// Windows committed in each journal of a shard directory.
fn journals(dir: &Path) -> std::collections::BTreeMap<PathBuf, usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Default::default();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("journal.jsonl"))
        .filter_map(|j| Some((j.clone(), std::fs::read_to_string(j).ok()?)))
        .map(|(j, text)| (j, text.lines().count().saturating_sub(1)))
        .collect()
}

/// Windows committed so far in a shard directory's journals.
fn committed(dir: &Path) -> usize {
    journals(dir).values().sum()
}

#[test]
fn a_shard_stopped_by_sigterm_resumes_to_the_same_tables_and_is_not_run_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path(), 40);
    let slow = |out: &str| graph(&model, &prompts, out, 48).replace("limit = 9", "limit = 40");
    let whole = file(dir.path(), "whole.toml", slow("whole"));
    let b = file(dir.path(), "b.toml", slow("out"));
    // Unsharded: the stopped and resumed shards must merge to this, byte
    // for byte (40 prompts, so windows and batches split differently).
    ok(&["build", &whole]);

    let shard_dir: PathBuf = dir.path().join("out/shards/0-of-2");
    // SIGTERM (Slurm's time limit, preemption), then SIGUSR1: each time the
    // shard commits the window it is generating and exits non-zero.
    for (signal, number) in [("TERM", 1), ("USR1", 2)] {
        let log = dir.path().join(format!("{signal}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_charter"))
            .args(["build", &b, "--shard", "0/2"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Until it commits a window (a finished stage's journal goes away,
        // so wait for any change with some window committed).
        let before = journals(&shard_dir);
        let start = Instant::now();
        while (journals(&shard_dir) == before || committed(&shard_dir) == 0)
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the shard finished too soon to stop it"
        );
        if number == 1 {
            // A second process on the same shard is refused while the first runs.
            let err = fails(&["build", &b, "--shard", "0/2"], None);
            assert!(err.contains("being written by"), "{err}");
        }
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = child.wait().unwrap();
        assert!(!status.success(), "stopped by SIG{signal}: a non-zero exit");
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert!(
            stderr.contains("stopping once the current window is committed"),
            "{signal}: {stderr}"
        );
        assert!(stderr.contains("again to continue"), "{signal}: {stderr}");
    }
    let state = String::from_utf8(ok(&["build", &b, "--status", "--shards", "2"])).unwrap();
    assert!(state.contains("0/2  partial"), "{state}");
    assert!(state.contains("1/2  missing"), "{state}");

    let resumed = String::from_utf8(ok(&["build", &b, "--shard", "0/2", "--json"])).unwrap();
    assert!(resumed.contains("\"resumed\""), "{resumed}");
    ok(&["build", &b, "--shard", "1/2"]);
    ok(&["build", &b, "--merge"]);
    assert_same_outputs(
        &dir.path().join("whole"),
        &dir.path().join("out"),
        "resumed",
    );
}

/// A program of the Python environment `scripts/setup` makes.
fn venv(program: &str) -> PathBuf {
    let path = crate::default_prompts::charter_home()
        .join("venv/bin")
        .join(program);
    assert!(path.exists(), "{}: run scripts/setup first", path.display());
    path
}

/// The YAML documents of a stream, as JSON, read by PyYAML.
fn yaml_documents(text: &str) -> Vec<serde_json::Value> {
    let out = Command::new(venv("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn emitted_job_files_run_the_shards_then_the_merge() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path(), 3);
    // Everything the build names under `dir`, the constitution too.
    let local = dir.path().join("constitution.toml");
    std::fs::copy(constitution(), &local).unwrap();
    let text = graph(&model, &prompts, "out", 4).replace(&constitution(), local.to_str().unwrap());
    let b = file(dir.path(), "My Build.toml", text);
    let bin = env!("CARGO_BIN_EXE_charter");

    let k8s = String::from_utf8(ok(&[
        "build",
        &b,
        "--emit",
        "k8s",
        "--shards",
        "16",
        "--max-parallel",
        "4",
        "--cpus-per-task",
        "2",
        "--mem",
        "8Gi",
        "--image",
        "ghcr.io/me/charter:1",
    ]))
    .unwrap();
    let docs = yaml_documents(&k8s);
    assert_eq!(docs.len(), 2, "{k8s}");
    let (shards, merge) = (&docs[0], &docs[1]);
    assert_eq!(shards["kind"], "Job");
    assert_eq!(shards["metadata"]["name"], "charter-my-build-shards");
    let spec = &shards["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], 16);
    assert_eq!(spec["parallelism"], 4);
    assert_eq!(spec["backoffLimitPerIndex"], 3);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "ghcr.io/me/charter:1");
    assert_eq!(container["resources"]["requests"]["cpu"], "2");
    assert_eq!(container["resources"]["requests"]["memory"], "8Gi");
    let command = container["command"][2].as_str().unwrap();
    assert!(
        command.contains("--shard \"$JOB_COMPLETION_INDEX/16\""),
        "{command}"
    );
    assert!(
        command.contains("'") && command.contains("My Build.toml"),
        "{command}"
    );
    // The claim is mounted where the build file and everything it names live.
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(Path::new(mount), dir.path(), "{k8s}");
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "charter-build"
    );
    assert_eq!(merge["metadata"]["name"], "charter-my-build-merge");
    assert_eq!(merge["spec"]["suspend"], true);
    // Against the Kubernetes API's own schemas (strict: no unknown fields).
    let manifests = dir.path().join("jobs.yaml");
    std::fs::write(&manifests, &k8s).unwrap();
    let validate = |path: &Path| {
        Command::new(venv("kubernetes-validate"))
            .args(["--strict", "--quiet"])
            .arg(path)
            .output()
            .unwrap()
    };
    let checked = validate(&manifests);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        k8s.replace("completionMode: \"Indexed\"", "completionMode: 7"),
    )
    .unwrap();
    assert!(
        !validate(&broken).status.success(),
        "the validator rejects a wrong field"
    );
    let merge_cmd = merge["spec"]["template"]["spec"]["containers"][0]["command"][2]
        .as_str()
        .unwrap();
    assert!(merge_cmd.ends_with("--merge --shards 16"), "{merge_cmd}");

    // Slurm: 7 shards on a cluster whose arrays hold 3 → three arrays, offset.
    let slurm = String::from_utf8(ok(&[
        "build",
        &b,
        "--emit",
        "slurm",
        "--shards",
        "7",
        "--max-parallel",
        "2",
        "--partition",
        "cpu",
        "--time",
        "01:00:00",
        "--max-array-size",
        "3",
    ]))
    .unwrap();
    for part in [
        "--array=0-2%2 --export=ALL,CHARTER_SHARD_OFFSET=0 ",
        "--array=0-2%2 --export=ALL,CHARTER_SHARD_OFFSET=3 ",
        "--array=0-0%2 --export=ALL,CHARTER_SHARD_OFFSET=6 ",
        "--shard \"$((SLURM_ARRAY_TASK_ID + CHARTER_SHARD_OFFSET))/7\"",
        "#SBATCH --partition=cpu",
        "#SBATCH --time=01:00:00",
        "#SBATCH --signal=B:TERM@120",
        "#SBATCH --requeue",
        "--dependency=\"afterok$arrays\"",
        "--merge --shards 7",
    ] {
        assert!(slurm.contains(part), "{part} in:\n{slurm}");
    }
    assert!(slurm.contains(&format!("CHARTER:-{bin}")), "{slurm}");
    assert!(slurm.starts_with("#!/bin/bash\n"));
    let syntax = Command::new("bash")
        .args(["-n", "/dev/stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(slurm.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(syntax.success(), "bash -n: {slurm}");

    let err = fails(&["build", &b, "--emit", "slurm"], None);
    assert!(err.contains("--shards"), "{err}");
}

/// Runs a shell command, returning stdout; panics with its stderr on failure.
fn sh(command: &str) -> String {
    let out = Command::new("bash").args(["-c", command]).output().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Submits the script, returning the merge job's id and the arrays' ids.
fn submit(script: &str) -> (String, String) {
    job_ids(&sh(&format!("bash {script}")))
}

/// The merge job's id and the arrays' ids the script printed.
fn job_ids(printed: &str) -> (String, String) {
    let field = |name: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {printed}"))
            .trim()
            .to_string()
    };
    (field("merge:"), field("shards:"))
}

/// Waits until Slurm no longer lists job `id`.
fn wait_for(id: &str, logs: &Path) {
    let start = Instant::now();
    while !sh(&format!("squeue -h -j {id} 2>/dev/null || true"))
        .trim()
        .is_empty()
    {
        if start.elapsed() > Duration::from_secs(600) {
            panic!(
                "job {id} still queued after 10 minutes; logs in {}",
                logs.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// On a real Slurm (`scripts/slurm-local up`; CI sets CHARTER_SLURM_TESTS=1):
/// the emitted script's job arrays and merge job make the unsharded
/// build's tables; with one array task cancelled mid-run, submitting the
/// script again finishes the build to the same tables.
#[test]
fn slurm_runs_the_emitted_script_to_the_unsharded_tables() {
    if std::env::var_os("CHARTER_SLURM_TESTS").is_none() {
        eprintln!(
            "skipped: set CHARTER_SLURM_TESTS=1 with a Slurm cluster up (scripts/slurm-local up)"
        );
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (model, prompts) = setup(dir.path(), 40);
    let slow = |out: &str| graph(&model, &prompts, out, 48).replace("limit = 9", "limit = 40");
    let whole = file(dir.path(), "whole.toml", slow("whole"));
    ok(&["build", &whole]);

    for (name, cancel) in [("clean", false), ("cancelled", true)] {
        let b = file(dir.path(), &format!("{name}.toml"), slow(name));
        let script = file(
            dir.path(),
            &format!("{name}.sh"),
            ok(&[
                "build",
                &b,
                "--emit",
                "slurm",
                "--shards",
                "4",
                "--max-parallel",
                "2",
            ]),
        );
        let logs = dir.path().join(name).join("shards");
        // The clean run through --submit, the other through the printed script.
        let (merge, arrays) = if cancel {
            submit(&script)
        } else {
            let printed = String::from_utf8(ok(&[
                "build",
                &b,
                "--submit",
                "slurm",
                "--shards",
                "4",
                "--max-parallel",
                "2",
            ]))
            .unwrap();
            assert!(logs.join("submit-slurm-4.sh").is_file());
            job_ids(&printed)
        };
        if cancel {
            // Cancel shard 1 once it has committed some rows.
            let shard = logs.join("1-of-4");
            let start = Instant::now();
            while committed(&shard) < 1 && start.elapsed() < Duration::from_secs(300) {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                committed(&shard) >= 1,
                "shard 1 never started; logs in {}",
                logs.display()
            );
            sh(&format!("scancel {arrays}_1"));
            // The merge can no longer start: afterok is never satisfied.
            sh(&format!("scancel {merge}"));
            wait_for(&arrays, &logs);
            let status = String::from_utf8(ok(&["build", &b, "--status"])).unwrap();
            assert!(!status.contains("4 of 4 shards done"), "{status}");
            let (merge, _) = submit(&script);
            wait_for(&merge, &logs);
        } else {
            wait_for(&merge, &logs);
        }
        assert!(
            dir.path().join(name).join("prefs.jsonl").exists(),
            "{name}: the merge job did not finish; logs: {}",
            sh(&format!("tail -n 5 {}/slurm-*.out", logs.display()))
        );
        assert_same_outputs(&dir.path().join("whole"), &dir.path().join(name), name);
    }
}

#[test]
fn dry_run_estimates_the_whole_input_from_the_rates_earlier_runs_measured() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path(), 14);
    let b = file(dir.path(), "b.toml", graph(&model, &prompts, "out", 4));
    let plan = String::from_utf8(ok(&["build", &b, "--dry-run"])).unwrap();
    assert!(
        plan.contains("responses    18 rows: no rate measured yet"),
        "{plan}"
    );
    ok(&["build", &b]);
    // A cached rebuild keeps the rates the first run measured.
    ok(&["build", &b]);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/build-report.json")).unwrap())
            .unwrap();
    let responses = &report["stages"][1];
    assert_eq!(responses["status"], "cached");
    assert!(
        responses["seconds_per_row"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        responses["tokens_per_row"].as_f64().unwrap() > 0.0,
        "{report}"
    );

    // The whole input: 14 prompts × 2 samples, then one pair per response.
    std::fs::write(
        &b,
        graph(&model, &prompts, "out", 4).replace("limit = 9", ""),
    )
    .unwrap();
    let plan = String::from_utf8(ok(&["build", &b, "--dry-run"])).unwrap();
    assert!(
        plan.contains("estimate, at the rates earlier runs measured"),
        "{plan}"
    );
    for line in [
        "responses    28 rows, ≈",
        "pairs        28 rows",
        "labels       28 rows, ≈",
    ] {
        assert!(plan.contains(line), "{line} in {plan}");
    }
    assert!(
        plan.contains("(sharded)") && plan.contains("(global)"),
        "{plan}"
    );
    assert!(plan.contains("divide among --shard I/N tasks"), "{plan}");
    let json: serde_json::Value =
        serde_json::from_slice(&ok(&["build", &b, "--dry-run", "--json"])).unwrap();
    assert_eq!(json[1]["estimate"]["rows"], 28, "{json}");
    assert_eq!(json[1]["placement"], "sharded");
    assert!(json[1]["estimate"]["seconds"].as_f64().unwrap() > 0.0);
}
