//! Byte-level BPE tokenizers built from a GGUF vocabulary, written as
//! HuggingFace `tokenizer.json`, and [`TextTokenizer`] to run them.
//!
//! A GGUF file does not store a pre-tokenizer, only a name for one
//! (`tokenizer.ggml.pre`) that llama.cpp maps to regexes compiled into it
//! (`src/llama-vocab.cpp`). [`PreTokenizer`] maps the names charter knows to
//! the pre-tokenizers of the models' published `tokenizer.json` files, so a
//! tokenizer built here encodes like the one the model was trained with.
//!
//! Special tokens and untrusted text: the `tokenizers` crate matches added
//! special tokens in the input whatever `add_special_tokens` says, so
//! [`TextTokenizer`] keeps a second copy of the tokenizer with special-token
//! matching turned off (`set_encode_special_tokens(true)`, Python's
//! `split_special_tokens`) for text that must stay text.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use serde::ser::SerializeMap;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::gguf::Gguf;

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";

// llama.cpp's `llama_token_type` values for `tokenizer.ggml.token_type`.
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Llama 3's split regex, from Meta-Llama-3's `tokenizer.json`.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split regex, from Qwen2's `tokenizer.json`: Llama 3's with single digits.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A pre-tokenizer named by a GGUF's `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizer {
    /// `smollm` (SmolLM, SmolLM2): every digit alone, then GPT-2's regex:
    /// `Sequence[Digits(individual_digits), ByteLevel(use_regex)]`. llama.cpp
    /// runs the same two regexes (`\p{N}`, then GPT-2's).
    SmolLm,
    /// `llama-bpe` (also `llama3`, `llama-v3`): Llama 3's regex (digits in
    /// runs of up to three), then `ByteLevel(use_regex=false)`; the BPE model
    /// uses a whole pre-token found in the vocabulary without merging
    /// (`ignore_merges`), as Llama 3's `tokenizer.json` and llama.cpp do.
    Llama3,
    /// `qwen2`: Qwen2's regex (single digits), then `ByteLevel(use_regex=false)`,
    /// after the NFC normaliser of Qwen2's published `tokenizer.json`
    /// (llama.cpp skips the normaliser; it changes only text that is not
    /// already NFC).
    Qwen2,
}

impl PreTokenizer {
    /// The names of `tokenizer.ggml.pre` that charter knows, for messages.
    const KNOWN: &'static str = "smollm, llama-bpe (llama3, llama-v3), qwen2";

    /// The pre-tokenizer a GGUF's `tokenizer.ggml.pre` names, if charter knows it.
    fn from_gguf_name(name: &str) -> Option<Self> {
        Some(match name {
            "smollm" => Self::SmolLm,
            "llama-bpe" | "llama3" | "llama-v3" => Self::Llama3,
            "qwen2" => Self::Qwen2,
            _ => return None,
        })
    }

    fn normalizer(self) -> Option<NormalizerJson> {
        match self {
            Self::Qwen2 => Some(NormalizerJson::Nfc),
            Self::SmolLm | Self::Llama3 => None,
        }
    }

    fn pre_tokenizer(self) -> PreTokenizerJson {
        let split = |pattern: &'static str| PreTokenizerJson::Split {
            pattern: PatternJson::Regex(pattern),
            behavior: "Isolated",
            invert: false,
        };
        let pretokenizers = match self {
            Self::SmolLm => vec![
                PreTokenizerJson::Digits {
                    individual_digits: true,
                },
                PreTokenizerJson::ByteLevel(ByteLevelJson {
                    add_prefix_space: false,
                    trim_offsets: true,
                    use_regex: true,
                }),
            ],
            Self::Llama3 => vec![
                split(LLAMA3_PATTERN),
                PreTokenizerJson::ByteLevel(ByteLevelJson {
                    add_prefix_space: false,
                    trim_offsets: true,
                    use_regex: false,
                }),
            ],
            Self::Qwen2 => vec![
                split(QWEN2_PATTERN),
                PreTokenizerJson::ByteLevel(ByteLevelJson {
                    add_prefix_space: false,
                    trim_offsets: false,
                    use_regex: false,
                }),
            ],
        };
        PreTokenizerJson::Sequence { pretokenizers }
    }

    fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }
}

