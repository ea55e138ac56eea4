//! The model directory: the unit every command takes with `-m`.
//!
//! In the layout users know from HuggingFace, plus charter's graph and provenance:
//!
//! | file | what |
//! |---|---|
//! | `config.json` | architecture ([`ModelConfig`]) |
//! | `tokenizer.json` | the tokenizer, loadable by the `tokenizers` library |
//! | `tokenizer_config.json` | chat template and special tokens |
//! | `model.safetensors` | the weights in HuggingFace's names and layout, f32, for the trainer ([`ModelDir::load_weights`]) |
//! | `model.onnx`, `model.onnx.data` | the decoder graph charter generates with |
//! | `charter-model.json` | provenance: source file and its hash, weight dtype, exporter version, content hash, and the size, time and blake3 of every other file |
//!
//! A directory is built in `<out>.partial/` while its writer holds
//! `<out>.lock`, then swapped into place (see [`OutputLock`] for the order of
//! the renames), so a half-written model never looks complete and a killed
//! writer leaves the old directory or the new one. A writer never deletes
//! what it did not write: it writes only to a new path, an empty directory,
//! or a charter model directory holding only its own files, and replaces a
//! model of other content only when asked to ([`Replace`]).
//!
//! The model hash recorded in `charter-model.json` describes the files as
//! charter wrote them. [`ModelDir::open`] checks every file's size and
//! modification time against the record, and hashes a file again where the
//! time differs (a copy that did not keep times), so a file changed in place
//! is an error ([`Error::Modified`]) rather than a model passing under
//! another model's hash. A change that keeps both size and time (within the
//! file system's time resolution) goes unnoticed.
//!
//! Sources: a GGUF file ([`import_gguf`]) or a HuggingFace checkpoint
//! directory ([`import_hf`]).

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::hf::{
    HfCheckpoint, HfTensors, safetensors_files, tokenizer_config, write_hf_safetensors,
};
use crate::onnx::{Activations, BlockOffsets, Head, WeightFormat, WeightSource, export};
use crate::output::OutputLock;
use crate::tokenizer::TextTokenizer;
use crate::tokenizer_config::TokenizerConfig;
use crate::weights::{SafetensorsFile, Tensors};

/// Files a model directory must have.
pub const REQUIRED_FILES: [&str; 7] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    WEIGHTS_FILE,
    "model.onnx",
    "model.onnx.data",
    PROVENANCE_FILE,
];

/// The weights file's name: f32 safetensors in HuggingFace's names and layout.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The provenance file's name.
pub const PROVENANCE_FILE: &str = "charter-model.json";

/// A guard's calibration, which `charter classify calibrate` writes into a
/// classifier's directory. It describes the model it was made for, so
/// replacing the model replaces it with the rest.
pub const CALIBRATION_FILE: &str = "calibration.json";

/// Version of the exported graph: bump when the same weights would give different logits.
/// 4: the int8 and int4 exports' LM head is an 8-bit `MatMulNBits`.
/// 5: the graph also returns `hidden`, the last residual stream (same logits).
pub const GRAPH_VERSION: u32 = 5;

/// Where a model directory came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelProvenance {
    /// A display name: the source file's stem, or the checkpoint directory's name.
    pub name: String,
    /// The source file's or checkpoint directory's name.
    pub source: String,
    /// blake3 of the source file's bytes ([`hash_file`]), or of a checkpoint
    /// directory's files ([`hash_hf_dir`]).
    pub source_hash: String,
    /// Weight type of the graph: `f32`, `int8` or `int4`.
    pub dtype: String,
    /// [`GRAPH_VERSION`] of the exporter that wrote the graph.
    pub graph_version: u32,
    /// The charter release that wrote the directory.
    pub created_by: String,
    /// The model's content hash: blake3 over source hash, dtype and graph
    /// version. Tables record it as `model_hash`.
    pub content_hash: String,
    /// Every other file of the directory as charter wrote it, sorted by
    /// path; [`ModelDir::open`] checks them. Empty in directories written
    /// before charter recorded them, which are not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRecord>,
}

/// A file charter wrote into a model directory, as it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The path inside the directory, `/`-separated.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// blake3 of its bytes, lowercase hex.
    pub blake3: String,
}

