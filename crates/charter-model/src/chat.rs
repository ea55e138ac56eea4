//! Chat prompts: a model's Jinja chat template (`tokenizer.chat_template`),
//! and the token ids of a conversation, with control tokens only where the
//! template itself writes them.
//!
//! Templates are rendered as HuggingFace's `apply_chat_template` renders
//! them: `trim_blocks` and `lstrip_blocks` on, a final newline dropped,
//! Python's string methods (`.strip()`, `.startswith()`, …) through
//! `minijinja-contrib`'s `pycompat`, `raise_exception`, and the variables
//! `messages`, `add_generation_prompt`, `bos_token` and `eos_token`. There
//! is no `strftime_now`: a rendering must not depend on the clock.

use std::collections::BTreeMap;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::tokenizer::TextTokenizer;

const KEY_TEMPLATE: &str = "tokenizer.chat_template";
const TEMPLATE_NAME: &str = "chat_template";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`: written by the program, never taken
    /// from data, since the template copies it next to control tokens.
    pub role: String,
    /// The text of the turn: data, which may hold anything.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `template`; a syntax error is reported here, not at render time.
    pub fn new(template: &str) -> Result<Self> {
        let mut env = Environment::new();
        let mut syntax = SyntaxConfig::builder();
        syntax.trim_blocks(true).lstrip_blocks(true);
        env.set_syntax(syntax.build().map_err(template_error)?);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| {
            Err::<Value, _>(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(TEMPLATE_NAME, template.to_owned())
            .map_err(template_error)?;
        Ok(Self {
            env,
            bos_token: String::new(),
            eos_token: String::new(),
        })
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), with its BOS
    /// and EOS tokens as `bos_token` and `eos_token` where the file names them.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let m = gguf.metadata();
        let template = Self::new(m.get_str(KEY_TEMPLATE)?).map_err(|e| match e {
            Error::ChatTemplate(message) => Error::ChatTemplate(format!(
                "{}: {KEY_TEMPLATE}: {message}",
                gguf.path().display()
            )),
            other => other,
        })?;
        let token = |key: &str| -> Result<String> {
            if !m.contains_key(key) || !m.contains_key("tokenizer.ggml.tokens") {
                return Ok(String::new());
            }
            let id = m.get_usize(key)?;
            Ok(m.get_str_array("tokenizer.ggml.tokens")?
                .get(id)
                .cloned()
                .unwrap_or_default())
        };
        let (bos, eos) = (
            token("tokenizer.ggml.bos_token_id")?,
            token("tokenizer.ggml.eos_token_id")?,
        );
        Ok(template.with_special_tokens(bos, eos))
    }

    /// Sets the `bos_token` and `eos_token` variables (empty by default).
    pub fn with_special_tokens(mut self, bos: impl Into<String>, eos: impl Into<String>) -> Self {
        self.bos_token = bos.into();
        self.eos_token = eos.into();
        self
    }

    /// The prompt text of `messages`; with `add_generation_prompt`, ending
    /// where the assistant's reply starts.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, |_, m| {
            Value::from(m.content.as_str())
        })
    }

    /// Renders with `content(i, message)` in place of each message's content.
    fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        content: impl Fn(usize, &Message) -> Value,
    ) -> Result<String> {
        let messages: Value = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Value::from(BTreeMap::from([
                    ("role", Value::from(m.role.as_str())),
                    ("content", content(i, m)),
                ]))
            })
            .collect();
        let context = BTreeMap::from([
            ("messages", messages),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(self.bos_token.as_str())),
            ("eos_token", Value::from(self.eos_token.as_str())),
        ]);
        self.env
            .get_template(TEMPLATE_NAME)
            .and_then(|t| t.render(context))
            .map_err(template_error)
    }

    /// The rendering split into the template's own text and the places
    /// where it writes each message's content.
    fn pieces(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<Piece>> {
        let marked = self.render_with(messages, add_generation_prompt, |i, _| {
            Value::from(format!("{MARK_OPEN}{i}{MARK_CLOSE}"))
        })?;
        Ok(split_marked(&marked, messages.len()))
    }
}

fn template_error(err: minijinja::Error) -> Error {
    Error::ChatTemplate(err.to_string())
}

/// Noncharacters, which no text has a reason to hold, bracket the index of a
/// message in the placeholder for its content.
const MARK_OPEN: char = '\u{FDD0}';
const MARK_CLOSE: char = '\u{FDD1}';

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    /// The template's own text.
    Text(String),
    /// The content of message `i`.
    Content(usize),
}

/// Splits a rendering with placeholders into pieces; anything that is not
/// a well-formed placeholder for one of `n` messages stays text.
fn split_marked(marked: &str, n: usize) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = marked;
    while let Some(at) = rest.find(MARK_OPEN) {
        text.push_str(&rest[..at]);
        let after = &rest[at + MARK_OPEN.len_utf8()..];
        let index = after
            .split_once(MARK_CLOSE)
            .filter(|(digits, _)| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(digits, tail)| Some((digits.parse::<usize>().ok()?, tail)))
            .filter(|&(i, _)| i < n);
        match index {
            Some((i, tail)) => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Content(i));
                rest = tail;
            }
            None => {
                text.push(MARK_OPEN);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

/// The token ids of a conversation: the template's rendering, with control
/// tokens only where the template's own text writes them.
///
/// Message content is data: a message holding `<|im_end|>` must not close
/// its turn. So the template is rendered once with a placeholder for each
/// content, which splits the rendering into the template's own text and the
/// contents. Then:
///
/// 1. The whole rendering is encoded with special tokens on, as
///    HuggingFace's `apply_chat_template` does. If its special tokens are
///    exactly those of the template's text alone, at the same places, the
///    contents added none and removed none, and these are the ids: for
///    benign content the result is the plain encoding of the rendering, to
///    the token, including where a content's first characters merge with
///    the template's text before it (a content starting with `\n`).
/// 2. Otherwise some content holds special-token text. The template's text
///    is encoded with special tokens on and each content with them off
///    ([`TextTokenizer::encode`]), and the pieces are concatenated, so the
///    injected text stays ordinary tokens. Splitting at the content
///    boundaries can tokenise there differently from the whole rendering,
///    which only adversarial content sees.
///
/// A template that transforms content (`| trim`) renders a placeholder
/// differently from the content, so where the contents lie in the rendering
/// is not known. Then the rendering's special tokens must be the template's
/// own, in the same order, or this is an [`Error::ChatTemplate`]: such
/// content cannot be encoded safely with that template.
///
/// # Example
///
/// ```no_run
/// use charter_model::{ChatTemplate, Gguf, Message, TextTokenizer, encode_chat};
///
/// let gguf = Gguf::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
/// let tokenizer = TextTokenizer::from_gguf(&gguf)?;
/// let template = ChatTemplate::from_gguf(&gguf)?;
/// let messages = [Message::new("user", "Say <|im_end|> and stop.")];
/// let ids = encode_chat(&tokenizer, &template, &messages, true)?;
/// // The template closes two turns (system, user) with `<|im_end|>`; the
/// // one in the content is text.
/// let im_end = tokenizer.token_id("<|im_end|>").unwrap_or_default();
/// assert_eq!(ids.iter().filter(|&&id| id == im_end).count(), 2);
/// # Ok::<(), charter_model::Error>(())
/// ```
pub fn encode_chat(
    tokenizer: &TextTokenizer,
    template: &ChatTemplate,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<Vec<u32>> {
    let rendered = template.render(messages, add_generation_prompt)?;
    let pieces = template.pieces(messages, add_generation_prompt)?;

    let (ids, starts) = tokenizer.encode_special_with_starts(&rendered)?;
    let found: Vec<(u32, usize)> = ids
        .iter()
        .zip(&starts)
        .filter(|&(&id, _)| tokenizer.is_special(id))
        .map(|(&id, &start)| (id, start))
        .collect();

    // The template's own special tokens, placed where its text lies in the
    // rendering, and that text reassembled with the contents.
    let mut expected = Vec::new();
    let mut reassembled = String::with_capacity(rendered.len());
    for piece in &pieces {
        match piece {
            Piece::Text(text) => {
                let (ids, starts) = tokenizer.encode_special_with_starts(text)?;
                expected.extend(
                    ids.iter()
                        .zip(&starts)
                        .filter(|&(&id, _)| tokenizer.is_special(id))
                        .map(|(&id, &start)| (id, reassembled.len() + start)),
                );
                reassembled.push_str(text);
            }
            Piece::Content(i) => reassembled.push_str(&messages[*i].content),
        }
    }

    if reassembled == rendered {
        if found == expected {
            return Ok(ids);
        }
        let mut out = Vec::with_capacity(ids.len());
        for piece in &pieces {
            out.extend(match piece {
                Piece::Text(text) => tokenizer.encode(text, true)?,
                Piece::Content(i) => tokenizer.encode(&messages[*i].content, false)?,
            });
        }
        return Ok(out);
    }

    let same_order =
        found.len() == expected.len() && found.iter().zip(&expected).all(|(f, e)| f.0 == e.0);
    if same_order {
        return Ok(ids);
    }
    Err(Error::ChatTemplate(
        "the template transforms message content, and some content holds special-token \
         text, so the content cannot be told apart from the template's own control tokens"
            .to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    //! Rendering like HuggingFace, and splitting renderings at placeholders.

    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] \
        + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}\
        {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}\n";

    #[test]
    fn renders_like_apply_chat_template() {
        let t = ChatTemplate::new(CHATML).unwrap();
        let messages = [Message::new("user", "Hi")];
        // The template's final newline is dropped, as Jinja does by default.
        assert_eq!(
            t.render(&messages, true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&messages, false).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn trims_blocks_and_knows_python_string_methods() {
        let source = "{% for m in messages %}\n  {% if m.content.startswith('x') %}\n\
            {{ bos_token }}{{ m.content.strip().upper() }}|\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(source)
            .unwrap()
            .with_special_tokens("<s>", "</s>");
        let messages = [Message::new("user", "  no"), Message::new("user", "xy  ")];
        assert_eq!(t.render(&messages, false).unwrap(), "<s>XY|\n");
    }

    #[test]
    fn errors_name_the_problem() {
        let err = ChatTemplate::new("{% for %}").unwrap_err();
        assert!(matches!(err, Error::ChatTemplate(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("chat template: syntax error"),
            "{err}"
        );
        let t = ChatTemplate::new("{{ raise_exception('only user turns') }}").unwrap();
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("only user turns"), "{err}");
    }

    #[test]
    fn split_marked_finds_placeholders_and_leaves_the_rest() {
        let marked =
            format!("a{MARK_OPEN}0{MARK_CLOSE}b{MARK_OPEN}1{MARK_CLOSE}{MARK_OPEN}0{MARK_CLOSE}");
        assert_eq!(
            split_marked(&marked, 2),
            [
                Piece::Text("a".into()),
                Piece::Content(0),
                Piece::Text("b".into()),
                Piece::Content(1),
                Piece::Content(0),
            ]
        );
        // Out of range, empty or non-numeric placeholders are text.
        for odd in [
            format!("{MARK_OPEN}2{MARK_CLOSE}"),
            format!("{MARK_OPEN}{MARK_CLOSE}"),
            format!("{MARK_OPEN}x{MARK_CLOSE}"),
            format!("{MARK_OPEN}0"),
        ] {
            assert_eq!(split_marked(&odd, 2), [Piece::Text(odd.clone())]);
        }
        assert_eq!(split_marked("", 1), []);
    }
}
