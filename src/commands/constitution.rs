//! `charter constitution check|import|show`: constitutions.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use charter_stages::Constitution;
use charter_stages::classifier::{ClassifierConstitution, Verdict, is_classifier_constitution};
use charter_stages::constitution::{ImportOptions, import_files};

use crate::cli::{
    ConstitutionCheckArgs, ConstitutionCommand, ConstitutionImportArgs, ConstitutionShowArgs,
};

pub(crate) fn run(command: ConstitutionCommand, quiet: bool) -> Result<()> {
    match command {
        ConstitutionCommand::Check(args) => check(args),
        ConstitutionCommand::Import(args) => import(args, quiet),
        ConstitutionCommand::Show(args) => show(args),
    }
}

/// Whether the file declares `kind = "classifier"` (a file that cannot be
/// read is left to the loader to report).
fn is_classifier(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| is_classifier_constitution(&t))
}

fn check_classifier(args: &ConstitutionCheckArgs) -> Result<()> {
    let c = ClassifierConstitution::load(&args.file)?;
    let count = |v| c.of(v).count();
    let (harmful, harmless) = (count(Verdict::Harmful), count(Verdict::Harmless));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "path": args.file.display().to_string(),
                "kind": "classifier",
                "name": c.name,
                "version": c.version,
                "description": c.description,
                "harmful_categories": harmful,
                "harmless_categories": harmless,
                "examples": c.categories.iter().map(|c| c.examples.len()).sum::<usize>(),
                "hash": c.hash(),
            }))?
        );
        return Ok(());
    }
    let ids = |v| {
        c.of(v)
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("{:<14}{} (version {})", "classifier", c.name, c.version);
    println!("{:<14}{}", "file", args.file.display());
    println!("{:<14}{harmful}: {}", "harmful", ids(Verdict::Harmful));
    println!("{:<14}{harmless}: {}", "harmless", ids(Verdict::Harmless));
    println!("{:<14}{}", "hash", c.hash());
    Ok(())
}

fn check(args: ConstitutionCheckArgs) -> Result<()> {
    if is_classifier(&args.file) {
        return check_classifier(&args);
    }
    let c = Constitution::load(&args.file)?;
    let chars = c.few_shot_chars();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "path": args.file.display().to_string(),
                "name": c.name,
                "version": c.version,
                "description": c.description,
                "critique_principles": c.critique_principles.len(),
                "preference_principles": c.preference_principles.len(),
                "critique_examples": c.critique_examples.len(),
                "label_examples": c.label_examples.len(),
                "few_shot_chars": chars,
                "hash": c.hash(),
            }))?
        );
        return Ok(());
    }
    println!("{:<14}{} (version {})", "constitution", c.name, c.version);
    println!("{:<14}{}", "file", args.file.display());
    println!(
        "{:<14}{} principles, {} examples",
        "critique",
        c.critique_principles.len(),
        c.critique_examples.len()
    );
    println!(
        "{:<14}{} principles, {} examples",
        "preference",
        c.preference_principles.len(),
        c.label_examples.len()
    );
    println!(
        "{:<14}~{} tokens ({chars} characters)",
        "few-shot",
        chars / 4
    );
    println!("{:<14}{}", "hash", c.hash());
    Ok(())
}

fn import(args: ConstitutionImportArgs, quiet: bool) -> Result<()> {
    let to_stdout = args.output == "-";
    let name = match &args.name {
        Some(name) => name.clone(),
        // The output's stem names it, as constitutions/harmless.toml is "harmless".
        None => stem(if to_stdout {
            &args.source
        } else {
            Path::new(&args.output)
        }),
    };
    let imported = import_files(
        &args.source,
        args.preferences.as_deref(),
        &ImportOptions::new(name),
    )?;
    for warning in &imported.warnings {
        eprintln!("warning: {warning}");
    }
    let c = &imported.constitution;
    if c.preference_principles.is_empty() && args.preferences.is_none() {
        eprintln!(
            "hint: --preferences FILE adds preference principles from a JSON list of questions"
        );
    }
    let file_name = args.source.file_name().map_or_else(
        || args.source.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let mut text = format!(
        "# Imported by `charter constitution import` from {file_name} ({}).\n\
         # The templates are charter's defaults. `charter constitution check` validates edits.\n\n{}",
        imported.layout,
        c.to_toml()
    );
    if c.preference_principles.is_empty() {
        text.push_str(
            "\n# Add preference principles before labelling, one table each:\n\
             # [[preference_principles]]\n\
             # id = \"kinder\"\n\
             # question = \"Which response is kinder?\"\n",
        );
    }
    if to_stdout {
        std::io::stdout().write_all(text.as_bytes())?;
    } else {
        let out = Path::new(&args.output);
        charter_table::write_atomic(out, text.as_bytes())
            .with_context(|| format!("{}: cannot write", out.display()))?;
    }
    if !quiet {
        eprintln!(
            "imported {} critique and {} preference principles, {} examples ({}) into {} (hash {})",
            c.critique_principles.len(),
            c.preference_principles.len(),
            c.critique_examples.len(),
            imported.layout,
            if to_stdout { "stdout" } else { &args.output },
            &c.hash()[..16]
        );
    }
    Ok(())
}

fn show(args: ConstitutionShowArgs) -> Result<()> {
    let text = if is_classifier(&args.file) {
        ClassifierConstitution::load(&args.file)?.to_toml()
    } else {
        Constitution::load(&args.file)?.to_toml()
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn stem(path: &Path) -> String {
    path.file_stem().map_or_else(
        || "imported".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    )
}
