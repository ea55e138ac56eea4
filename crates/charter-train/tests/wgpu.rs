//! burn's wgpu backend (the `wgpu` feature): the same forward pass and the
//! same training run as on the CPU. On a machine without a GPU this runs on
//! a software Vulkan driver (Mesa's lavapipe), which CI installs.

#![cfg(feature = "wgpu")]
#![allow(clippy::unwrap_used)]

mod common;

use charter_train::{Decoder, DeviceChoice, Outcome, select, select_device, train_sft};
use common::{job, quick, revisions};

#[test]
fn wgpu_runs_the_forward_pass_and_training_as_the_cpu_does() {
    let chosen = select(DeviceChoice::Wgpu, false).unwrap();
    assert!(
        chosen.description.starts_with("wgpu ("),
        "{}",
        chosen.description
    );
    eprintln!("device: {}", chosen.description);

    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("tiny");
    charter_model::write_tiny(&base, 3).unwrap();
    let ids: &[u32] = &[257, 72, 105, 10, 79, 75, 258, 40];
    let cpu = select_device(DeviceChoice::Cpu, false).unwrap();
    let want = Decoder::open(&base, &cpu).unwrap().logits(&[ids]).unwrap();
    let got = Decoder::open(&base, &chosen.device)
        .unwrap()
        .logits(&[ids])
        .unwrap();
    let delta = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(delta < 1e-3, "max |Δlogit| wgpu vs cpu: {delta}");

    // Three SFT steps: the same losses on both devices.
    let table = revisions(
        &root.path().join("revisions.parquet"),
        &[
            ("Say hi", "Hi there!"),
            ("1+1?", "2"),
            ("Name a colour", "Blue."),
        ],
    );
    let run = |device: DeviceChoice, name: &str| -> (Vec<f64>, String) {
        let out = root.path().join(name);
        let mut job = job(&base, &out, quick(3, 1e-2));
        job.device = device;
        let mut losses = Vec::new();
        let outcome = train_sft(&job, std::slice::from_ref(&table), &mut |m, _| {
            losses.push(m.loss);
        })
        .unwrap();
        let Outcome::Written { report, .. } = outcome else {
            panic!("not written")
        };
        (losses, report.device)
    };
    let (on_cpu, cpu_name) = run(DeviceChoice::Cpu, "cpu");
    let (on_wgpu, wgpu_name) = run(DeviceChoice::Wgpu, "wgpu");
    assert!(cpu_name.starts_with("cpu"), "{cpu_name}");
    assert!(wgpu_name.starts_with("wgpu ("), "{wgpu_name}");
    assert_eq!(on_cpu.len(), 3);
    for (a, b) in on_cpu.iter().zip(&on_wgpu) {
        assert!(
            (a - b).abs() < 1e-3 * a.abs().max(1.0),
            "{on_cpu:?} vs {on_wgpu:?}"
        );
    }
}
