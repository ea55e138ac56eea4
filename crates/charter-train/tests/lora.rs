//! LoRA on the tiny model: adapters start at the base model, only they get
//! gradients, their gradients are right, and a trained run merges them into
//! a usable model directory and resumes bit for bit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::optim::GradientsParams;
use charter_train::{
    Decoder, DeviceChoice, LoraSettings, Outcome, Tokens, scalar, select_device, sft_loss,
    train_dpo, train_sft,
};
use common::{check_gradients, job, labels, quick, revisions};

const LORA: LoraSettings = LoraSettings {
    rank: 4,
    alpha: 8.0,
};

fn tokens(ids: &[u32], prompt_len: usize) -> Tokens {
    Tokens {
        ids: ids.to_vec(),
        prompt_len,
    }
}

fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn adapters_start_at_the_base_model_and_alone_get_gradients() {
    let root = tempfile::tempdir().unwrap();
    charter_model::write_tiny(root.path(), 7).unwrap();
    let device = select_device(DeviceChoice::Cpu, true).unwrap();
    let base = Decoder::open(root.path(), &device).unwrap();
    let prompt: &[u32] = &[257, 72, 105, 10, 79];
    let before = base.logits(&[prompt]).unwrap();
    let model = base.with_lora(LORA, 3).unwrap();
    assert_eq!(model.logits(&[prompt]).unwrap(), before);

    let row = tokens(&[257, 72, 105, 10, 79, 75, 258], 4);
    let loss = sft_loss(&model, &[&row], 3.0).unwrap();
    let grads = loss.backward();
    let named = model.gradients(&grads).unwrap();
    let layers = model.config().num_hidden_layers;
    // Two matrices (A, B) for each of 7 projections in every block, and nothing else.
    assert_eq!(named.len(), layers * 7 * 2, "{:?}", named.keys());
    assert!(named.keys().all(|n| n.contains(".lora_")));
    // With B = 0 the loss does not depend on A yet; B's gradient is what moves first.
    for (name, (_, g)) in &named {
        let largest = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        match name.contains("lora_A") {
            true => assert_eq!(largest, 0.0, "{name}"),
            false => assert!(largest > 0.0, "{name}"),
        }
    }
    let params = GradientsParams::from_grads(grads, &model);
    assert_eq!(params.len(), named.len());
    assert_eq!(model.adapter_tensors().unwrap().len(), named.len());
}

#[test]
fn lora_rank_beyond_a_weight_is_refused() {
    let root = tempfile::tempdir().unwrap();
    charter_model::write_tiny(root.path(), 7).unwrap();
    let device = select_device(DeviceChoice::Cpu, false).unwrap();
    let base = Decoder::open(root.path(), &device).unwrap();
    let err = base
        .with_lora(
            LoraSettings {
                rank: 100_000,
                alpha: 1.0,
            },
            0,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("setting `lora_rank`: 100000 exceeds"), "{err}");
}

#[test]
fn adapter_gradients_match_finite_differences() {
    let root = tempfile::tempdir().unwrap();
    charter_model::write_tiny(root.path(), 9).unwrap();
    let plain = select_device(DeviceChoice::Cpu, false).unwrap();
    let device = select_device(DeviceChoice::Cpu, true).unwrap();
    // Non-zero B, so that A's gradient is not zero either.
    let mut adapters = Decoder::open(root.path(), &plain)
        .unwrap()
        .with_lora(LORA, 5)
        .unwrap()
        .adapter_tensors()
        .unwrap();
    for (name, (_, values)) in adapters.iter_mut() {
        if name.contains("lora_B") {
            for (i, v) in values.iter_mut().enumerate() {
                *v = 0.05 * ((i * 7 % 13) as f32 - 6.0) / 6.0;
            }
        }
    }
    let open = |device, tensors: &charter_model::Tensors| {
        Decoder::open(root.path(), device)
            .unwrap()
            .with_lora(LORA, 5)
            .unwrap()
            .restore(tensors)
            .unwrap()
    };
    let rows = [
        tokens(&[257, 72, 105, 10, 79, 75, 258], 4),
        tokens(&[257, 49, 61, 50], 2),
    ];
    let rows: Vec<&Tokens> = rows.iter().collect();
    let model = open(&device, &adapters);
    let grads = model
        .gradients(&sft_loss(&model, &rows, 5.0).unwrap().backward())
        .unwrap();
    let loss_with = |name: &str, index: usize, delta: f32| {
        let mut t = adapters.clone();
        t.get_mut(name).unwrap().1[index] += delta;
        let m = open(&plain, &t);
        f64::from(scalar(&sft_loss(&m, &rows, 5.0).unwrap()).unwrap())
    };
    check_gradients(
        &grads,
        &[
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
            "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight",
            "base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight",
        ],
        loss_with,
    );
}

fn sft_rows() -> Vec<(String, String)> {
    (0..8)
        .map(|i| (format!("question {i}"), format!("answer number {i}.")))
        .collect()
}

