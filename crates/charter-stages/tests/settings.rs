//! The stages' settings structs: what a build key is made of at the
//! defaults (pinned: a change here changes every cached table's key and
//! must come with a stage version bump), how a build file's fields read
//! into them, and the checks that name a setting.

use charter_stages::{
    CritiqueSettings, Error, ExportFormat, ExportSettings, GenSettings, LabelSettings,
    PolicyEvalSettings, RespondSettings,
};
use charter_table::canonical_json;

#[test]
fn the_recorded_settings_of_the_defaults_are_pinned() {
    let generation = r#""batch_size":32,"max_new_tokens":256,"seed":0,"stop":[],"system":null,"temperature":0.699999988079071,"top_k":0,"top_p":0.949999988079071,"window":64"#;
    assert_eq!(
        canonical_json(&GenSettings::default().canonical()),
        format!("{{{generation}}}")
    );
    assert_eq!(
        canonical_json(&RespondSettings::default().canonical()),
        format!(
            "{{{}}}",
            generation
                .replace(r#""max_new_tokens""#, r#""limit":null,"max_new_tokens""#)
                .replace(r#""seed""#, r#""samples":1,"seed""#)
        )
    );
    assert_eq!(
        canonical_json(&LabelSettings::default().canonical()),
        format!(
            "{{{}}}",
            generation
                .replace(
                    r#""max_new_tokens""#,
                    r#""clamp":[0.4,0.6],"cot":false,"max_new_tokens""#
                )
                .replace(r#""system""#, r#""swap":true,"system""#)
        )
    );
}

#[test]
fn the_repetition_settings_are_recorded_only_when_on() {
    let default = GenSettings::default().canonical();
    for key in ["repetition_penalty", "no_repeat_ngram_size"] {
        assert!(default.get(key).is_none(), "{key} in {default}");
        assert!(RespondSettings::default().canonical().get(key).is_none());
    }
    let on: GenSettings =
        toml::from_str("repetition_penalty = 1.5\nno_repeat_ngram_size = 3").unwrap();
    assert_eq!(on.repetition_penalty, 1.5);
    assert_eq!(on.no_repeat_ngram_size, 3);
    let sampling = on.sampling();
    assert_eq!(
        (sampling.repetition_penalty, sampling.no_repeat_ngram_size),
        (1.5, 3)
    );
    let recorded = on.canonical();
    assert_eq!(recorded["repetition_penalty"], 1.5);
    assert_eq!(recorded["no_repeat_ngram_size"], 3);
    // Each on its own changes the record, and with it the build key.
    let penalty_only = GenSettings {
        repetition_penalty: 1.1,
        ..GenSettings::default()
    };
    assert!(
        penalty_only
            .canonical()
            .get("no_repeat_ngram_size")
            .is_none()
    );
    assert_ne!(
        canonical_json(&penalty_only.canonical()),
        canonical_json(&default)
    );
    let ngram_only = GenSettings {
        no_repeat_ngram_size: 4,
        ..GenSettings::default()
    };
    assert!(ngram_only.canonical().get("repetition_penalty").is_none());
    assert_eq!(ngram_only.canonical()["no_repeat_ngram_size"], 4);
}

#[test]
fn build_file_fields_read_into_the_settings_and_unknown_ones_are_refused() {
    let respond: RespondSettings = toml::from_str("samples = 2\nlimit = 5").unwrap();
    assert_eq!((respond.samples, respond.limit), (2, Some(5)));
    assert_eq!(respond.generation, GenSettings::default());
    let generation: GenSettings = toml::from_str("temperature = 0.0\nstop = [\"\\n\"]").unwrap();
    assert_eq!(generation.temperature, 0.0);
    assert_eq!(generation.stop, ["\n"]);
    assert_eq!(generation.top_p, GenSettings::DEFAULT.top_p);
    let label: LabelSettings = toml::from_str("swap = false\nclamp = [0.3, 0.7]").unwrap();
    assert_eq!((label.swap, label.clamp), (false, (0.3, 0.7)));
    let export: ExportSettings = toml::from_str("format = \"sft\"").unwrap();
    assert_eq!(export.format, Some(ExportFormat::Sft));
    let eval: PolicyEvalSettings = toml::from_str("").unwrap();
    assert_eq!(eval, PolicyEvalSettings::default());

    let e = toml::from_str::<RespondSettings>("temperature = 1.0").unwrap_err();
    assert!(e.message().contains("unknown field `temperature`"), "{e}");
    let e = toml::from_str::<GenSettings>("seed = 3").unwrap_err();
    assert!(e.message().contains("unknown field `seed`"), "{e}");
}

#[test]
fn checks_name_the_setting() {
    let field = |e: Error| match e {
        Error::InvalidSetting { field, .. } => field,
        other => panic!("{other}"),
    };
    let bad_samples = RespondSettings {
        samples: 0,
        ..RespondSettings::default()
    };
    assert_eq!(field(bad_samples.validate().unwrap_err()), "samples");
    let bad_round = CritiqueSettings {
        round: Some(0),
        ..CritiqueSettings::default()
    };
    assert_eq!(field(bad_round.validate().unwrap_err()), "round");
    let bad_clamp = LabelSettings {
        clamp: (0.6, 0.4),
        ..LabelSettings::default()
    };
    assert_eq!(field(bad_clamp.validate().unwrap_err()), "clamp");
    let mut bad_top_p = PolicyEvalSettings::default();
    bad_top_p.generation.top_p = 1.5;
    assert_eq!(field(bad_top_p.validate().unwrap_err()), "top_p");
    for penalty in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let bad = GenSettings {
            repetition_penalty: penalty,
            ..GenSettings::default()
        };
        assert_eq!(field(bad.validate().unwrap_err()), "repetition_penalty");
    }
    let fine = GenSettings {
        repetition_penalty: 0.8,
        no_repeat_ngram_size: 1,
        ..GenSettings::default()
    };
    assert!(fine.validate().is_ok());
}
