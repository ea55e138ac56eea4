//! Commands that write model directories never delete what they did not
//! write, replace another model only with `--force`, clear what a killed
//! run left but not what a live one is writing, and notice a weight file
//! changed in place.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use charter_model::OutputLock;

use crate::model_import::checkpoint;
use crate::train::tables;
use crate::{fails, ok};

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A directory of someone's own: a file and an empty subdirectory.
fn precious(dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("notes.txt"), "precious").unwrap();
}

fn still_precious(dir: &Path) {
    assert_eq!(names(dir), ["notes.txt", "sub"]);
    assert_eq!(
        fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "precious"
    );
}

fn model_hash(dir: &Path) -> String {
    let info: serde_json::Value =
        serde_json::from_slice(&ok(&["model", "info", s(dir), "--json"])).unwrap();
    info["provenance"]["content_hash"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_directory_or_file_that_is_not_a_model_is_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let tiny = root.path().join("tiny");
    ok(&["model", "tiny", "-o", s(&tiny), "--seed", "4"]);
    let source = checkpoint(&tiny, root.path(), "tiny-hf");

    let mine = root.path().join("mine");
    precious(&mine);
    for args in [
        vec!["model", "tiny", "-o", s(&mine)],
        vec!["model", "tiny", "-o", s(&mine), "--force"],
        vec!["model", "import", s(&source), "-o", s(&mine)],
        vec!["model", "import", s(&source), "-o", s(&mine), "--force"],
    ] {
        let err = fails(&args, None);
        assert!(
            err.contains(&format!(
                "{}: a non-empty directory that is not a charter model directory",
                mine.display()
            )),
            "{args:?}: {err}"
        );
        still_precious(&mine);
    }

    let file = root.path().join("file");
    fs::write(&file, "precious").unwrap();
    for args in [
        vec!["model", "tiny", "-o", s(&file), "--force"],
        vec!["model", "import", s(&source), "-o", s(&file), "--force"],
    ] {
        let err = fails(&args, None);
        assert!(
            err.contains(&format!(
                "{}: exists and is not a directory",
                file.display()
            )),
            "{args:?}: {err}"
        );
        assert_eq!(fs::read_to_string(&file).unwrap(), "precious");
    }
    // Nothing was moved aside or left half-written beside them.
    assert_eq!(names(root.path()), ["file", "mine", "tiny", "tiny-hf"]);
}

#[test]
fn another_model_is_replaced_only_with_force() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("m");
    ok(&["model", "tiny", "-o", s(&out), "--seed", "1"]);
    let first = model_hash(&out);
    // The same model again: nothing to do.
    ok(&["model", "tiny", "-o", s(&out), "--seed", "1"]);
    assert_eq!(model_hash(&out), first);

    let err = fails(&["model", "tiny", "-o", s(&out), "--seed", "2"], None);
    assert!(
        err.contains("holds another model") && err.contains("pass --force to replace it"),
        "{err}"
    );
    assert_eq!(model_hash(&out), first);

    ok(&["model", "tiny", "-o", s(&out), "--seed", "2", "--force"]);
    let second = model_hash(&out);
    assert_ne!(second, first);

    // An import over it, the same way.
    let tiny = root.path().join("tiny");
    ok(&["model", "tiny", "-o", s(&tiny), "--seed", "4"]);
    let source = checkpoint(&tiny, root.path(), "tiny-hf");
    let err = fails(&["model", "import", s(&source), "-o", s(&out)], None);
    assert!(err.contains("pass --force to replace it"), "{err}");
    assert_eq!(model_hash(&out), second);
    ok(&["model", "import", s(&source), "-o", s(&out), "--force"]);
    assert_ne!(model_hash(&out), second);
    assert_eq!(names(root.path()), ["m", "tiny", "tiny-hf"]);

    // A guard's calibration describes the model it was made for: it goes
    // with it (a rebuilt classifier is calibrated again).
    fs::write(out.join("calibration.json"), "{}").unwrap();
    ok(&["model", "tiny", "-o", s(&out), "--seed", "3", "--force"]);
    assert!(!out.join("calibration.json").exists());

    // A file of someone's inside a model directory stops even a forced replacement.
    fs::write(out.join("notes.txt"), "precious").unwrap();
    let err = fails(&["model", "tiny", "-o", s(&out), "--force"], None);
    assert!(
        err.contains("holds files charter did not write (notes.txt)"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(out.join("notes.txt")).unwrap(),
        "precious"
    );
}

#[test]
fn an_import_by_an_older_exporter_is_exported_again_without_force() {
    let root = tempfile::tempdir().unwrap();
    let tiny = root.path().join("tiny");
    ok(&["model", "tiny", "-o", s(&tiny), "--seed", "4"]);
    let source = checkpoint(&tiny, root.path(), "tiny-hf");
    let out = root.path().join("m");
    let import = |dtype: &'static str| {
        [
            "model",
            "import",
            s(&source),
            "-o",
            s(&out),
            "--dtype",
            dtype,
        ]
    };
    ok(&import("f32"));
    let current = model_hash(&out);

    // The same import as an older charter would have recorded it.
    let provenance = out.join("charter-model.json");
    let mut p: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&provenance).unwrap()).unwrap();
    let version = p["graph_version"].as_u64().unwrap();
    p["graph_version"] = (version - 1).into();
    p["content_hash"] = "0".repeat(64).into();
    fs::write(&provenance, serde_json::to_string_pretty(&p).unwrap()).unwrap();
    ok(&import("f32"));
    assert_eq!(model_hash(&out), current);

    // Another dtype of the same source is another model: --force as before.
    let err = fails(&import("int8"), None);
    assert!(err.contains("pass --force to replace it"), "{err}");
    assert_eq!(model_hash(&out), current);
}

