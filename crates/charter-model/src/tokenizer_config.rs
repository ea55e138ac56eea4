//! `tokenizer_config.json`, the file of a model directory that holds the
//! chat template and the special tokens' texts (HuggingFace's layout).

use serde::{Deserialize, Serialize};

/// `tokenizer_config.json`: the chat template and special tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerConfig {
    /// The Jinja chat template.
    pub chat_template: String,
    /// Beginning-of-sequence token text, if any.
    #[serde(default)]
    pub bos_token: Option<String>,
    /// End-of-sequence token text.
    #[serde(default)]
    pub eos_token: Option<String>,
    /// Whether a BOS token is prepended when encoding (charter's chat rendering relies on the template instead).
    #[serde(default)]
    pub add_bos_token: bool,
    /// The context window.
    pub model_max_length: usize,
}