#[test]
fn lora_sft_learns_merges_and_resumes() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("tiny");
    charter_model::write_tiny(&base, 11).unwrap();
    let rows = sft_rows();
    let rows: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let table = revisions(&root.path().join("revisions.parquet"), &rows);
    let mut settings = quick(12, 2e-2);
    settings.lora = Some(LORA);
    settings.checkpoint_every = 3;

    let whole = root.path().join("whole");
    let mut losses = Vec::new();
    let outcome = train_sft(
        &job(&base, &whole, settings.clone()),
        std::slice::from_ref(&table),
        &mut |m, _| losses.push(m.loss),
    )
    .unwrap();
    let Outcome::Written { report, .. } = outcome else {
        panic!("nothing was written")
    };
    assert_eq!(report.settings.lora, Some(LORA));
    assert_eq!(losses.len(), 24);
    assert!(
        losses[23] < 0.5 * losses[0],
        "loss {} -> {}: {losses:?}",
        losses[0],
        losses[23]
    );

    // The merged weights differ from the base only in the adapted projections.
    let plain = select_device(DeviceChoice::Cpu, false).unwrap();
    let before = Decoder::open(&base, &plain).unwrap().to_tensors().unwrap();
    let after = Decoder::open(&whole, &plain).unwrap().to_tensors().unwrap();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (name, (_, b)) in &before {
        let moved = max_gap(b, &after[name].1) > 0.0;
        let adapted = name.contains("_proj.weight");
        assert_eq!(moved, adapted, "{name}");
    }

    // Base + the adapters PEFT-style gives the merged model's logits.
    let adapter =
        charter_model::SafetensorsFile::open(whole.join("adapter/adapter_model.safetensors"))
            .unwrap()
            .read_all()
            .unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("adapter/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    let unmerged = Decoder::open(&base, &plain)
        .unwrap()
        .with_lora(LORA, 1)
        .unwrap()
        .restore(&adapter)
        .unwrap();
    let merged = Decoder::open(&whole, &plain).unwrap();
    let prompt: &[u32] = &[257, 113, 117, 101, 10, 97];
    let gap = max_gap(
        &unmerged.logits(&[prompt]).unwrap(),
        &merged.logits(&[prompt]).unwrap(),
    );
    assert!(gap < 1e-4, "merged vs adapter logits: {gap}");

    // Interrupted after step 7 and resumed: the same weights.
    let split = root.path().join("split");
    let stop = AtomicBool::new(false);
    let mut first = job(&base, &split, settings.clone());
    first.interrupt = &stop;
    let outcome = train_sft(&first, std::slice::from_ref(&table), &mut |m, _| {
        if m.step == 7 {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    let Outcome::Interrupted { checkpoint, .. } = outcome else {
        panic!("the run was not interrupted")
    };
    // The checkpoint holds the adapters, not a copy of the frozen weights.
    let saved = charter_model::SafetensorsFile::open(checkpoint.join("weights.safetensors"))
        .unwrap()
        .names();
    assert_eq!(saved.len(), adapter.len());
    let mut again = job(&base, &split, settings);
    again.resume = true;
    train_sft(&again, &[table], &mut |_, _| {}).unwrap();
    let a = std::fs::read(whole.join("model.safetensors")).unwrap();
    let b = std::fs::read(split.join("model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed weights differ from the uninterrupted run's"
    );
}

#[test]
fn lora_dpo_starts_at_ln_2() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("tiny");
    charter_model::write_tiny(&base, 2).unwrap();
    let rows: Vec<(String, String, String, f64)> = (0..4)
        .map(|i| {
            (
                format!("Help with {i}?"),
                format!("Sure, item {i}."),
                format!("No, item {i}!"),
                0.9,
            )
        })
        .collect();
    let table = labels(&root.path().join("labels.parquet"), &rows);
    let out = root.path().join("rl-cai");
    let mut settings = quick(2, 1e-2);
    settings.lora = Some(LORA);
    let mut losses = Vec::new();
    train_dpo(
        &job(&base, &out, settings),
        &table,
        0.1,
        &root.path().join("cache"),
        &mut |m, _| losses.push(m.loss),
    )
    .unwrap();
    assert!(
        (losses[0] - std::f64::consts::LN_2).abs() < 1e-5,
        "{losses:?}"
    );
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
}

#[test]
fn lora_pm_trains_the_head_and_the_adapters() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("tiny");
    charter_model::write_tiny(&base, 6).unwrap();
    let rows: Vec<(String, String, String, f64)> = (0..12)
        .map(|i| {
            let (good, bad) = (format!("Sure, item {i}."), format!("No. Go away {i}!!"));
            match i % 2 {
                0 => (format!("Help with {i}?"), good, bad, 0.9),
                _ => (format!("Help with {i}?"), bad, good, 0.1),
            }
        })
        .collect();
    let table = labels(&root.path().join("labels.parquet"), &rows);
    let out = root.path().join("pm");
    let mut settings = quick(3, 1e-2);
    settings.lora = Some(LORA);
    let outcome =
        charter_train::train_pm(&job(&base, &out, settings), &table, 0.0, &mut |_, _| {}).unwrap();
    assert!(matches!(outcome, Outcome::Written { .. }));
    let device = select_device(DeviceChoice::Cpu, false).unwrap();
    let pm = charter_train::open_preference_model(&out, &device).unwrap();
    assert!(pm.score_values().unwrap().iter().any(|&v| v != 0.0));
    let adapter =
        charter_model::SafetensorsFile::open(out.join("adapter/adapter_model.safetensors"))
            .unwrap();
    assert!(adapter.names().iter().all(|n| n.contains(".lora_")));
    // The backbone moved only in the adapted projections.
    let before = Decoder::open(&base, &device).unwrap().to_tensors().unwrap();
    let after = pm.backbone.to_tensors().unwrap();
    assert_eq!(before["model.norm.weight"], after["model.norm.weight"]);
    assert_ne!(
        before["model.layers.0.mlp.up_proj.weight"],
        after["model.layers.0.mlp.up_proj.weight"]
    );
}