/// What writing a model directory may replace at its output path. A file,
/// or a non-empty directory that is not a charter model directory, is never
/// replaced; nor is a model directory holding files charter did not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Only a model directory of the same content, which is kept as it is,
    /// or an import of the same source and dtype by an older exporter
    /// (graph version), which is exported again.
    Nothing,
    /// Any charter model directory.
    ModelDir,
}

impl Replace {
    /// `self`, widened to [`Replace::ModelDir`] when `out` holds an import of
    /// the same source and dtype written with an older [`GRAPH_VERSION`]:
    /// the same model, which a newer charter exports differently.
    fn or_older_export(self, out: &Path, source_hash: &str, dtype: Dtype) -> Replace {
        let older = ModelDir::open(out).is_ok_and(|dir| {
            let p = &dir.provenance;
            p.source_hash == source_hash
                && p.dtype == dtype.as_str()
                && p.graph_version < GRAPH_VERSION
        });
        if older { Replace::ModelDir } else { self }
    }
}

/// An opened model directory.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory.
    pub path: PathBuf,
    /// Its architecture.
    pub config: ModelConfig,
    /// Its chat template and special tokens.
    pub tokenizer_config: TokenizerConfig,
    /// Where it came from.
    pub provenance: ModelProvenance,
}

impl ModelDir {
    /// Opens a model directory, naming every missing file, and checks its
    /// files against the record in `charter-model.json` ([`Error::Modified`]).
    pub fn open(path: &Path) -> Result<Self> {
        let missing: Vec<&str> = REQUIRED_FILES
            .iter()
            .copied()
            .filter(|f| !path.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Unsupported(format!(
                "{}: not a complete charter model directory: missing {}",
                path.display(),
                missing.join(", ")
            )));
        }
        let provenance: ModelProvenance = read_json(&path.join(PROVENANCE_FILE))?;
        verify_files(path, &provenance.files)?;
        Ok(ModelDir {
            path: path.to_path_buf(),
            config: read_json(&path.join("config.json"))?,
            tokenizer_config: read_json(&path.join("tokenizer_config.json"))?,
            provenance,
        })
    }

    /// The tokenizer file.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.path.join("tokenizer.json")
    }

    /// The weights file, `model.safetensors`.
    pub fn weights_path(&self) -> PathBuf {
        self.path.join(WEIGHTS_FILE)
    }

    /// Every tensor of `model.safetensors` by HuggingFace name
    /// (`model.layers.0.self_attn.q_proj.weight`, …) as (shape, f32 values),
    /// row-major, shape outermost first. Q and K rows are in HuggingFace's
    /// rotate-half order; a tied LM head is absent (`lm_head.weight` is then
    /// `model.embed_tokens.weight`).
    pub fn load_weights(&self) -> Result<Tensors> {
        SafetensorsFile::open(self.weights_path())?.read_all()
    }
}

/// Weight type of a model directory's generation graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Dequantised f32 weights: exact (reproduces an f32 reference), largest.
    F32,
    /// 8-bit block weights (`MatMulNBits`) in every linear layer and the LM
    /// head, int8 activations in the matmuls: close to f32 (KL ~0.005 nats
    /// on the default model), fastest.
    Int8,
    /// 4-bit block weights (`MatMulNBits`) with f32 residual block offsets,
    /// exact for Q4_1/Q4_0 sources; int8 activations in the matmuls except
    /// the Q/K/V projection: smallest (KL ~0.002 nats on the default model).
    Int4,
}

impl Dtype {
    /// The name recorded in provenance.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Int8 => "int8",
            Dtype::Int4 => "int4",
        }
    }

    /// How the exporter stores linear layers for this dtype.
    pub fn weight_format(self) -> WeightFormat {
        match self {
            Dtype::F32 => WeightFormat::F32,
            Dtype::Int8 => WeightFormat::Blocks {
                bits: 8,
                offsets: BlockOffsets::Integer,
                activations: Activations::Int8,
                head: Head::Int8,
            },
            Dtype::Int4 => WeightFormat::Blocks {
                bits: 4,
                offsets: BlockOffsets::Residual,
                activations: Activations::Int8ExceptQkv,
                head: Head::F32,
            },
        }
    }
}

