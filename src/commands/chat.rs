//! `charter chat`: one message, one answer, for a quick look at a model;
//! with `--guard`, behind the classifiers a deployment would run.

use std::io::Write;

use anyhow::Result;
use charter_gen::{Completion, GenerateOptions, Request};
use charter_model::{Message, TextTokenizer};
use charter_stages::{Model, REFUSAL, StopStrings, StreamGuard, Watch};

use crate::cli::ChatArgs;

pub(crate) fn run(args: ChatArgs) -> Result<()> {
    let g = &args.generation;
    g.validate()?;
    let mut model = Model::open(&args.model, g.threads)?;
    let mut messages = Vec::new();
    if let Some(system) = &g.system {
        messages.push(Message {
            role: "system".into(),
            content: system.clone(),
        });
    }
    messages.push(Message {
        role: "user".into(),
        content: args.message.clone(),
    });
    let prompt = model.encode_conversation(&messages)?;
    let mut guards = super::guard::Guards::open(&args.guard, &args.model)?;
    // A probe output guard runs inside the engine, before every token.
    let readout = guards.as_ref().and_then(|g| g.readout());
    let probed = readout.is_some();
    let options = GenerateOptions {
        sampling: g.sampling(),
        max_new_tokens: g.max_new_tokens as usize,
        stop_ids: model.stop_ids.clone(),
        batch_size: 1,
        max_context: model.max_context(),
        share_prefix: true,
        logprobs: false,
        readout,
    };
    let stop = StopStrings::new(&g.stop);
    if let Some(g) = guards.as_mut()
        && g.blocks_prompt(&prompt)?
    {
        println!("{REFUSAL}");
        return Ok(());
    }
    let mut watch = guards
        .as_mut()
        .filter(|_| !probed)
        .map(|g| Watch::new(g as &mut dyn StreamGuard, 1));
    // With an output guard the answer streams as checks clear it (a
    // probe's engine stops before a token it flags: every token it hands
    // over is cleared).
    let mut shown = String::new();
    let mut out = std::io::stdout().lock();
    let mut answer: Option<Completion> = None;
    let Model {
        engine, tokenizer, ..
    } = &mut model;
    let request = Request {
        prompt: prompt.clone(),
        seed: g.seed,
    };
    engine.generate(
        std::slice::from_ref(&request),
        &options,
        &mut |_, tokens| {
            let Some(w) = watch.as_mut() else {
                if probed {
                    show(&mut out, &mut shown, tokenizer, &stop, tokens);
                }
                return stop.hit(tokenizer, tokens);
            };
            let flagged = w.check(0, &prompt, tokens);
            show(
                &mut out,
                &mut shown,
                tokenizer,
                &stop,
                &tokens[..w.cleared(0)],
            );
            flagged || stop.hit(tokenizer, tokens)
        },
        &mut |c| {
            answer = Some(c);
            Ok::<(), charter_gen::Error>(())
        },
    )?;
    let answer = answer.ok_or_else(|| anyhow::anyhow!("the engine returned no answer"))?;
    anyhow::ensure!(
        answer.finish != charter_gen::FinishReason::Context,
        "the message does not fit the model's context window"
    );
    let tokens = match answer.tokens.split_last() {
        Some((last, rest)) if model.stop_ids.contains(last) => rest,
        _ => &answer.tokens[..],
    };
    let flagged = match watch.as_mut() {
        // The probe stopped the row itself, before the token it flagged.
        _ if probed => answer.finish == charter_gen::FinishReason::Flagged,
        Some(w) => w.finish(0, &prompt, tokens)?.is_some(),
        None => {
            let text = model.decode(&answer.tokens)?;
            println!("{}", stop.truncate(&text).0);
            return Ok(());
        }
    };
    if flagged {
        // The stream stops where it was cleared; nothing after the flag shows.
        if !shown.is_empty() {
            writeln!(out)?;
        }
        writeln!(out, "{REFUSAL}")?;
    } else {
        show(&mut out, &mut shown, &model.tokenizer, &stop, tokens);
        writeln!(out)?;
    }
    Ok(())
}

/// Prints what `cleared` decodes to beyond what is `shown` already (up to
/// a stop string, and short of a character whose bytes are still coming).
fn show(
    out: &mut impl Write,
    shown: &mut String,
    tokenizer: &TextTokenizer,
    stop: &StopStrings,
    cleared: &[u32],
) {
    let Ok(text) = tokenizer.decode(cleared, true) else {
        return;
    };
    let text = stop.truncate(&text).0.trim_end_matches('\u{FFFD}');
    if let Some(new) = text.strip_prefix(shown.as_str())
        && !new.is_empty()
    {
        let _ = write!(out, "{new}");
        let _ = out.flush();
        shown.push_str(new);
    }
}
