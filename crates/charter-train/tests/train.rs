//! The trainer on the tiny model: losses, gradients, the three jobs end to
//! end, and resumption.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::optim::GradientsParams;
use charter_gen::{Decoder as OrtDecoder, DecoderDims};
use charter_model::ModelDir;
use charter_train::{
    Decoder, DeviceChoice, MetricRow, Outcome, Tokens, scalar, select_device, sft_loss, train_dpo,
    train_pm, train_sft,
};
use common::{check_gradients, job, labels, quick, revisions};

fn tokens(ids: &[u32], prompt_len: usize) -> Tokens {
    Tokens {
        ids: ids.to_vec(),
        prompt_len,
    }
}

fn written(outcome: Outcome) -> (ModelDir, charter_train::TrainReport) {
    match outcome {
        Outcome::Written { dir, report } => (*dir, *report),
        Outcome::Interrupted { step, .. } => panic!("interrupted at step {step}"),
        Outcome::UpToDate { .. } => panic!("nothing was trained"),
    }
}

fn no_progress() -> impl FnMut(&MetricRow, usize) {
    |_, _| {}
}

#[test]
fn answer_only_loss_ignores_prompt_and_padding() {
    let root = tempfile::tempdir().unwrap();
    charter_model::write_tiny(root.path(), 5).unwrap();
    let device = select_device(DeviceChoice::Cpu, false).unwrap();
    let model = Decoder::open(root.path(), &device).unwrap();
    let a = tokens(&[257, 1, 2, 3], 2);
    let base = scalar(&sft_loss(&model, &[&a], 2.0).unwrap()).unwrap();
    assert!(base.is_finite() && base > 0.0);
    // Changing a prompt token changes the loss only through the answer's
    // conditioning; a row whose tokens are all prompt adds nothing, and
    // padding `a` to a longer row's width does not change its share.
    let prompt_only = tokens(&[257, 9, 9, 9, 9, 9], 6);
    let both = scalar(&sft_loss(&model, &[&a, &prompt_only], 2.0).unwrap()).unwrap();
    assert!((base - both).abs() < 1e-5, "{base} vs {both}");
    // The sum over two identical rows, over a denominator of 4, is the mean.
    let twice = scalar(&sft_loss(&model, &[&a, &a], 4.0).unwrap()).unwrap();
    assert!((base - twice).abs() < 1e-5, "{base} vs {twice}");
}

#[test]
fn answer_logps_match_the_full_logits() {
    // The loss runs the LM head on answer positions only; the sums must be
    // those of the whole logits, row by row, padding and all.
    let root = tempfile::tempdir().unwrap();
    charter_model::write_tiny(root.path(), 8).unwrap();
    let device = select_device(DeviceChoice::Cpu, true).unwrap();
    let model = Decoder::open(root.path(), &device).unwrap();
    let rows = [
        tokens(&[257, 72, 105, 10, 79, 75, 258], 4),
        tokens(&[257, 49, 61], 1),
        tokens(&[257, 5, 6, 7], 4),
    ];
    let refs: Vec<&Tokens> = rows.iter().collect();
    let got = charter_train::answer_logps(&model, &refs).unwrap();
    let got: Vec<f32> = got.into_data().convert::<f32>().try_to_vec().unwrap();
    let vocab = model.config().vocab_size;
    for (row, got) in rows.iter().zip(&got) {
        let logits = model.logits(&[&row.ids]).unwrap();
        let mut want = 0f64;
        for i in row.prompt_len - 1..row.ids.len() - 1 {
            let z = &logits[i * vocab..(i + 1) * vocab];
            let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let lse = f64::from(max)
                + z.iter()
                    .map(|&v| f64::from(v - max).exp())
                    .sum::<f64>()
                    .ln();
            want += f64::from(z[row.ids[i + 1] as usize]) - lse;
        }
        assert!(
            (f64::from(*got) - want).abs() < 1e-4,
            "{:?}: {got} vs {want}",
            row.ids
        );
    }
    // A batch without a single answer token sums to zero and still differentiates.
    let prompt_only = [tokens(&[257, 5, 6], 3)];
    let loss = sft_loss(&model, &[&prompt_only[0]], 1.0).unwrap();
    assert_eq!(scalar(&loss).unwrap(), 0.0);
    model.gradients(&loss.backward()).unwrap();
}