impl fmt::Display for PreTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SmolLm => "smollm",
            Self::Llama3 => "llama-bpe",
            Self::Qwen2 => "qwen2",
        })
    }
}

/// Builds a HuggingFace `tokenizer.json` from a GGUF's vocabulary.
///
/// The vocabulary must be byte-level BPE (`tokenizer.ggml.model` = `gpt2`)
/// with a pre-tokenizer charter knows (`tokenizer.ggml.pre` = `smollm`,
/// `llama-bpe` or `qwen2`); anything else is [`Error::Unsupported`], naming
/// the value found. The tokenizer has:
///
/// - a BPE model over `tokenizer.ggml.tokens` (id = position) and
///   `tokenizer.ggml.merges` (each `"a b"`), no unknown token, no byte fallback;
/// - control and unknown tokens (`tokenizer.ggml.token_type` 3 and 2) as
///   added special tokens, user-defined tokens (type 4) as added tokens that
///   are not special; every other type is ordinary vocabulary;
/// - the pre-tokenizer (and, for `qwen2`, the NFC normaliser) of the
///   model's published `tokenizer.json`, a `ByteLevel` decoder, and no post-processor: nothing, not even BOS, is added to an
///   encoding (the chat template writes the control tokens).
///
/// The text is deterministic: the same GGUF gives the same bytes, with the
/// vocabulary written in id order and fields in a fixed order.
pub fn tokenizer_json_from_gguf(gguf: &Gguf) -> Result<String> {
    let m = gguf.metadata();
    let path = gguf.path();
    let model = m.get_str(KEY_MODEL)?;
    if model != "gpt2" {
        return Err(Error::Unsupported(format!(
            "{}: tokenizer model `{model}` ({KEY_MODEL}); charter builds tokenizers \
             for byte-level BPE vocabularies (`gpt2`) only",
            path.display()
        )));
    }
    let pre_name = m.get_str(KEY_PRE)?;
    let pre = PreTokenizer::from_gguf_name(pre_name).ok_or_else(|| {
        Error::Unsupported(format!(
            "{}: pre-tokenizer `{pre_name}` ({KEY_PRE}); charter knows {}",
            path.display(),
            PreTokenizer::KNOWN
        ))
    })?;

    let tokens = m.get_str_array(KEY_TOKENS)?;
    let types = match m.contains_key(KEY_TOKEN_TYPE) {
        true => Some(m.get_i32_array(KEY_TOKEN_TYPE)?),
        false => None,
    };
    if let Some(types) = types
        && types.len() != tokens.len()
    {
        return Err(Error::KeyType {
            path: path.to_owned(),
            key: KEY_TOKEN_TYPE.to_owned(),
            expected: format!("one type per token ({} entries)", tokens.len()),
            found: format!("{} entries", types.len()),
        });
    }
    if u32::try_from(tokens.len()).is_err() {
        return Err(Error::Unsupported(format!(
            "{}: {} tokens in {KEY_TOKENS}; token ids must fit in 32 bits",
            path.display(),
            tokens.len()
        )));
    }
    check_unique(gguf, tokens)?;

    let merges = m
        .get_str_array(KEY_MERGES)?
        .iter()
        .enumerate()
        .map(|(i, merge)| {
            split_merge(merge).ok_or_else(|| Error::KeyType {
                path: path.to_owned(),
                key: KEY_MERGES.to_owned(),
                expected: "merges of the form `a b`".to_owned(),
                found: format!("`{merge}` at index {i}"),
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let added_tokens = tokens
        .iter()
        .enumerate()
        .filter_map(|(id, content)| {
            let special = match types.map(|t| t[id]) {
                Some(TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN) => true,
                Some(TOKEN_TYPE_USER_DEFINED) => false,
                _ => return None,
            };
            Some(AddedTokenJson {
                // Cannot truncate: the vocabulary size was checked above.
                id: id as u32,
                content,
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: false,
                special,
            })
        })
        .collect();

    let json = TokenizerJson {
        version: "1.0",
        truncation: None,
        padding: None,
        added_tokens,
        normalizer: pre.normalizer(),
        pre_tokenizer: pre.pre_tokenizer(),
        post_processor: None,
        decoder: DecoderJson::ByteLevel(ByteLevelJson {
            add_prefix_space: true,
            trim_offsets: true,
            use_regex: true,
        }),
        model: ModelJson::Bpe {
            dropout: None,
            unk_token: None,
            continuing_subword_prefix: None,
            end_of_word_suffix: None,
            fuse_unk: false,
            byte_fallback: false,
            ignore_merges: pre.ignore_merges(),
            vocab: VocabJson(tokens),
            merges,
        },
    };
    serde_json::to_string_pretty(&json)
        .map_err(|e| Error::Tokenizer(format!("{}: writing tokenizer.json: {e}", path.display())))
}

/// A merge `"a b"` as `("a", "b")`. Like llama.cpp, the separator is the
/// first space after the first byte; byte-level tokens never hold a space.
fn split_merge(merge: &str) -> Option<(&str, &str)> {
    let first = merge.chars().next()?;
    let at = merge[first.len_utf8()..].find(' ')? + first.len_utf8();
    let (a, b) = (&merge[..at], &merge[at + 1..]);
    (!b.is_empty()).then_some((a, b))
}

/// A token string twice would collapse in `tokenizer.json`'s vocabulary map
/// and silently lose an id.
fn check_unique(gguf: &Gguf, tokens: &[String]) -> Result<()> {
    let mut sorted: Vec<(&str, usize)> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    sorted.sort_unstable();
    match sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        None => Ok(()),
        Some(w) => Err(Error::Unsupported(format!(
            "{}: token `{}` appears twice in {KEY_TOKENS} (ids {} and {}); \
             a tokenizer.json vocabulary needs distinct tokens",
            gguf.path().display(),
            w[0].0,
            w[0].1,
            w[1].1
        ))),
    }
}

// The `tokenizer.json` layout, with fields in the order the `tokenizers`
// crate writes them. Typed structs rather than `serde_json::Value` keep the
// bytes independent of serde_json's `preserve_order` feature.

#[derive(Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<AddedTokenJson<'a>>,
    normalizer: Option<NormalizerJson>,
    pre_tokenizer: PreTokenizerJson,
    post_processor: Option<()>,
    decoder: DecoderJson,
    model: ModelJson<'a>,
}

#[derive(Serialize)]
struct AddedTokenJson<'a> {
    id: u32,
    content: &'a str,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum NormalizerJson {
    #[serde(rename = "NFC")]
    Nfc,
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum PreTokenizerJson {
    Sequence {
        pretokenizers: Vec<PreTokenizerJson>,
    },
    Digits {
        individual_digits: bool,
    },
    Split {
        pattern: PatternJson,
        behavior: &'static str,
        invert: bool,
    },
    ByteLevel(ByteLevelJson),
}

#[derive(Serialize)]
enum PatternJson {
    Regex(&'static str),
}

#[derive(Serialize)]
struct ByteLevelJson {
    add_prefix_space: bool,
    trim_offsets: bool,
    use_regex: bool,
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum DecoderJson {
    ByteLevel(ByteLevelJson),
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum ModelJson<'a> {
    #[serde(rename = "BPE")]
    Bpe {
        dropout: Option<f32>,
        unk_token: Option<&'a str>,
        continuing_subword_prefix: Option<&'a str>,
        end_of_word_suffix: Option<&'a str>,
        fuse_unk: bool,
        byte_fallback: bool,
        ignore_merges: bool,
        vocab: VocabJson<'a>,
        merges: Vec<(&'a str, &'a str)>,
    },
}

/// The vocabulary as a JSON object `{token: id}`, in id order.
struct VocabJson<'a>(&'a [String]);

impl Serialize for VocabJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (id, token) in self.0.iter().enumerate() {
            map.serialize_entry(token, &id)?;
        }
        map.end()
    }
}

/// A loaded `tokenizer.json`: text to token ids and back.
///
/// [`encode`](Self::encode) takes a `special` flag that decides whether
/// special-token text in the input (`<|im_end|>`) becomes the control token
/// or stays ordinary text. Prompts and responses are data: encode them with
/// `special = false`, so that no input can close a turn or forge a role;
/// only the chat template's own text is encoded with `special = true`
/// ([`encode_chat`](crate::encode_chat) does both). No encoding adds BOS,
/// EOS or any other token, and truncation and padding are off.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    /// Matches special-token text in the input.
    with_special: Tokenizer,
    /// The same tokenizer with special-token matching off.
    plain: Tokenizer,
    /// Ids of the special tokens, sorted.
    special_ids: Vec<u32>,
    /// Tokens in the vocabulary, added tokens included.
    vocab_size: usize,
    /// The longest token's spelling in UTF-8 bytes.
    max_token_bytes: usize,
}

