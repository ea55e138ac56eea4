//! Build-file parsing and planning: order, paths, overrides, located errors.

use super::*;

const BASE: &str = r#"
[build]
model = "m"
constitution = "c.toml"
out = "o"
[defaults]
max_new_tokens = 8
[[stage]]
name = "prompts"
kind = "table"
path = "p.parquet"
"#;

fn parse(extra: &str) -> Result<BuildPlan> {
    BuildPlan::from_toml(&format!("{BASE}{extra}"), Path::new("dir/b.toml"))
}

fn err(extra: &str) -> String {
    parse(extra).unwrap_err().to_string()
}

#[test]
fn stages_run_after_their_inputs_with_resolved_paths_and_overrides() {
    let plan = parse(
        r#"
[[stage]]
name = "crit"
kind = "critique"
input = "resp"
temperature = 0
[[stage]]
name = "resp"
kind = "respond"
input = "prompts"
samples = 2
[[stage]]
name = "sft"
kind = "export"
input = "rev"
[[stage]]
name = "rev"
kind = "revise"
input = "crit"
"#,
    )
    .unwrap();
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["prompts", "resp", "crit", "rev", "sft"]);
    assert_eq!(plan.out, Path::new("dir/o"));
    let crit = plan.stage("crit").unwrap();
    assert_eq!(crit.output, Path::new("dir/o/crit.parquet"));
    assert_eq!(crit.model.as_deref(), Some(Path::new("dir/m")));
    let StageOp::Critique { settings, .. } = &crit.op else {
        panic!("critique op")
    };
    assert_eq!(settings.sampling.temperature, 0.0);
    assert_eq!(settings.max_new_tokens, 8);
    let sft = plan.stage("sft").unwrap();
    assert_eq!(sft.output, Path::new("dir/o/sft.jsonl"));
    assert!(matches!(
        sft.op,
        StageOp::Export {
            format: ExportFormat::Sft,
            chat: false
        }
    ));
}

#[test]
fn errors_name_the_file_stage_and_field() {
    let e =
        err("[[stage]]\nname = \"r\"\nkind = \"respond\"\ninput = \"prompts\"\ntempurature = 1\n");
    assert!(
        e.contains("dir/b.toml") && e.contains("stage `r`") && e.contains("tempurature"),
        "{e}"
    );
    let e = err(
        "[[stage]]\nname = \"r\"\nkind = \"respond\"\ninput = \"prompts\"\nmax_new_tokens = \"x\"\n",
    );
    assert!(
        e.contains("stage `r`") && e.contains("field `max_new_tokens`"),
        "{e}"
    );
    let e = err("[[stage]]\nname = \"r\"\nkind = \"respond\"\ninput = \"nope\"\n");
    assert!(
        e.starts_with("dir/b.toml:15: stage `r`, field `input`") && e.contains("`nope`"),
        "{e}"
    );
    let e = err("[[stage]]\nname = \"r\"\nkind = \"respond\"\ninput = \"prompts\"\nround = 2\n");
    assert!(e.contains("field `round`") && e.contains("respond"), "{e}");
    let e = err("[[stage]]\nname = \"r\"\nkind = \"respond\"\ninput = \"prompts\"\ntop_p = 2.0\n");
    assert!(e.contains("stage `r`, field `top_p`"), "{e}");
    let e = err(
        "[[stage]]\nname = \"r\"\nkind = \"critique\"\ninput = \"prompts\"\n[[stage]]\nname = \"r\"\nkind = \"pair\"\ninput = \"prompts\"\n",
    );
    assert!(e.contains("two stages"), "{e}");
    let e = err("[[stage]]\nname = \"x\"\nkind = \"frobnicate\"\n");
    assert!(e.contains("stage `x`") && e.contains("field `kind`"), "{e}");
}

#[test]
fn cycles_are_errors() {
    let e = err(r#"
[[stage]]
name = "a"
kind = "critique"
input = "b"
[[stage]]
name = "b"
kind = "revise"
input = "a"
"#);
    assert!(
        e.contains("cycle") && e.contains("`a`") && e.contains("`b`"),
        "{e}"
    );
}
