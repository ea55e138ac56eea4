//! `charter chat`: one message, one answer, for a quick look at a model.

use anyhow::Result;
use charter_gen::{Completion, GenerateOptions, Request};
use charter_model::Message;
use charter_stages::{Model, StopStrings};

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
    let options = GenerateOptions {
        sampling: g.sampling(),
        max_new_tokens: g.max_new_tokens as usize,
        stop_ids: model.stop_ids.clone(),
        batch_size: 1,
        max_context: model.max_context(),
    };
    let stop = StopStrings::new(&g.stop);
    let mut answer: Option<Completion> = None;
    let Model {
        engine, tokenizer, ..
    } = &mut model;
    engine.generate(
        &[Request {
            prompt,
            seed: g.seed,
        }],
        &options,
        &mut |_, tokens| stop.hit(tokenizer, tokens),
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
    let text = model.decode(&answer.tokens)?;
    println!("{}", stop.truncate(&text).0);
    Ok(())
}