/// Imports a GGUF file (llama architecture) as a model directory at `out`.
///
/// If `out` already holds an import of the same file with the same dtype and
/// graph version, it is returned as it is; one with an older graph version is
/// exported again; a model of other content there is replaced only as
/// `replace` allows.
pub fn import_gguf(source: &Path, out: &Path, dtype: Dtype, replace: Replace) -> Result<ModelDir> {
    let source_hash = hash_file(source)?;
    let hash = content_hash(&source_hash, dtype);
    if let Some(existing) = up_to_date(out, &hash) {
        return Ok(existing);
    }
    let replace = replace.or_older_export(out, &source_hash, dtype);
    let gguf = Gguf::open(source)?;
    let config = ModelConfig::from_gguf(&gguf)?;
    let m = gguf.metadata();
    let tokenizer = crate::tokenizer::tokenizer_json_from_gguf(&gguf)?;
    let tokens = m.get_str_array("tokenizer.ggml.tokens")?;
    let token_text = |id: Option<u32>| {
        id.and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let tokenizer_config = TokenizerConfig {
        chat_template: m.get_str("tokenizer.chat_template")?.to_string(),
        bos_token: token_text(config.bos_token_id),
        eos_token: token_text(config.eos_token_id),
        add_bos_token: false,
        model_max_length: config.max_position_embeddings,
    };
    // The file's stem names the model: `general.name` is often a training-run label.
    let name = source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file_name = source
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    claim_and_write(
        out,
        &hash,
        replace,
        Parts {
            config: &config,
            tokenizer_json: &tokenizer,
            tokenizer_config: &tokenizer_config,
            weights: &gguf,
            dtype,
            name,
            source: file_name,
            source_hash,
            extra: &[],
        },
    )
}

/// Imports a HuggingFace checkpoint directory (llama, mistral or qwen2:
/// `config.json`, `tokenizer.json`, `tokenizer_config.json` and
/// `*.safetensors` in F32, F16 or BF16) as a model directory at `out`.
///
/// `tokenizer.json` is copied as it is; `tokenizer_config.json` keeps the
/// chat template, the BOS/EOS texts and the context length
/// (see [`ModelConfig::from_hf_config`] for what the architecture may be).
/// The directory's name names the model. If `out` already holds an import
/// of the same files with the same dtype and graph version, it is returned
/// as it is; one with an older graph version is exported again; a model of
/// other content there is replaced only as `replace` allows.
pub fn import_hf(source: &Path, out: &Path, dtype: Dtype, replace: Replace) -> Result<ModelDir> {
    let source_hash = hash_hf_dir(source)?;
    let hash = content_hash(&source_hash, dtype);
    if let Some(existing) = up_to_date(out, &hash) {
        return Ok(existing);
    }
    let replace = replace.or_older_export(out, &source_hash, dtype);
    let config = ModelConfig::from_hf_config(&source.join("config.json"))?;
    let weights = HfCheckpoint::open(source, &config)?;
    let tokenizer_path = source.join("tokenizer.json");
    let tokenizer_json =
        fs::read_to_string(&tokenizer_path).map_err(|e| Error::io(&tokenizer_path, e))?;
    let tokenizer = TextTokenizer::from_file(&tokenizer_path)?;
    let mut tokenizer_config = tokenizer_config(source, &config)?;
    // Fill an unnamed EOS from config.json's id: the engine stops on either.
    if tokenizer_config.eos_token.is_none() {
        tokenizer_config.eos_token = config.eos_token_id.and_then(|id| tokenizer.token(id));
    }
    let name = std::path::absolute(source)
        .ok()
        .as_deref()
        .and_then(Path::file_name)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    claim_and_write(
        out,
        &hash,
        replace,
        Parts {
            config: &config,
            tokenizer_json: &tokenizer_json,
            tokenizer_config: &tokenizer_config,
            weights: &weights,
            dtype,
            name: name.clone(),
            source: name,
            source_hash,
            extra: &[],
        },
    )
}

/// The source hash of a HuggingFace checkpoint directory: blake3 over the
/// files an import reads (`config.json`, `tokenizer.json`,
/// `tokenizer_config.json`, `chat_template.jinja` if present, and every
/// `*.safetensors`), sorted by name, each as its name, a zero byte, its
/// length as a little-endian u64, and its bytes. Lowercase hex.
pub fn hash_hf_dir(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = ["config.json", "tokenizer.json", "tokenizer_config.json"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        files.push(jinja);
    }
    files.extend(safetensors_files(dir)?);
    files.sort();
    let mut hasher = blake3::Hasher::new();
    for path in &files {
        let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        hasher.update(&len.to_le_bytes());
        hasher.update_reader(file).map_err(|e| Error::io(path, e))?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Claims `out` for a training run from its start to its end: the lock
/// that [`write_trained`] takes, refused while another process holds it and
/// when `out` holds anything but a model directory (an earlier run's, which
/// the result replaces; see [`check_output`]).
pub fn claim_trained_output(out: &Path) -> Result<OutputLock> {
    match claim(out, None, Replace::ModelDir)? {
        Claim::Write(lock) => Ok(lock),
        // Only a content hash to match gives `Done`, and none was given.
        Claim::Done(_) => Err(Error::Unsupported(format!(
            "{}: claimed as up to date without a content hash",
            out.display()
        ))),
    }
}

/// Writes a model directory for weights trained from `base` into the output
/// `lock` claims ([`claim_trained_output`]): `base`'s config and tokenizer
/// files, `tensors` (HuggingFace names and layout, as
/// [`ModelDir::load_weights`] gives them) as weights and graph, and the
/// `extra` files (relative path, bytes) beside them, all in one atomic
/// swap.
///
/// The source hash is blake3 over the tensors (names, shapes, f32 values),
/// so equal weights give an equal model hash whatever trained them.
pub fn write_trained(
    lock: OutputLock,
    base: &ModelDir,
    tensors: &Tensors,
    dtype: Dtype,
    name: String,
    extra: &[(&str, &[u8])],
) -> Result<ModelDir> {
    let weights = HfTensors::new(&base.config, tensors)?;
    let tokenizer_json = fs::read_to_string(base.tokenizer_path())
        .map_err(|e| Error::io(base.tokenizer_path(), e))?;
    let mut hasher = blake3::Hasher::new();
    for (tensor, (shape, values)) in tensors {
        hasher.update(tensor.as_bytes());
        hasher.update(&[0]);
        for &d in shape {
            hasher.update(&(d as u64).to_le_bytes());
        }
        for v in values {
            hasher.update(&v.to_le_bytes());
        }
    }
    let source = format!("trained from {}", base.provenance.name);
    let source_hash = hasher.finalize().to_hex().to_string();
    // No content hash to match: the record of the run is among the extra
    // files, so even equal weights are written again.
    check_output(lock.out(), Replace::ModelDir)?;
    write_claimed(
        lock,
        Replace::ModelDir,
        Parts {
            config: &base.config,
            tokenizer_json: &tokenizer_json,
            tokenizer_config: &base.tokenizer_config,
            weights: &weights,
            dtype,
            name,
            source,
            source_hash,
            extra,
        },
    )
}

/// Writes a model directory from its parts (see the module docs for how).
/// If `out` already holds a model of the same content, it is returned as it
/// is; a model of other content there is replaced only as `replace` allows.
///
/// `weights` are in GGUF names and layout (Q/K rows interleaved, as the
/// graph wants); `model.safetensors` gets them in HuggingFace's.
#[allow(clippy::too_many_arguments)]
pub fn write_dir(
    out: &Path,
    config: &ModelConfig,
    tokenizer_json: &str,
    tokenizer_config: &TokenizerConfig,
    weights: &dyn WeightSource,
    dtype: Dtype,
    name: String,
    source: String,
    source_hash: String,
    replace: Replace,
) -> Result<ModelDir> {
    let hash = content_hash(&source_hash, dtype);
    claim_and_write(
        out,
        &hash,
        replace,
        Parts {
            config,
            tokenizer_json,
            tokenizer_config,
            weights,
            dtype,
            name,
            source,
            source_hash,
            extra: &[],
        },
    )
}

/// Checks that a model directory may be written at `out`: nothing is there,
/// an empty directory, or (as `replace` allows) a charter model directory
/// holding only files charter wrote. Anything else is an error naming it:
/// [`Error::NotADirectory`], [`Error::NotModelDir`], [`Error::ModelExists`],
/// [`Error::ForeignFiles`].
pub fn check_output(out: &Path, replace: Replace) -> Result<()> {
    let meta = match fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(out, e)),
    };
    if !meta.is_dir() {
        return Err(Error::NotADirectory {
            path: out.to_path_buf(),
        });
    }
    if !out.join(PROVENANCE_FILE).is_file() {
        let mut entries = fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        return match entries.next() {
            None => Ok(()),
            Some(_) => Err(Error::NotModelDir {
                path: out.to_path_buf(),
            }),
        };
    }
    if replace == Replace::Nothing {
        let found = match ModelDir::open(out) {
            Ok(dir) => {
                let hash = &dir.provenance.content_hash;
                format!("model hash {}", hash.get(..16).unwrap_or(hash))
            }
            Err(e) => format!("a model directory that does not open: {e}"),
        };
        return Err(Error::ModelExists {
            path: out.to_path_buf(),
            found,
        });
    }
    let foreign = foreign_files(out)?;
    if !foreign.is_empty() {
        let mut files = foreign
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if foreign.len() > 5 {
            files += &format!(" and {} more", foreign.len() - 5);
        }
        return Err(Error::ForeignFiles {
            path: out.to_path_buf(),
            files,
        });
    }
    Ok(())
}

/// The output, if it is a model directory of this content hash whose files are as written.
fn up_to_date(out: &Path, content_hash: &str) -> Option<ModelDir> {
    ModelDir::open(out)
        .ok()
        .filter(|dir| dir.provenance.content_hash == content_hash)
}

/// What claiming an output found.
enum Claim {
    /// The output already is the model to write.
    Done(Box<ModelDir>),
    /// The output is ours to write.
    Write(OutputLock),
}

/// Takes the output's lock and checks what is there: the model itself (when
/// `content_hash` is given), or something `replace` lets a writer replace.
fn claim(out: &Path, content_hash: Option<&str>, replace: Replace) -> Result<Claim> {
    let parent = parent_dir(out);
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let lock = OutputLock::acquire(out)?;
    if let Some(existing) = content_hash.and_then(|h| up_to_date(out, h)) {
        return Ok(Claim::Done(Box::new(existing)));
    }
    check_output(out, replace)?;
    Ok(Claim::Write(lock))
}

/// Writes `parts` to `out` unless it already holds the model of `content_hash`
/// ([`claim`], then [`write_claimed`]).
fn claim_and_write(
    out: &Path,
    content_hash: &str,
    replace: Replace,
    parts: Parts<'_>,
) -> Result<ModelDir> {
    match claim(out, Some(content_hash), replace)? {
        Claim::Done(existing) => Ok(*existing),
        Claim::Write(lock) => write_claimed(lock, replace, parts),
    }
}

/// Everything a model directory is written from.
struct Parts<'a> {
    config: &'a ModelConfig,
    tokenizer_json: &'a str,
    tokenizer_config: &'a TokenizerConfig,
    weights: &'a dyn WeightSource,
    dtype: Dtype,
    name: String,
    source: String,
    source_hash: String,
    extra: &'a [(&'a str, &'a [u8])],
}

