//! The default model (SmolLM2-135M-Instruct GGUF, fetched by `scripts/setup`) imported with
//! `charter model import` answers the reference prompts exactly as the f32 reference does.

use crate::default_prompts::charter_home;
use crate::{file, inspect, ok};

#[test]
fn imported_default_model_reproduces_the_reference_answers() {
    let gguf = charter_home().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "{} missing — run scripts/setup",
        gguf.display()
    );
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/reference/smollm2/greedy_f32.json"
        ))
        .expect("shared/reference beside the repository"),
    )
    .unwrap();
    let cases = reference.as_array().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("smollm2");
    let model = model.to_str().unwrap();
    ok(&[
        "model",
        "import",
        gguf.to_str().unwrap(),
        "-o",
        model,
        "--dtype",
        "f32",
    ]);
    let info: serde_json::Value =
        serde_json::from_slice(&ok(&["model", "info", model, "--json"])).unwrap();
    assert_eq!(info["config"]["num_hidden_layers"], 30);
    assert_eq!(info["config"]["num_key_value_heads"], 3);
    assert_eq!(info["eos_token"], "<|im_end|>");
    // A second import of the same file and dtype finds the directory up to date.
    ok(&[
        "model",
        "import",
        gguf.to_str().unwrap(),
        "-o",
        model,
        "--dtype",
        "f32",
    ]);

    let lines: String = cases
        .iter()
        .map(|c| format!("{}\n", c["prompt"].as_str().unwrap()))
        .collect();
    let input = file(dir.path(), "reference.txt", lines);
    let prompts = dir.path().join("prompts.parquet");
    ok(&["prompts", "import", &input, "-o", prompts.to_str().unwrap()]);
    let out = dir.path().join("responses.parquet");
    ok(&[
        "respond",
        "-m",
        model,
        "-i",
        prompts.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--temperature",
        "0",
        "--max-new-tokens",
        "64",
        "--batch-size",
        "3",
    ]);
    let t = inspect(out.to_str().unwrap());
    assert_eq!(
        t["metadata"]["charter.model_hash"],
        info["provenance"]["content_hash"]
    );
    for (row, case) in t["head"].as_array().unwrap().iter().zip(cases) {
        let want = case["text"]
            .as_str()
            .unwrap()
            .trim_end_matches("<|im_end|>");
        assert_eq!(row["text"], want);
        assert_eq!(row["finish_reason"], "stop");
        assert_eq!(
            row["prompt_tokens"],
            case["prompt_ids"].as_array().unwrap().len()
        );
        assert_eq!(
            row["completion_tokens"],
            case["greedy_ids"].as_array().unwrap().len()
        );
        assert_eq!(row["model"], "SmolLM2-135M-Instruct.Q4_1");
    }
}