#[test]
fn gradients_match_finite_differences() {
    let root = tempfile::tempdir().unwrap();
    charter_model::write_tiny(root.path(), 9).unwrap();
    let device = select_device(DeviceChoice::Cpu, true).unwrap();
    let model = Decoder::open(root.path(), &device).unwrap();
    let rows = [
        tokens(&[257, 72, 105, 10, 79, 75, 258], 4),
        tokens(&[257, 49, 61, 50], 2),
    ];
    let rows: Vec<&Tokens> = rows.iter().collect();
    let loss = sft_loss(&model, &rows, 5.0).unwrap();
    let grads = model.gradients(&loss.backward()).unwrap();
    let weights = model.to_tensors().unwrap();
    let config = model.config().clone();
    let plain = select_device(DeviceChoice::Cpu, false).unwrap();
    let loss_with = |name: &str, index: usize, delta: f32| {
        let mut w = weights.clone();
        w.get_mut(name).unwrap().1[index] += delta;
        let m = Decoder::from_tensors(config.clone(), &w, &plain).unwrap();
        f64::from(scalar(&sft_loss(&m, &rows, 5.0).unwrap()).unwrap())
    };
    check_gradients(
        &grads,
        &[
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
            "model.layers.0.input_layernorm.weight",
            "model.norm.weight",
        ],
        loss_with,
    );
}

/// Max |Δlogit| between the trained burn model and the ONNX graph of the
/// directory it was written to.
fn export_delta(dir: &Path, trained: &Decoder) -> f32 {
    let c = trained.config();
    let dims = DecoderDims {
        layers: c.num_hidden_layers,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim(),
        vocab: c.vocab_size,
    };
    let prompt: &[u32] = &[257, 117, 115, 101, 114, 10, 104, 105];
    let mut ort = OrtDecoder::open(dir, dims, 1).unwrap();
    let (want, _) = ort.logits_all(&[prompt]).unwrap();
    let got = trained.logits(&[prompt]).unwrap();
    want.iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn sft_overfits_a_handful_of_rows_and_writes_a_usable_model() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("tiny");
    charter_model::write_tiny(&base, 11).unwrap();
    let table = revisions(
        &root.path().join("revisions.parquet"),
        &[
            ("How do I pick a lock?", "I can't help with that."),
            ("Say hi", "Hi there!"),
            ("1+1?", "2"),
            ("Name a colour", "Blue."),
        ],
    );
    let out = root.path().join("sl-cai");
    let mut losses = Vec::new();
    let outcome = train_sft(
        &job(&base, &out, quick(40, 1e-2)),
        &[table],
        &mut |m, total| {
            assert_eq!(total, 40);
            losses.push(m.loss);
        },
    )
    .unwrap();
    let (dir, report) = written(outcome);
    assert_eq!(report.steps, 40);
    assert_eq!(report.examples, 4);
    assert!(
        losses[39] < 0.1 * losses[0],
        "loss {} -> {}: {losses:?}",
        losses[0],
        losses[39]
    );
    // The output is a complete model directory whose graph is the trained model.
    assert_eq!(dir.path, out);
    let device = select_device(DeviceChoice::Cpu, false).unwrap();
    let trained = Decoder::open(&out, &device).unwrap();
    let delta = export_delta(&out, &trained);
    assert!(
        delta < 1e-4,
        "ONNX export of the trained model: max |Δlogit| {delta}"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("charter-train.json")).unwrap()).unwrap();
    assert_eq!(record["objective"], "sft");
    assert_eq!(record["inputs"][0]["name"], "revisions");
    assert!(out.join("metrics.parquet").is_file());
    assert!(!charter_train::checkpoint_dir(&out).exists());
}

