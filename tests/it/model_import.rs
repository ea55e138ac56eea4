//! `charter model import` takes a HuggingFace checkpoint directory as well as
//! a GGUF file: a model directory's own `model.safetensors`, config and
//! tokenizer files, laid out as a checkpoint, import back to the same model.

use std::path::{Path, PathBuf};

use crate::{fails, ok};

/// A HuggingFace checkpoint directory `<dir>/<name>` of the tiny model in `tiny`:
/// its model.safetensors as it is, an HF config.json, the tokenizer files.
pub(crate) fn checkpoint(tiny: &Path, dir: &Path, name: &str) -> PathBuf {
    let source = dir.join(name);
    std::fs::create_dir(&source).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(tiny.join(f), source.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tiny.join("config.json")).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    config["hidden_act"] = serde_json::json!("silu");
    std::fs::write(source.join("config.json"), config.to_string()).unwrap();
    source
}

#[test]
fn a_checkpoint_directory_imports_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny");
    ok(&["model", "tiny", "-o", tiny.to_str().unwrap(), "--seed", "4"]);
    let source = checkpoint(&tiny, dir.path(), "tiny-hf");

    let out = dir.path().join("imported");
    let out_s = out.to_str().unwrap();
    ok(&["model", "import", source.to_str().unwrap(), "-o", out_s]);
    let info = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&ok(&["model", "info", p.to_str().unwrap(), "--json"])).unwrap()
    };
    let (got, want) = (info(&out), info(&tiny));
    assert_eq!(got["config"], want["config"]);
    assert_eq!(got["provenance"]["name"], "tiny-hf");
    for f in ["model.safetensors", "model.onnx.data", "tokenizer.json"] {
        assert!(
            std::fs::read(out.join(f)).unwrap() == std::fs::read(tiny.join(f)).unwrap(),
            "{f} differs"
        );
    }

    let missing = dir.path().join("nothing-here");
    let err = fails(
        &["model", "import", missing.to_str().unwrap(), "-o", out_s],
        None,
    );
    assert!(
        err.contains(
            "no such file or directory: give a GGUF file or a HuggingFace checkpoint directory"
        ),
        "{err}"
    );
    std::fs::remove_file(source.join("tokenizer_config.json")).unwrap();
    let err = fails(
        &["model", "import", source.to_str().unwrap(), "-o", out_s],
        None,
    );
    assert!(
        err.contains("cannot import") && err.contains("tokenizer_config.json"),
        "{err}"
    );
}
