//! A model ready to generate: its directory, tokenizer, chat template and engine.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use charter_gen::{Decoder, DecoderDims, Engine};
use charter_model::{ChatTemplate, Message, ModelDir, TextTokenizer, encode_chat};

use crate::error::Result;

/// A loaded model.
pub struct Model {
    /// The model directory.
    pub dir: ModelDir,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Its chat template.
    pub template: ChatTemplate,
    /// The generation engine.
    pub engine: Engine,
    /// Tokens that end a turn.
    pub stop_ids: Vec<u32>,
    /// Once set (by a signal handler), a stage stops after committing the
    /// window it is generating: see [`Model::stop_when`].
    pub stop: &'static AtomicBool,
}

static NEVER: AtomicBool = AtomicBool::new(false);

impl Model {
    /// Opens a model directory with `threads` intra-op threads.
    pub fn open(path: &Path, threads: usize) -> Result<Self> {
        let dir = ModelDir::open(path)?;
        let tokenizer = TextTokenizer::from_file(dir.tokenizer_path())?;
        let template = ChatTemplate::new(&dir.tokenizer_config.chat_template)?;
        let c = &dir.config;
        let dims = DecoderDims {
            layers: c.num_hidden_layers,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim(),
            vocab: c.vocab_size,
        };
        let engine = Engine::new(Decoder::open(path, dims, threads)?);
        let mut stop_ids: Vec<u32> = c.eos_token_id.into_iter().collect();
        let eos = dir
            .tokenizer_config
            .eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_id(t));
        if let Some(eos) = eos.filter(|e| !stop_ids.contains(e)) {
            stop_ids.push(eos);
        }
        Ok(Model {
            dir,
            tokenizer,
            template,
            engine,
            stop_ids,
            stop: &NEVER,
        })
    }

    /// Makes the stages running this model stop after the window they are
    /// generating is committed, once `flag` is set: they return
    /// [`Error::Stopped`](crate::Error::Stopped), and a rerun resumes after it.
    pub fn stop_when(&mut self, flag: &'static AtomicBool) {
        self.stop = flag;
    }

    /// [`Error::Stopped`](crate::Error::Stopped) when asked to stop, after
    /// `rows` rows are committed.
    pub(crate) fn check_stop(&self, rows: u64) -> Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(crate::Error::Stopped { rows });
        }
        Ok(())
    }

    /// The token ids of a conversation rendered for generation: the
    /// template's own text with control tokens, the messages' text without,
    /// so text inside a message can never forge a turn.
    ///
    /// Text that cannot fit the context window whatever its tokens (more
    /// bytes than twice the window times the most bytes a token stands for)
    /// is not tokenised: that would cost memory in proportion to the text
    /// (gigabytes for a prompt of tens of megabytes). It gets a placeholder
    /// of the window's length, which the engine finishes as `context` like
    /// any other prompt that does not fit.
    pub fn encode_conversation(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
        let limit = self
            .max_context()
            .saturating_mul(2 * self.tokenizer.max_token_bytes());
        if bytes > limit {
            return Ok(vec![0; self.max_context()]);
        }
        Ok(encode_chat(
            &self.tokenizer,
            &self.template,
            messages,
            true,
        )?)
    }

    /// Generated tokens as text, control tokens removed.
    pub fn decode(&self, tokens: &[u32]) -> Result<String> {
        Ok(self.tokenizer.decode(tokens, true)?)
    }

    /// The model's context window.
    pub fn max_context(&self) -> usize {
        self.dir.config.max_position_embeddings
    }
}