#[test]
fn a_resumed_run_ends_with_the_same_weights() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("tiny");
    charter_model::write_tiny(&base, 4).unwrap();
    let rows: Vec<(String, String)> = (0..10)
        .map(|i| (format!("question {i}"), format!("answer number {i}.")))
        .collect();
    let rows: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let table = revisions(&root.path().join("revisions.parquet"), &rows);
    let mut settings = quick(3, 3e-3);
    settings.batch_size = 2;
    settings.grad_accum = 2;
    settings.checkpoint_every = 2;
    settings.warmup_steps = 2;
    settings.schedule = charter_train::Schedule::Cosine;

    let whole = root.path().join("whole");
    written(
        train_sft(
            &job(&base, &whole, settings.clone()),
            std::slice::from_ref(&table),
            &mut no_progress(),
        )
        .unwrap(),
    );

    // Interrupt after step 5 (the signal handler's flag), then resume.
    let split = root.path().join("split");
    let stop = AtomicBool::new(false);
    let mut first = job(&base, &split, settings.clone());
    first.interrupt = &stop;
    let outcome = train_sft(&first, std::slice::from_ref(&table), &mut |m, _| {
        if m.step == 5 {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    match outcome {
        Outcome::Interrupted { step, checkpoint } => {
            assert_eq!(step, 5);
            assert!(checkpoint.join("state.json").is_file());
        }
        Outcome::Written { .. } | Outcome::UpToDate { .. } => panic!("the run was not interrupted"),
    }
    assert!(!split.exists(), "an interrupted run must not look finished");
    // Without --resume the checkpoint is not silently overwritten.
    let err = train_sft(
        &job(&base, &split, settings.clone()),
        std::slice::from_ref(&table),
        &mut no_progress(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("--resume"), "{err}");
    let mut again = job(&base, &split, settings);
    again.resume = true;
    let mut steps = Vec::new();
    let (_, report) = written(train_sft(&again, &[table], &mut |m, _| steps.push(m.step)).unwrap());
    assert_eq!(steps, vec![6, 7, 8, 9]);
    assert_eq!(report.steps, 9);
    let a = std::fs::read(whole.join("model.safetensors")).unwrap();
    let b = std::fs::read(split.join("model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed weights differ from the uninterrupted run's"
    );
}

fn preference_rows(n: usize) -> Vec<(String, String, String, f64)> {
    (0..n)
        .map(|i| {
            let good = format!("Sure, happy to help with item {i}.");
            let bad = format!("No. Go away, item {i}!!");
            let p = [0.9, 0.8, 0.95, 0.7][i % 4];
            match i % 2 {
                0 => (format!("Help with {i}?"), good, bad, p),
                _ => (format!("Help with {i}?"), bad, good, 1.0 - p),
            }
        })
        .collect()
}

#[test]
fn dpo_starts_at_ln_2_and_learns_the_labels() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("tiny");
    charter_model::write_tiny(&base, 2).unwrap();
    let table = labels(&root.path().join("labels.parquet"), &preference_rows(8));
    let out = root.path().join("rl-cai");
    let cache = root.path().join("ref-cache");
    let mut rows = Vec::new();
    let settings = quick(10, 5e-3);
    let (_, report) = written(
        train_dpo(
            &job(&base, &out, settings.clone()),
            &table,
            0.1,
            &cache,
            &mut |m, _| rows.push(m.clone()),
        )
        .unwrap(),
    );
    // Policy = reference at the first step: every pair costs ln 2.
    assert!(
        (rows[0].loss - std::f64::consts::LN_2).abs() < 1e-5,
        "{}",
        rows[0].loss
    );
    assert!(rows.last().unwrap().loss < 0.5, "{rows:?}");
    assert_eq!(rows.last().unwrap().accuracy, Some(1.0));
    assert_eq!(report.objective, "dpo");
    // The reference log-probs were cached, keyed by (model, table).
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
}

#[test]
fn pm_separates_synthetic_labels_on_held_out_pairs() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("tiny");
    charter_model::write_tiny(&base, 6).unwrap();
    let table = labels(&root.path().join("labels.parquet"), &preference_rows(48));
    let out = root.path().join("pm");
    let mut settings = quick(6, 3e-3);
    settings.batch_size = 8;
    let (_, report) = written(
        train_pm(
            &job(&base, &out, settings),
            &table,
            0.25,
            &mut no_progress(),
        )
        .unwrap(),
    );
    let held = report.held_out.expect("a held-out report");
    assert!(held.pairs >= 6, "{held:?}");
    assert!(held.accuracy >= 0.9, "{held:?}");
    assert!(held.loss < std::f64::consts::LN_2, "{held:?}");
    assert!(out.join("score.safetensors").is_file());
    let device = select_device(DeviceChoice::Cpu, false).unwrap();
    let pm = charter_train::open_preference_model(&out, &device).unwrap();
    assert_eq!(pm.score_values().unwrap().len(), 64);
}

#[test]
fn the_wrong_table_is_named() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("tiny");
    charter_model::write_tiny(&base, 2).unwrap();
    let table = labels(&root.path().join("labels.parquet"), &preference_rows(2));
    let out = root.path().join("out");
    let err = train_sft(
        &job(&base, &out, quick(1, 1e-3)),
        &[table],
        &mut no_progress(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("labels.parquet") && err.contains("`labels` table"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_gradient_step_uses_every_parameter() {
    // Every weight gets a gradient from the SFT loss (nothing is detached).
    let root = tempfile::tempdir().unwrap();
    charter_model::write_tiny(root.path(), 3).unwrap();
    let device = select_device(DeviceChoice::Cpu, true).unwrap();
    let model = Decoder::open(root.path(), &device).unwrap();
    let row = tokens(&[257, 5, 6, 7, 8], 2);
    let loss = sft_loss(&model, &[&row], 3.0).unwrap();
    let grads = loss.backward();
    let named = model.gradients(&grads).unwrap();
    assert_eq!(named.len(), model.to_tensors().unwrap().len());
    let params = GradientsParams::from_grads(grads, &model);
    assert_eq!(params.len(), named.len());
}

#[test]
fn the_reference_pass_stops_on_interrupt_and_resumes_from_its_partial_cache() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("tiny");
    charter_model::write_tiny(&base, 2).unwrap();
    let table = labels(&root.path().join("labels.parquet"), &preference_rows(6));
    let cache = root.path().join("ref-cache");
    let mut settings = quick(1, 1e-3);
    settings.batch_size = 2;

    // Interrupted before the first batch: nothing trained, nothing written.
    let stop = AtomicBool::new(true);
    let out = root.path().join("a");
    let mut first = job(&base, &out, settings.clone());
    first.interrupt = &stop;
    match train_dpo(&first, &table, 0.1, &cache, &mut no_progress()).unwrap() {
        Outcome::Interrupted { step, .. } => assert_eq!(step, 0),
        Outcome::Written { .. } | Outcome::UpToDate { .. } => panic!("not interrupted"),
    }
    assert!(!out.exists());

    written(
        train_dpo(
            &job(&base, &out, settings.clone()),
            &table,
            0.1,
            &cache,
            &mut no_progress(),
        )
        .unwrap(),
    );
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let complete = files[0].clone();
    let full: std::collections::BTreeMap<String, [f64; 2]> =
        serde_json::from_slice(&std::fs::read(&complete).unwrap()).unwrap();
    assert_eq!(full.len(), 6);

    // A pass killed after some pairs left a partial cache: the next run
    // computes only the pairs it lacks.
    let mut partial = full.clone();
    let dropped = partial.keys().next().unwrap().clone();
    partial.remove(&dropped);
    // A marker on a kept pair shows it is reused, not computed again.
    let kept = partial.keys().last().unwrap().clone();
    partial.insert(kept.clone(), [-1.0, -2.0]);
    let partial_path = complete.with_extension("partial.json");
    std::fs::write(&partial_path, serde_json::to_string(&partial).unwrap()).unwrap();
    std::fs::remove_file(&complete).unwrap();
    written(
        train_dpo(
            &job(&base, &root.path().join("b"), settings),
            &table,
            0.1,
            &cache,
            &mut no_progress(),
        )
        .unwrap(),
    );
    assert!(!partial_path.exists());
    let again: std::collections::BTreeMap<String, [f64; 2]> =
        serde_json::from_slice(&std::fs::read(&complete).unwrap()).unwrap();
    assert_eq!(
        again.keys().collect::<Vec<_>>(),
        full.keys().collect::<Vec<_>>()
    );
    assert_eq!(again[&kept], [-1.0, -2.0]);
    let ([a, b], [x, y]) = (full[&dropped], again[&dropped]);
    assert!((a - x).abs() < 1e-4 && (b - y).abs() < 1e-4, "{dropped}");
}