impl TextTokenizer {
    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&json)
            .map_err(|e| Error::Tokenizer(format!("{}: {}", path.display(), inner(e))))
    }

    /// Loads the text of a `tokenizer.json`.
    pub fn from_json_str(json: &str) -> Result<Self> {
        let mut with_special = Tokenizer::from_str(json)
            .map_err(|e| Error::Tokenizer(format!("loading tokenizer.json: {e}")))?;
        with_special.with_truncation(None).map_err(|e| {
            Error::Tokenizer(format!("turning off the tokenizer's truncation: {e}"))
        })?;
        with_special.with_padding(None);
        with_special.set_encode_special_tokens(false);
        let mut plain = with_special.clone();
        plain.set_encode_special_tokens(true);
        let mut special_ids: Vec<u32> = with_special
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        special_ids.sort_unstable();
        let vocab_size = with_special.get_vocab_size(true);
        // Control tokens never come from text (it is encoded with them off).
        let max_token_bytes = with_special
            .get_vocab(true)
            .iter()
            .filter(|(_, id)| special_ids.binary_search(id).is_err())
            .map(|(token, _)| token.len())
            .max()
            .unwrap_or(1);
        Ok(Self {
            with_special,
            plain,
            special_ids,
            vocab_size,
            max_token_bytes,
        })
    }

    /// Builds the tokenizer of a GGUF's vocabulary ([`tokenizer_json_from_gguf`]).
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let json = tokenizer_json_from_gguf(gguf)?;
        Self::from_json_str(&json)
            .map_err(|e| Error::Tokenizer(format!("{}: {}", gguf.path().display(), inner(e))))
    }

    /// Token ids of `text`. With `special`, special-token text in `text`
    /// becomes the special token; without, it is encoded as ordinary text,
    /// which is what untrusted text needs.
    ///
    /// Without `special`, the result is checked to hold no special token at
    /// all: should the vocabulary's merges ever rebuild one from ordinary
    /// text, this is an error rather than a forged control token.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let tokenizer = if special {
            &self.with_special
        } else {
            &self.plain
        };
        let ids = tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encoding: {e}")))?
            .get_ids()
            .to_vec();
        if !special && let Some(&id) = ids.iter().find(|&&id| self.is_special(id)) {
            return Err(Error::Tokenizer(format!(
                "text encoded with special tokens off produced the special token `{}` \
                 (id {id}); the vocabulary's merges can build it from ordinary text",
                self.with_special.id_to_token(id).unwrap_or_default()
            )));
        }
        Ok(ids)
    }

    /// Token ids of `text` with special tokens on, and the byte offset in
    /// `text` where each token starts.
    pub(crate) fn encode_special_with_starts(&self, text: &str) -> Result<(Vec<u32>, Vec<usize>)> {
        let encoding = self
            .with_special
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encoding: {e}")))?;
        let starts = encoding.get_offsets().iter().map(|&(start, _)| start);
        Ok((encoding.get_ids().to_vec(), starts.collect()))
    }

    /// The text of `ids`; `skip_special` leaves special tokens out.
    ///
    /// An id outside the vocabulary is an error, not silently dropped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&id) = ids
            .iter()
            .find(|&&id| self.with_special.id_to_token(id).is_none())
        {
            return Err(Error::Tokenizer(format!(
                "decoding: token id {id} is not in the vocabulary of {} tokens",
                self.vocab_size()
            )));
        }
        self.with_special
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(format!("decoding: {e}")))
    }

    /// The id of the token spelled `token` (in the vocabulary's byte-level
    /// spelling, such as `Ġworld`, or an added token such as `<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.with_special.token_to_id(token)
    }

    /// The token spelled by `id`, if it is in the vocabulary.
    pub fn token(&self, id: u32) -> Option<String> {
        self.with_special.id_to_token(id)
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }

    /// The ids of the special tokens, in increasing order.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_ids
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The most bytes of text one token can stand for, bounded above by the
    /// longest token's spelling (byte-level and SentencePiece spellings take
    /// at least as many bytes as the text they encode). Text longer than
    /// `n` times this holds more than `n` tokens, which lets a caller refuse
    /// text without tokenising it.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes.max(1)
    }
}