/// Writes the directory in the claimed output's staging directory and swaps
/// it in; on an error, removes what it wrote.
fn write_claimed(lock: OutputLock, replace: Replace, parts: Parts<'_>) -> Result<ModelDir> {
    if let Err(e) = stage(&lock, replace, parts) {
        let _ = lock.discard_partial();
        return Err(e);
    }
    let out = lock.out().to_path_buf();
    lock.commit()?;
    ModelDir::open(&out)
}

/// Writes the directory in the staging directory and records its files.
/// `charter-model.json` is written last: a directory without it was never
/// finished.
fn stage(lock: &OutputLock, replace: Replace, parts: Parts<'_>) -> Result<()> {
    let Parts {
        config,
        tokenizer_json,
        tokenizer_config,
        weights,
        dtype,
        name,
        source,
        source_hash,
        extra,
    } = parts;
    config.validate()?;
    let dir = lock.staging()?;
    write_json(&dir.join("config.json"), config)?;
    fs::write(dir.join("tokenizer.json"), tokenizer_json)
        .map_err(|e| Error::io(dir.join("tokenizer.json"), e))?;
    write_json(&dir.join("tokenizer_config.json"), tokenizer_config)?;
    write_hf_safetensors(&dir.join(WEIGHTS_FILE), config, weights)?;
    export(config, weights, &dir, dtype.weight_format())?;
    for (file, bytes) in extra {
        let path = dir.join(file);
        if let Some(sub) = path.parent() {
            fs::create_dir_all(sub).map_err(|e| Error::io(sub, e))?;
        }
        fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    }
    let content_hash = content_hash(&source_hash, dtype);
    let provenance = ModelProvenance {
        name,
        source,
        source_hash,
        dtype: dtype.as_str().to_string(),
        graph_version: GRAPH_VERSION,
        created_by: concat!("charter ", env!("CARGO_PKG_VERSION")).to_string(),
        content_hash,
        files: record_files(&dir)?,
    };
    write_json(&dir.join(PROVENANCE_FILE), &provenance)?;
    // Once more, now that the new directory is ready: something may have
    // appeared at the output while it was written.
    check_output(lock.out(), replace)
}

