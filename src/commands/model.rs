//! `charter model import|info|tiny`: model directories.

use anyhow::{Context, Result, bail};
use charter_model::{ModelDir, Replace, import_gguf, import_hf, write_tiny_with};

use crate::cli::{ModelImportArgs, ModelInfoArgs, ModelTinyArgs};

pub(crate) fn import(args: ModelImportArgs, quiet: bool) -> Result<()> {
    let dtype = args.dtype;
    let replace = replace(args.force);
    let progress = crate::progress::spinner(quiet);
    progress.set_message(format!("importing {}", args.source.display()));
    // A directory is a HuggingFace checkpoint, a file a GGUF.
    let dir = if args.source.is_dir() {
        import_hf(&args.source, &args.output, dtype, replace)
    } else if args.source.is_file() {
        import_gguf(&args.source, &args.output, dtype, replace)
    } else {
        bail!(
            "{}: no such file or directory: give a GGUF file or a HuggingFace checkpoint directory",
            args.source.display()
        );
    }
    .map_err(hint_force)
    .with_context(|| format!("cannot import {}", args.source.display()))?;
    progress.finish_and_clear();
    if !quiet {
        eprintln!(
            "imported {} ({} layers, {} dtype) into {} (model hash {})",
            dir.provenance.name,
            dir.config.num_hidden_layers,
            dir.provenance.dtype,
            dir.path.display(),
            &dir.provenance.content_hash[..16]
        );
    }
    Ok(())
}

pub(crate) fn info(args: ModelInfoArgs) -> Result<()> {
    let dir = ModelDir::open(&args.dir)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "path": dir.path.display().to_string(),
                "config": dir.config,
                "provenance": dir.provenance,
                "eos_token": dir.tokenizer_config.eos_token,
                "context": dir.tokenizer_config.model_max_length,
            }))?
        );
        return Ok(());
    }
    let c = &dir.config;
    let p = &dir.provenance;
    println!("{:<14}{}", "model", p.name);
    println!("{:<14}{}", "directory", dir.path.display());
    println!(
        "{:<14}{} (ONNX graph, version {})",
        "weights", p.dtype, p.graph_version
    );
    println!("{:<14}{} (blake3 {})", "source", p.source, p.source_hash);
    println!("{:<14}{}", "model hash", p.content_hash);
    println!(
        "{:<14}{}: {} layers, hidden {}, FFN {}, {} heads / {} KV heads (head size {}), vocab {}, context {}",
        "architecture",
        c.model_type,
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim(),
        c.vocab_size,
        c.max_position_embeddings
    );
    println!(
        "{:<14}rope base {}, RMSNorm eps {}, tied head {}",
        "", c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings
    );
    Ok(())
}

pub(crate) fn tiny(args: ModelTinyArgs, quiet: bool) -> Result<()> {
    let dir = write_tiny_with(&args.output, args.seed, replace(args.force))
        .map_err(hint_force)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if !quiet {
        eprintln!(
            "wrote the tiny model to {} (model hash {})",
            dir.path.display(),
            &dir.provenance.content_hash[..16]
        );
    }
    Ok(())
}

fn replace(force: bool) -> Replace {
    if force {
        Replace::ModelDir
    } else {
        Replace::Nothing
    }
}

/// Says how to replace a model directory when that is what stopped a write.
fn hint_force(err: charter_model::Error) -> anyhow::Error {
    match err {
        charter_model::Error::ModelExists { .. } => {
            anyhow::anyhow!("{err}; pass --force to replace it")
        }
        err => err.into(),
    }
}
