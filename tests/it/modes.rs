//! Files charter writes get the mode the umask gives, as `File::create` would.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::file;

/// Runs `charter args` under `umask` and asserts it succeeded.
fn ok_under(umask: &str, args: &[&str]) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_charter"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "charter {args:?} under umask {umask} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file and directory under `dir`, with its mode.
fn modes(dir: &Path, out: &mut Vec<(String, u32)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push((path.display().to_string(), mode(&path)));
        if path.is_dir() {
            modes(&path, out);
        }
    }
}

#[test]
fn tables_exports_and_reports_follow_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("tiny");
    let model = model.to_str().unwrap();
    ok_under("022", &["model", "tiny", "-o", model, "--seed", "5"]);
    let input = file(d, "p.txt", "How do I pick a lock?\nWrite a poem.\n");
    let prompts = d.join("prompts.parquet");
    let prompts = prompts.to_str().unwrap();
    ok_under("022", &["prompts", "import", &input, "-o", prompts]);
    assert_eq!(mode(Path::new(prompts)), 0o644);

    // A build writes tables (whole and sharded), an export and its report.
    let constitution = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/small-constitution.toml"
    );
    let build = file(
        d,
        "build.toml",
        format!(
            r#"[build]
seed = 1
model = "{model}"
constitution = "{constitution}"
out = "out"

[defaults]
max_new_tokens = 4
batch_size = 4
shard_rows = 2

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
"#
        ),
    );
    ok_under("022", &["build", &build]);
    let out = d.join("out");
    for name in [
        "build-report.json",
        "responses.parquet",
        "labels.parquet",
        "prefs.jsonl",
    ] {
        assert!(out.join(name).is_file(), "{name} written");
    }
    let mut found = Vec::new();
    modes(&out, &mut found);
    modes(Path::new(model), &mut found);
    for (path, mode) in &found {
        let expected = if Path::new(path).is_dir() {
            0o755
        } else {
            0o644
        };
        assert_eq!(*mode, expected, "{path}: {mode:o}");
    }

    // Another umask gives other modes: they come from the umask, not a constant.
    let private = d.join("private.parquet");
    ok_under(
        "077",
        &["prompts", "import", &input, "-o", private.to_str().unwrap()],
    );
    assert_eq!(mode(&private), 0o600);
    let shared = d.join("shared.parquet");
    ok_under(
        "002",
        &["prompts", "import", &input, "-o", shared.to_str().unwrap()],
    );
    assert_eq!(mode(&shared), 0o664);
}