/// Every file under `dir` (but the provenance file) with its size, time and
/// hash, each synced to disk so the swap that follows publishes complete files.
fn record_files(dir: &Path) -> Result<Vec<FileRecord>> {
    let mut records = Vec::new();
    for rel in files_under(dir)? {
        if rel == PROVENANCE_FILE {
            continue;
        }
        let path = dir.join(&rel);
        let file = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(&file)
            .map_err(|e| Error::io(&path, e))?;
        records.push(FileRecord {
            path: rel,
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            blake3: hasher.finalize().to_hex().to_string(),
        });
    }
    Ok(records)
}

/// Checks a directory's files against their records (see the module docs).
fn verify_files(dir: &Path, records: &[FileRecord]) -> Result<()> {
    let modified = |file: &str, change: String| Error::Modified {
        dir: dir.to_path_buf(),
        file: file.to_string(),
        change,
    };
    for r in records {
        let inside = Path::new(&r.path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if r.path.is_empty() || !inside {
            return Err(Error::Unsupported(format!(
                "{}: `files` names `{}`, which is not a path inside the directory",
                dir.join(PROVENANCE_FILE).display(),
                r.path
            )));
        }
        let path = dir.join(&r.path);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(modified(&r.path, "it is gone".to_string()));
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        if meta.len() != r.size {
            return Err(modified(
                &r.path,
                format!("{} bytes, written as {}", meta.len(), r.size),
            ));
        }
        if mtime_ns(&meta) != r.mtime_ns && hash_file(&path)? != r.blake3 {
            return Err(modified(
                &r.path,
                "its contents differ from those written".to_string(),
            ));
        }
    }
    Ok(())
}

/// Files charter did not write in a model directory, by path inside it; none
/// for a directory written before charter recorded its files.
fn foreign_files(dir: &Path) -> Result<Vec<String>> {
    let provenance: ModelProvenance = read_json(&dir.join(PROVENANCE_FILE))?;
    if provenance.files.is_empty() {
        return Ok(Vec::new());
    }
    let ours: std::collections::BTreeSet<&str> = provenance
        .files
        .iter()
        .map(|r| r.path.as_str())
        .chain([PROVENANCE_FILE, CALIBRATION_FILE])
        .collect();
    Ok(files_under(dir)?
        .into_iter()
        .filter(|f| !ours.contains(f.as_str()))
        .collect())
}

/// Every file (and link) under `dir`, as sorted `/`-separated paths inside it.
fn files_under(dir: &Path) -> Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            let kind = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
            if kind.is_dir() {
                walk(&entry.path(), &format!("{rel}/"), out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    files.sort();
    Ok(files)
}

fn mtime_ns(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A model's content hash: blake3 over its source's hash, dtype and graph version.
fn content_hash(source_hash: &str, dtype: Dtype) -> String {
    blake3::hash(
        format!(
            "charter-model\0{source_hash}\0{}\0{GRAPH_VERSION}",
            dtype.as_str()
        )
        .as_bytes(),
    )
    .to_hex()
    .to_string()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Unsupported(format!("{}: {e}", path.display())))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::Export(e.to_string()))? + "\n";
    fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// blake3 of a file's bytes, lowercase hex.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    hasher.update_reader(file).map_err(|e| Error::io(path, e))?;
    Ok(hasher.finalize().to_hex().to_string())
}
