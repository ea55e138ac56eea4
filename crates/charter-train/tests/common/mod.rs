//! Hand-made `revisions` and `labels` tables and a tiny model for the
//! trainer's tests.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use charter_model::{Dtype, Tensors};
use charter_table::{LABELS, Label, Output, Provenance, REVISIONS, Record, Revision, TableWriter};
use charter_train::{DeviceChoice, Job, Schedule, TrainSettings};

pub static NEVER: AtomicBool = AtomicBool::new(false);

fn provenance() -> Provenance {
    Provenance {
        stage: "test".into(),
        stage_version: 1,
        settings: serde_json::json!({}),
        inputs: vec![],
        model_hash: None,
        constitution_hash: None,
    }
}

/// A revisions table of (prompt, revised answer) rows.
pub fn revisions(path: &Path, rows: &[(&str, &str)]) -> PathBuf {
    let rows: Vec<Revision> = rows
        .iter()
        .enumerate()
        .map(|(i, (prompt, text))| {
            Revision {
                id: String::new(),
                prompt_id: format!("p{i}"),
                critique_id: format!("c{i}"),
                response_id: format!("r{i}"),
                round: 1,
                prompt: prompt.to_string(),
                response: "first try".into(),
                principle_id: "harm".into(),
                critique: "could be kinder".into(),
                revision_request: "rewrite it".into(),
                text: text.to_string(),
                model: "tiny".into(),
                model_hash: "m".into(),
                constitution: "test".into(),
                constitution_hash: "c".into(),
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
                max_new_tokens: 64,
                seed: i as u64,
                prompt_tokens: 10,
                completion_tokens: 10,
                finish_reason: "stop".into(),
            }
            .with_id()
        })
        .collect();
    let mut w =
        TableWriter::create(&Output::Path(path.to_path_buf()), &REVISIONS, &provenance()).unwrap();
    w.write_rows(&rows).unwrap();
    w.finish().unwrap();
    path.to_path_buf()
}

/// A labels table of (prompt, A, B, p_a) rows.
pub fn labels(path: &Path, rows: &[(String, String, String, f64)]) -> PathBuf {
    let rows: Vec<Label> = rows
        .iter()
        .enumerate()
        .map(|(i, (prompt, a, b, p_a))| {
            let (chosen, rejected) = if *p_a >= 0.5 { (a, b) } else { (b, a) };
            Label {
                id: String::new(),
                pair_id: format!("pair{i}"),
                prompt_id: format!("p{i}"),
                prompt: prompt.clone(),
                response_a_id: format!("a{i}"),
                response_b_id: format!("b{i}"),
                response_a: a.clone(),
                response_b: b.clone(),
                principle_id: "harm".into(),
                principle: "Which is kinder?".into(),
                model: "tiny".into(),
                model_hash: "m".into(),
                constitution: "test".into(),
                constitution_hash: "c".into(),
                cot: false,
                swap: true,
                seed: i as u64,
                p_a: *p_a,
                p_a_ab: *p_a,
                p_a_ba: Some(*p_a),
                cot_ab: None,
                cot_ba: None,
                chosen: chosen.clone(),
                rejected: rejected.clone(),
                chosen_id: String::new(),
                rejected_id: String::new(),
            }
            .with_id()
        })
        .collect();
    let mut w =
        TableWriter::create(&Output::Path(path.to_path_buf()), &LABELS, &provenance()).unwrap();
    w.write_rows(&rows).unwrap();
    w.finish().unwrap();
    path.to_path_buf()
}

/// Settings for quick runs on the tiny model.
pub fn quick(epochs: usize, lr: f64) -> TrainSettings {
    TrainSettings {
        epochs,
        lr,
        schedule: Schedule::Constant,
        warmup_steps: 0,
        batch_size: 4,
        grad_accum: 1,
        max_len: 64,
        weight_decay: 0.0,
        seed: 1,
        checkpoint_every: 0,
        lora: None,
    }
}

pub fn job<'a>(model: &'a Path, out: &'a Path, settings: TrainSettings) -> Job<'a> {
    Job {
        model,
        out,
        settings,
        device: DeviceChoice::Cpu,
        dtype: Dtype::F32,
        resume: false,
        interrupt: &NEVER,
    }
}

/// Checks autodiff gradients `grads` of tensors `names` against central
/// finite differences of `loss_with(name, index, delta)` (the loss with
/// one value moved by `delta`), at each tensor's three largest components:
/// their finite differences stand well above f32 rounding.
pub fn check_gradients(
    grads: &Tensors,
    names: &[&str],
    loss_with: impl Fn(&str, usize, f32) -> f64,
) {
    for name in names {
        let (_, g) = &grads[*name];
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        for &i in &order[..3] {
            let eps = 1e-2;
            let numeric =
                (loss_with(name, i, eps) - loss_with(name, i, -eps)) / (2.0 * f64::from(eps));
            let analytic = f64::from(g[i]);
            let err = (numeric - analytic).abs() / analytic.abs().max(1e-3);
            assert!(
                err < 0.05,
                "{name}[{i}]: autodiff {analytic}, finite difference {numeric}"
            );
        }
    }
}