#[test]
fn a_killed_runs_partial_is_cleared_and_a_live_ones_is_not() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("m");
    let partial = root.path().join("m.partial");
    fs::create_dir_all(partial.join("new")).unwrap();
    fs::write(partial.join("new/model.onnx.data"), vec![0u8; 1 << 20]).unwrap();
    ok(&["model", "tiny", "-o", s(&out)]);
    assert_eq!(names(root.path()), ["m"]);

    // A writer of `busy` is alive: this process holds its lock.
    let busy = root.path().join("busy");
    let lock = OutputLock::lock(&busy).unwrap();
    fs::create_dir_all(root.path().join("busy.partial/new")).unwrap();
    let err = fails(&["model", "tiny", "-o", s(&busy)], None);
    assert!(
        err.contains(&format!(
            "{}: being written by process {} on",
            busy.display(),
            std::process::id()
        )),
        "{err}"
    );
    assert!(root.path().join("busy.partial/new").is_dir());
    drop(lock);
    ok(&["model", "tiny", "-o", s(&busy)]);
    assert_eq!(names(root.path()), ["busy", "m"]);
}

#[test]
fn a_weight_file_changed_in_place_is_an_error_not_the_old_hash() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("m");
    ok(&["model", "tiny", "-o", s(&out)]);
    let data = out.join("model.onnx.data");
    let mut bytes = fs::read(&data).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&data)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(120))
        .unwrap();
    let err = fails(&["model", "info", s(&out)], None);
    assert!(
        err.contains("model.onnx.data changed after charter wrote the directory"),
        "{err}"
    );
    // Writing the same model again over it is a replacement to ask for.
    let err = fails(&["model", "tiny", "-o", s(&out)], None);
    assert!(err.contains("pass --force to replace it"), "{err}");
    ok(&["model", "tiny", "-o", s(&out), "--force"]);
    model_hash(&out);
}

#[test]
fn training_into_a_directory_that_is_not_a_model_stops_before_training() {
    let root = tempfile::tempdir().unwrap();
    let [model, _, revisions, _] = tables(root.path());
    let mine = root.path().join("mine");
    precious(&mine);
    let err = fails(
        &[
            "train",
            "sft",
            "-m",
            &model,
            "-i",
            &revisions,
            "-o",
            s(&mine),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(
        err.contains("a non-empty directory that is not a charter model directory"),
        "{err}"
    );
    still_precious(&mine);
    assert!(!root.path().join("mine.checkpoint").exists());
}