/// The message of a [`Error::Tokenizer`], for re-wrapping with a path.
fn inner(err: Error) -> String {
    match err {
        Error::Tokenizer(message) => message,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! Pre-tokenizer choice, refusals, and special tokens on a tiny vocabulary.

    use super::*;

    /// A GGUF v3 file with only the given string, string-array and
    /// int32-array metadata.
    fn gguf(
        strings: &[(&str, &str)],
        arrays: &[(&str, Vec<String>)],
        types: Option<Vec<i32>>,
    ) -> Gguf {
        fn put_str(buf: &mut Vec<u8>, s: &str) {
            buf.extend((s.len() as u64).to_le_bytes());
            buf.extend(s.as_bytes());
        }
        let n_kv = strings.len() + arrays.len() + usize::from(types.is_some());
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend((n_kv as u64).to_le_bytes());
        for (key, value) in strings {
            put_str(&mut bytes, key);
            bytes.extend(8u32.to_le_bytes());
            put_str(&mut bytes, value);
        }
        for (key, values) in arrays {
            put_str(&mut bytes, key);
            bytes.extend(9u32.to_le_bytes());
            bytes.extend(8u32.to_le_bytes());
            bytes.extend((values.len() as u64).to_le_bytes());
            for v in values {
                put_str(&mut bytes, v);
            }
        }
        if let Some(types) = types {
            put_str(&mut bytes, KEY_TOKEN_TYPE);
            bytes.extend(9u32.to_le_bytes());
            bytes.extend(5u32.to_le_bytes());
            bytes.extend((types.len() as u64).to_le_bytes());
            for t in types {
                bytes.extend(t.to_le_bytes());
            }
        }
        Gguf::from_vec(bytes).unwrap()
    }

    /// A byte-level vocabulary: two control tokens, one user-defined token,
    /// the 256 byte symbols and a few merges.
    fn tiny(model: &str, pre: &str) -> Gguf {
        let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
            .into_iter()
            .collect();
        alphabet.sort_unstable();
        let mut tokens: Vec<String> = ["<|im_start|>", "<|im_end|>", "<tool>"]
            .map(String::from)
            .to_vec();
        tokens.extend(alphabet.iter().map(char::to_string));
        let merges: Vec<String> = ["h e", "l l", "he ll", "hell o", "Ġ w", "1 2"]
            .map(String::from)
            .to_vec();
        tokens.extend(["he", "ll", "hell", "hello", "Ġw", "12"].map(String::from));
        let mut types = vec![1; tokens.len()];
        types[0] = TOKEN_TYPE_CONTROL;
        types[1] = TOKEN_TYPE_CONTROL;
        types[2] = TOKEN_TYPE_USER_DEFINED;
        gguf(
            &[(KEY_MODEL, model), (KEY_PRE, pre)],
            &[(KEY_TOKENS, tokens), (KEY_MERGES, merges)],
            Some(types),
        )
    }

    fn pieces(t: &TextTokenizer, text: &str, special: bool) -> Vec<String> {
        t.encode(text, special)
            .unwrap()
            .into_iter()
            .map(|id| t.token(id).unwrap())
            .collect()
    }

    #[test]
    fn pre_tokenizer_names() {
        assert_eq!(
            PreTokenizer::from_gguf_name("smollm"),
            Some(PreTokenizer::SmolLm)
        );
        for name in ["llama-bpe", "llama3", "llama-v3"] {
            assert_eq!(
                PreTokenizer::from_gguf_name(name),
                Some(PreTokenizer::Llama3)
            );
        }
        assert_eq!(
            PreTokenizer::from_gguf_name("qwen2"),
            Some(PreTokenizer::Qwen2)
        );
        assert_eq!(PreTokenizer::from_gguf_name("default"), None);
        assert_eq!(PreTokenizer::from_gguf_name("SmolLM"), None);
    }

    #[test]
    fn pre_tokenizers_split_digits_as_their_models_do() {
        // smollm and qwen2 split every digit; llama-bpe keeps runs of up to
        // three; the "12" merge applies wherever a pre-token holds "12".
        let cases = [
            ("smollm", vec!["1", "2", "3", "4"]),
            ("qwen2", vec!["1", "2", "3", "4"]),
            ("llama-bpe", vec!["12", "3", "4"]),
        ];
        for (pre, want) in cases {
            let t = TextTokenizer::from_gguf(&tiny("gpt2", pre)).unwrap();
            assert_eq!(pieces(&t, "1234", true), want, "{pre}");
            assert_eq!(
                pieces(&t, "hello world", true)[..2],
                ["hello", "Ġw"],
                "{pre}"
            );
        }
    }

    #[test]
    fn json_shape() {
        let json = tokenizer_json_from_gguf(&tiny("gpt2", "smollm")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["model"]["type"], "BPE");
        assert_eq!(v["model"]["ignore_merges"], false);
        assert_eq!(v["model"]["vocab"]["<|im_end|>"], 1);
        assert_eq!(v["model"]["merges"][0], serde_json::json!(["h", "e"]));
        assert_eq!(v["normalizer"], serde_json::Value::Null);
        assert_eq!(v["post_processor"], serde_json::Value::Null);
        assert_eq!(v["decoder"]["type"], "ByteLevel");
        let pre = &v["pre_tokenizer"]["pretokenizers"];
        assert_eq!(
            pre[0],
            serde_json::json!({"type": "Digits", "individual_digits": true})
        );
        assert_eq!(pre[1]["type"], "ByteLevel");
        assert_eq!(pre[1]["use_regex"], true);
        let added = v["added_tokens"].as_array().unwrap();
        let summary: Vec<(u64, &str, bool)> = added
            .iter()
            .map(|a| {
                (
                    a["id"].as_u64().unwrap(),
                    a["content"].as_str().unwrap(),
                    a["special"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, "<|im_start|>", true),
                (1, "<|im_end|>", true),
                (2, "<tool>", false)
            ]
        );

        let llama = tokenizer_json_from_gguf(&tiny("gpt2", "llama-bpe")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&llama).unwrap();
        assert_eq!(v["model"]["ignore_merges"], true);
        let split = &v["pre_tokenizer"]["pretokenizers"][0];
        assert_eq!(split["type"], "Split");
        assert_eq!(split["pattern"]["Regex"], LLAMA3_PATTERN);
        assert_eq!(v["pre_tokenizer"]["pretokenizers"][1]["use_regex"], false);

        let qwen = tokenizer_json_from_gguf(&tiny("gpt2", "qwen2")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&qwen).unwrap();
        assert_eq!(v["normalizer"]["type"], "NFC");
        assert_eq!(
            v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"],
            QWEN2_PATTERN
        );
    }

    #[test]
    fn unknown_model_and_pre_are_refused_by_name() {
        let err = tokenizer_json_from_gguf(&tiny("llama", "smollm")).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "<memory>: tokenizer model `llama` (tokenizer.ggml.model); charter builds \
             tokenizers for byte-level BPE vocabularies (`gpt2`) only"
        );
        let err = tokenizer_json_from_gguf(&tiny("gpt2", "deepseek-llm")).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "<memory>: pre-tokenizer `deepseek-llm` (tokenizer.ggml.pre); charter knows \
             smollm, llama-bpe (llama3, llama-v3), qwen2"
        );
    }

    #[test]
    fn missing_and_malformed_vocabulary_keys() {
        let g = gguf(&[(KEY_MODEL, "gpt2")], &[], None);
        assert_eq!(
            tokenizer_json_from_gguf(&g).unwrap_err().to_string(),
            "<memory>: metadata key `tokenizer.ggml.pre` is missing"
        );
        let tokens: Vec<String> = ["a", "b", "ab"].map(String::from).to_vec();
        let strings = [(KEY_MODEL, "gpt2"), (KEY_PRE, "smollm")];
        let g = gguf(
            &strings,
            &[
                (KEY_TOKENS, tokens.clone()),
                (KEY_MERGES, vec!["ab".into()]),
            ],
            None,
        );
        assert_eq!(
            tokenizer_json_from_gguf(&g).unwrap_err().to_string(),
            "<memory>: metadata `tokenizer.ggml.merges`: expected merges of the form `a b`, \
             found `ab` at index 0"
        );
        let g = gguf(
            &strings,
            &[
                (KEY_TOKENS, tokens.clone()),
                (KEY_MERGES, vec!["a b".into()]),
            ],
            Some(vec![1, 1]),
        );
        assert_eq!(
            tokenizer_json_from_gguf(&g).unwrap_err().to_string(),
            "<memory>: metadata `tokenizer.ggml.token_type`: expected one type per token \
             (3 entries), found 2 entries"
        );
        let dup: Vec<String> = ["a", "b", "a"].map(String::from).to_vec();
        let g = gguf(&strings, &[(KEY_TOKENS, dup), (KEY_MERGES, vec![])], None);
        assert_eq!(
            tokenizer_json_from_gguf(&g).unwrap_err().to_string(),
            "<memory>: token `a` appears twice in tokenizer.ggml.tokens (ids 0 and 2); \
             a tokenizer.json vocabulary needs distinct tokens"
        );
    }

    #[test]
    fn split_merge_takes_the_first_space_after_the_first_char() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ", "t")));
        assert_eq!(split_merge("a b c"), Some(("a", "b c")));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge("a "), None);
        assert_eq!(split_merge(""), None);
    }

    #[test]
    fn special_tokens_only_when_asked() {
        let t = TextTokenizer::from_gguf(&tiny("gpt2", "smollm")).unwrap();
        assert_eq!(t.special_ids(), [0, 1]);
        assert_eq!(t.encode("<|im_end|>", true).unwrap(), [1]);
        let plain = pieces(&t, "<|im_end|>", false);
        assert_eq!(plain.concat(), "<|im_end|>");
        assert!(plain.len() > 1, "{plain:?}");
        // User-defined tokens are not control tokens: matched either way.
        assert_eq!(t.encode("<tool>", false).unwrap(), [2]);
        assert_eq!(t.encode("<tool>", true).unwrap(), [2]);
        // Decoding.
        let ids = t.encode("<|im_start|>hello<|im_end|>", true).unwrap();
        assert_eq!(
            t.decode(&ids, false).unwrap(),
            "<|im_start|>hello<|im_end|>"
        );
        assert_eq!(t.decode(&ids, true).unwrap(), "hello");
        assert_eq!(
            t.decode(&[99_999], false).unwrap_err().to_string(),
            format!(
                "tokenizer: decoding: token id 99999 is not in the vocabulary of {} tokens",
                t.vocab_size()
            )
        );
        assert_eq!(t.token_id("<|im_end|>"), Some(1));
        assert_eq!(t.token_id("hello"), Some(t.vocab_size() as u32 - 3));
    }

    #[test]
    fn tokenizers_and_templates_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<TextTokenizer>();
        shared::<crate::ChatTemplate>();
    }

    #[test]
    fn loading_bad_json_is_a_tokenizer_error() {
        let err = TextTokenizer::from_json_str("{").unwrap_err();
        assert!(matches!(err, Error::Tokenizer(_)), "{err:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, "[]").unwrap();
        let err = TextTokenizer::from_file(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("tokenizer: {}: loading", path.display())),
            "{err}"
        );
    }
}
