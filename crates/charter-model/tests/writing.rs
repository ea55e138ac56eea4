//! Writing a model directory: never over what charter did not write, another
//! model only when asked, one writer at a time, and a file changed in place
//! noticed when the directory is opened.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use charter_model::{
    Error, ModelDir, OutputLock, Replace, lock_path, partial_path, write_tiny, write_tiny_with,
};

/// Nothing is left beside `out`: no work directory, no lock file.
fn nothing_beside(out: &Path) {
    assert!(
        !partial_path(out).exists(),
        "{} left",
        partial_path(out).display()
    );
    assert!(
        !lock_path(out).exists(),
        "{} left",
        lock_path(out).display()
    );
}

#[test]
fn a_directory_or_file_charter_did_not_write_is_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("mine");
    fs::create_dir_all(out.join("sub")).unwrap();
    fs::write(out.join("notes.txt"), "precious").unwrap();
    let err = write_tiny(&out, 1).unwrap_err();
    assert!(matches!(err, Error::NotModelDir { .. }), "{err}");
    assert!(
        err.to_string().contains(&out.display().to_string()),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(out.join("notes.txt")).unwrap(),
        "precious"
    );
    assert!(out.join("sub").is_dir());
    nothing_beside(&out);
    // Asking to replace a model directory does not make this one.
    let err = write_tiny_with(&out, 1, Replace::ModelDir).unwrap_err();
    assert!(matches!(err, Error::NotModelDir { .. }), "{err}");

    let file = root.path().join("file");
    fs::write(&file, "precious").unwrap();
    let err = write_tiny_with(&file, 1, Replace::ModelDir).unwrap_err();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err}");
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious");
    nothing_beside(&file);

    // An empty directory is written into.
    let empty = root.path().join("empty");
    fs::create_dir(&empty).unwrap();
    write_tiny(&empty, 1).unwrap();
    ModelDir::open(&empty).unwrap();
    nothing_beside(&empty);
}

#[test]
fn another_model_is_replaced_only_when_asked_and_only_its_own_files() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("tiny");
    let first = write_tiny(&out, 1).unwrap();
    let stamp = fs::metadata(out.join("model.onnx.data"))
        .unwrap()
        .modified()
        .unwrap();
    // The same model again: kept as it is.
    assert_eq!(write_tiny(&out, 1).unwrap().provenance, first.provenance);
    let again = fs::metadata(out.join("model.onnx.data"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(stamp, again);

    let err = write_tiny(&out, 2).unwrap_err();
    assert!(matches!(err, Error::ModelExists { .. }), "{err}");
    assert_eq!(
        ModelDir::open(&out).unwrap().provenance.content_hash,
        first.provenance.content_hash
    );
    nothing_beside(&out);

    let second = write_tiny_with(&out, 2, Replace::ModelDir).unwrap();
    assert_ne!(
        second.provenance.content_hash,
        first.provenance.content_hash
    );
    assert_eq!(
        ModelDir::open(&out).unwrap().provenance.content_hash,
        second.provenance.content_hash
    );
    nothing_beside(&out);

    // A file someone put in the directory is not charter's to delete.
    fs::write(out.join("notes.txt"), "precious").unwrap();
    let err = write_tiny_with(&out, 3, Replace::ModelDir).unwrap_err();
    assert!(matches!(err, Error::ForeignFiles { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    assert_eq!(
        fs::read_to_string(out.join("notes.txt")).unwrap(),
        "precious"
    );
    assert_eq!(
        ModelDir::open(&out).unwrap().provenance.content_hash,
        second.provenance.content_hash
    );
}

#[test]
fn a_stale_partial_is_cleared_and_a_held_lock_stops_a_second_writer() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("tiny");
    let junk = partial_path(&out).join("new/model.onnx.data");
    fs::create_dir_all(junk.parent().unwrap()).unwrap();
    fs::write(&junk, "left by a killed import").unwrap();
    write_tiny(&out, 1).unwrap();
    nothing_beside(&out);

    let other = root.path().join("other");
    let held = OutputLock::lock(&other).unwrap();
    fs::create_dir_all(partial_path(&other)).unwrap();
    let err = write_tiny(&other, 1).unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    assert!(partial_path(&other).is_dir(), "a held partial was removed");
    assert!(!other.exists());
    drop(held);
    write_tiny(&other, 1).unwrap();
    nothing_beside(&other);
}

#[test]
fn a_file_changed_in_place_is_noticed_and_a_copy_is_not_a_change() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("tiny");
    write_tiny(&out, 1).unwrap();
    let data = out.join("model.onnx.data");

    // A copy without the original times: the contents are checked instead.
    let copy = root.path().join("copy");
    fs::create_dir(&copy).unwrap();
    for entry in fs::read_dir(&out).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        let later = SystemTime::now() + Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(copy.join(entry.file_name()))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    ModelDir::open(&copy).unwrap();

    // The same size, other bytes, another time.
    let mut bytes = fs::read(&data).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    // Well past the recorded time, whatever the file system's time resolution.
    fs::File::options()
        .write(true)
        .open(&data)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(120))
        .unwrap();
    let err = ModelDir::open(&out).unwrap_err();
    assert!(matches!(err, Error::Modified { .. }), "{err}");
    assert!(err.to_string().contains("model.onnx.data"), "{err}");
    assert!(err.to_string().contains("contents differ"), "{err}");

    // Another size.
    bytes.push(0);
    fs::write(&data, &bytes).unwrap();
    let err = ModelDir::open(&out).unwrap_err();
    assert!(err.to_string().contains("bytes, written as"), "{err}");

    // Writing the same model again is a replacement to ask for.
    let err = write_tiny(&out, 1).unwrap_err();
    assert!(matches!(err, Error::ModelExists { .. }), "{err}");
    write_tiny_with(&out, 1, Replace::ModelDir).unwrap();
    ModelDir::open(&out).unwrap();
}
