//! The GGUF container: header, metadata, tensor infos and on-demand tensor data.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//! Versions 2 and 3 share one little-endian layout:
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
//! metadata:     key (string) | value_type u32 | value            × metadata_kv_count
//! tensor infos: name (string) | n_dims u32 | ne u64 × n_dims | ggml_type u32 | offset u64
//! padding to `general.alignment` (default 32)
//! tensor data:  each tensor at data_start + offset, offsets multiples of the alignment
//! ```
//!
//! Strings are a u64 byte length followed by UTF-8 bytes. Everything read
//! from the file is checked against the file's real size before memory is
//! allocated for it.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ggml::GgmlType;
use crate::metadata::{Array, Metadata, Value, ValueType};
use crate::quant::{self, Block};
use crate::reader::{Cursor, Source};

/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The metadata key that sets the data alignment.
pub const KEY_ALIGNMENT: &str = "general.alignment";

/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;

/// Deepest nesting of metadata arrays accepted; bounds the parser's recursion.
const MAX_ARRAY_DEPTH: u32 = 16;

/// Smallest metadata entry: key length, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;

/// Smallest tensor info: name length, n_dims, ggml type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// The largest dimension or element count ggml accepts (`int64_t`).
const MAX_COUNT: u64 = i64::MAX as u64;

/// The name used in errors for files parsed from memory.
const MEMORY_PATH: &str = "<memory>";

/// One tensor's description: name, type, dimensions and where its data lies.
///
/// # Shapes
///
/// GGUF stores dimensions innermost first, as ggml's `ne`: `ne[0]` is the
/// length of a row (the contiguous dimension). [`TensorInfo::shape`] gives
/// them outermost first, as PyTorch, NumPy and ONNX do, so a weight matrix
/// with `ne = [in, out]` has `shape() == [out, in]` and is stored row-major
/// in that shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    ggml_type: GgmlType,
    n_dims: usize,
    ne: [u64; MAX_DIMS as usize],
    offset: u64,
    file_offset: u64,
    n_elements: u64,
    n_rows: u64,
    row_bytes: u64,
    n_bytes: u64,
}

impl TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tensor's ggml type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// The dimensions innermost first, as stored (ggml's `ne`).
    pub fn ne(&self) -> &[u64] {
        &self.ne[..self.n_dims]
    }

    /// The dimensions outermost first (reversed `ne`): `[rows, row_len]` for a matrix.
    pub fn shape(&self) -> Vec<u64> {
        self.ne().iter().rev().copied().collect()
    }

    /// The number of elements.
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// The length of a row, `ne[0]` (1 for a tensor with no dimensions).
    pub fn row_len(&self) -> u64 {
        self.ne[0]
    }

    /// The number of rows: the product of all dimensions but `ne[0]`.
    pub fn n_rows(&self) -> u64 {
        self.n_rows
    }

    /// The stored size of one row in bytes.
    pub fn row_bytes(&self) -> u64 {
        self.row_bytes
    }

    /// The stored size of the tensor's data in bytes.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// The data's offset from the start of the data section, as stored.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The data's absolute offset in the file.
    pub fn file_offset(&self) -> u64 {
        self.file_offset
    }
}

/// An open GGUF file: metadata and tensor infos read eagerly, tensor data
/// read on demand with positioned reads.
///
/// Reads take `&self`, so one `Gguf` can serve several threads.
///
/// ```no_run
/// use charter_model::Gguf;
///
/// let gguf = Gguf::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
/// let layers = gguf.metadata().get_u32("llama.block_count")?;
/// let norm = gguf.dequantize("blk.0.attn_norm.weight")?;
/// let first_tokens = gguf.dequantize_rows("token_embd.weight", 0..4)?;
/// # Ok::<(), charter_model::Error>(())
/// ```
pub struct Gguf {
    path: PathBuf,
    source: Source,
    file_size: u64,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("file_size", &self.file_size)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Opens and parses the GGUF file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Self::parse(path.to_owned(), Source::File(file), file_size)
    }

    /// Parses a whole GGUF file held in memory (copied); errors name it `<memory>`.
    ///
    /// This is the entry point for fuzzing the parser.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_vec(bytes.to_vec())
    }

    /// Parses a whole GGUF file held in memory, taking ownership of the buffer.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self> {
        let file_size = bytes.len() as u64;
        Self::parse(PathBuf::from(MEMORY_PATH), Source::Memory(bytes), file_size)
    }

    fn parse(path: PathBuf, source: Source, file_size: u64) -> Result<Self> {
        let mut cur = Cursor::new(&source, &path, file_size);
        let version = read_preamble(&mut cur, &path)?;

        let at = cur.pos();
        let tensor_count = cur.u64("tensor count")?;
        cur.plausible_count(at, tensor_count, MIN_TENSOR_INFO_BYTES, "tensor count")?;
        let at = cur.pos();
        let kv_count = cur.u64("metadata count")?;
        let kv_count = cur.plausible_count(at, kv_count, MIN_KV_BYTES, "metadata count")?;

        let mut metadata = Metadata::new(&path);
        for i in 0..kv_count {
            cur.context = format!("metadata entry #{i}");
            let key_at = cur.pos();
            let key = cur.string("key")?;
            cur.context = format!("metadata `{key}`");
            let value = read_value(&mut cur)?;
            if !metadata.insert(key, value) {
                return Err(cur.error_at(key_at, "the key appears twice"));
            }
        }
        let alignment = alignment(&metadata, &path)?;

        cur.context = "tensor infos".to_owned();
        let tensor_count = cur.plausible_count(
            cur.pos(),
            tensor_count,
            MIN_TENSOR_INFO_BYTES,
            "tensor count",
        )?;
        let mut tensors = Vec::with_capacity(tensor_count);
        let mut by_name = HashMap::with_capacity(tensor_count);
        for i in 0..tensor_count {
            cur.context = format!("tensor info #{i}");
            let name = cur.string("tensor name")?;
            cur.context = format!("tensor info #{i} `{name}`");
            let info = read_tensor_info(&mut cur, name, &path)?;
            if by_name.insert(info.name.clone(), i).is_some() {
                return Err(Error::tensor(
                    &path,
                    info.name,
                    format!("the name appears twice in the tensor infos (again as #{i})"),
                ));
            }
            tensors.push(info);
        }

        let end_of_infos = cur.pos();
        let data_offset = end_of_infos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| cur.error_at(end_of_infos, "the data section start overflows"))?;
        for info in &mut tensors {
            place_tensor(info, data_offset, alignment, file_size, &path)?;
        }

        Ok(Self {
            path,
            source,
            file_size,
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            by_name,
        })
    }

    /// The file's path (`<memory>` for [`Gguf::parse_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The file's size in bytes.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The data alignment (`general.alignment`, or 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The metadata key-value pairs.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
        })
    }

    fn read_at(&self, offset: u64, len: u64, tensor: &str) -> Result<Vec<u8>> {
        // The range was checked against the file size when the file was parsed.
        let len = usize::try_from(len)
            .map_err(|_| Error::tensor(&self.path, tensor, "the data does not fit in memory"))?;
        let mut buf = vec![0; len];
        self.source
            .read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(buf)
    }

    /// The byte range of `rows` of `info`, checked.
    fn rows_range(&self, info: &TensorInfo, rows: &Range<u64>) -> Result<(u64, u64)> {
        if rows.start > rows.end || rows.end > info.n_rows {
            return Err(Error::tensor(
                &self.path,
                &info.name,
                format!(
                    "rows {}..{} are out of range (the tensor has {} rows)",
                    rows.start, rows.end, info.n_rows
                ),
            ));
        }
        // Within n_bytes, which fits in the file.
        let start = info.file_offset + rows.start * info.row_bytes;
        Ok((start, (rows.end - rows.start) * info.row_bytes))
    }

    /// The tensor's raw stored bytes.
    pub fn read_raw(&self, name: &str) -> Result<Vec<u8>> {
        let info = self.require(name)?;
        self.read_at(info.file_offset, info.n_bytes, name)
    }

    /// The raw stored bytes of rows `rows` (rows of length `ne[0]`).
    pub fn read_raw_rows(&self, name: &str, rows: Range<u64>) -> Result<Vec<u8>> {
        let info = self.require(name)?;
        let (start, len) = self.rows_range(info, &rows)?;
        self.read_at(start, len, name)
    }

    fn dequantizable(&self, name: &str) -> Result<&TensorInfo> {
        let info = self.require(name)?;
        if !info.ggml_type.is_dequantizable() {
            return Err(Error::UnsupportedType {
                path: self.path.clone(),
                tensor: name.to_owned(),
                ggml_type: info.ggml_type,
            });
        }
        Ok(info)
    }

    fn dequantize_bytes(&self, info: &TensorInfo, bytes: &[u8]) -> Result<Vec<f32>> {
        quant::dequantize(info.ggml_type, bytes)
            .map_err(|e| Error::tensor(&self.path, &info.name, e.to_string()))
    }

    /// The whole tensor as f32, row-major in [`TensorInfo::shape`] order.
    ///
    /// Supported types: F32, F16, BF16, Q8_0, Q4_0, Q4_1; others give
    /// [`Error::UnsupportedType`].
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.dequantizable(name)?;
        let bytes = self.read_at(info.file_offset, info.n_bytes, name)?;
        self.dequantize_bytes(info, &bytes)
    }

    /// Rows `rows` of the tensor as f32 (`(rows.end - rows.start) · ne[0]` values),
    /// for example a few token embeddings without reading the whole table.
    pub fn dequantize_rows(&self, name: &str, rows: Range<u64>) -> Result<Vec<f32>> {
        let info = self.dequantizable(name)?;
        let (start, len) = self.rows_range(info, &rows)?;
        let bytes = self.read_at(start, len, name)?;
        self.dequantize_bytes(info, &bytes)
    }

    /// The tensor's quantised blocks in storage order, without dequantising.
    ///
    /// The tensor's type must be `B`'s ([`BlockQ4_0`](crate::BlockQ4_0),
    /// [`BlockQ4_1`](crate::BlockQ4_1) or [`BlockQ8_0`](crate::BlockQ8_0)).
    /// Row `r` is blocks `r · ne[0] / 32 .. (r + 1) · ne[0] / 32`.
    pub fn blocks<B: Block>(&self, name: &str) -> Result<Vec<B>> {
        let info = self.require(name)?;
        if info.ggml_type != B::GGML_TYPE {
            return Err(Error::tensor(
                &self.path,
                name,
                format!(
                    "has type {}, not the {} blocks requested",
                    info.ggml_type,
                    B::GGML_TYPE
                ),
            ));
        }
        let bytes = self.read_at(info.file_offset, info.n_bytes, name)?;
        quant::decode_blocks(&bytes).ok_or_else(|| {
            Error::tensor(
                &self.path,
                name,
                format!("{} bytes is not a whole number of blocks", bytes.len()),
            )
        })
    }
}

/// Reads the magic and version.
fn read_preamble(cur: &mut Cursor<'_>, path: &Path) -> Result<u32> {
    let magic: [u8; 4] = cur.array("the magic")?;
    if &magic != b"GGUF" {
        return Err(Error::NotGguf {
            path: path.to_owned(),
            found: format!("`{}`", magic.escape_ascii()),
        });
    }
    let version = cur.u32("the version")?;
    if !matches!(version, 2 | 3) {
        let swapped = version.swap_bytes();
        let found = if matches!(swapped, 1..=3) {
            format!("{swapped} in big-endian byte order")
        } else {
            version.to_string()
        };
        return Err(Error::UnsupportedVersion {
            path: path.to_owned(),
            found,
        });
    }
    Ok(version)
}

/// Reads a value type tag and the value.
fn read_value(cur: &mut Cursor<'_>) -> Result<Value> {
    let value_type = read_value_type(cur, "value type")?;
    Ok(match value_type {
        ValueType::U8 => Value::U8(u8::from_le_bytes(cur.array("uint8 value")?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(cur.array("int8 value")?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cur.array("uint16 value")?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cur.array("int16 value")?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(cur.array("uint32 value")?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(cur.array("int32 value")?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(cur.array("float32 value")?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(cur.array("uint64 value")?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(cur.array("int64 value")?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(cur.array("float64 value")?)),
        ValueType::Bool => {
            let at = cur.pos();
            let [byte] = cur.array("bool value")?;
            Value::Bool(
                parse_bool(byte).ok_or_else(|| {
                    cur.error_at(at, format!("a bool must be 0 or 1, found {byte}"))
                })?,
            )
        }
        ValueType::String => Value::String(cur.string("string value")?),
        ValueType::Array => Value::Array(read_array(cur, 0)?),
    })
}

fn read_value_type(cur: &mut Cursor<'_>, what: &str) -> Result<ValueType> {
    let at = cur.pos();
    let id = cur.u32(what)?;
    ValueType::from_id(id)
        .ok_or_else(|| cur.error_at(at, format!("{what} {id} is not a GGUF value type (0..=12)")))
}

fn parse_bool(byte: u8) -> Option<bool> {
    match byte {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// Reads `n` fixed-size little-endian elements.
fn fixed<const N: usize, T>(
    cur: &mut Cursor<'_>,
    n: usize,
    what: &str,
    from_le: fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    // `n · N` bytes were checked to fit in the file by `plausible_count`.
    let bytes = cur.take((n * N) as u64, what)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut raw = [0; N];
            raw.copy_from_slice(chunk);
            from_le(raw)
        })
        .collect())
}

/// Reads an array's element type, count and elements.
fn read_array(cur: &mut Cursor<'_>, depth: u32) -> Result<Array> {
    let start = cur.pos();
    if depth >= MAX_ARRAY_DEPTH {
        return Err(cur.error_at(
            start,
            format!("arrays are nested more than {MAX_ARRAY_DEPTH} deep"),
        ));
    }
    let element_type = read_value_type(cur, "array element type")?;
    let count_at = cur.pos();
    let count = cur.u64("array length")?;
    let what = format!("array of {element_type}");
    let n = cur.plausible_count(
        count_at,
        count,
        element_type.min_size(),
        &format!("the length of an {what}"),
    )?;
    Ok(match element_type {
        ValueType::U8 => Array::U8(cur.take(n as u64, &what)?.to_vec()),
        ValueType::I8 => Array::I8(fixed(cur, n, &what, i8::from_le_bytes)?),
        ValueType::U16 => Array::U16(fixed(cur, n, &what, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(fixed(cur, n, &what, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(fixed(cur, n, &what, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(fixed(cur, n, &what, i32::from_le_bytes)?),
        ValueType::F32 => Array::F32(fixed(cur, n, &what, f32::from_le_bytes)?),
        ValueType::U64 => Array::U64(fixed(cur, n, &what, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(fixed(cur, n, &what, i64::from_le_bytes)?),
        ValueType::F64 => Array::F64(fixed(cur, n, &what, f64::from_le_bytes)?),
        ValueType::Bool => {
            let at = cur.pos();
            let bytes = cur.take(n as u64, &what)?;
            match bytes.iter().position(|&b| b > 1) {
                None => Array::Bool(bytes.iter().map(|&b| b == 1).collect()),
                Some(i) => {
                    let problem = format!(
                        "element {i} of a bool array must be 0 or 1, found {}",
                        bytes[i]
                    );
                    return Err(cur.error_at(at + i as u64, problem));
                }
            }
        }
        ValueType::String => {
            let mut strings = Vec::with_capacity(n);
            for _ in 0..n {
                strings.push(cur.string("array element")?);
            }
            Array::String(strings)
        }
        ValueType::Array => {
            let mut arrays = Vec::with_capacity(n);
            for _ in 0..n {
                arrays.push(read_array(cur, depth + 1)?);
            }
            Array::Array(arrays)
        }
    })
}

/// The data alignment from `general.alignment`: a non-zero power of two `uint32`.
fn alignment(metadata: &Metadata, path: &Path) -> Result<u64> {
    match metadata.get(KEY_ALIGNMENT) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(&Value::U32(a)) if a.is_power_of_two() => Ok(a.into()),
        Some(other) => Err(Error::KeyType {
            path: path.to_owned(),
            key: KEY_ALIGNMENT.to_owned(),
            expected: "a uint32 power of two".to_owned(),
            found: match other {
                Value::U32(a) => format!("uint32 {a}"),
                other => other.type_description(),
            },
        }),
    }
}

/// Reads a tensor info after its name and checks everything that does not
/// depend on where the data section starts.
fn read_tensor_info(cur: &mut Cursor<'_>, name: String, path: &Path) -> Result<TensorInfo> {
    let n_dims = cur.u32("n_dims")?;
    if n_dims > MAX_DIMS {
        return Err(Error::tensor(
            path,
            name,
            format!("has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}"),
        ));
    }
    let mut ne = [1u64; MAX_DIMS as usize];
    for (d, slot) in ne.iter_mut().enumerate().take(n_dims as usize) {
        *slot = cur.u64(&format!("dimension {d}"))?;
    }
    let type_id = cur.u32("ggml type")?;
    let offset = cur.u64("data offset")?;

    let fail = |problem: String| Error::tensor(path, name.as_str(), problem);
    let ggml_type = GgmlType::from_id(type_id)
        .ok_or_else(|| fail(format!("unknown ggml type id {type_id}")))?;
    let Some((block_len, block_bytes)) = ggml_type.block_layout() else {
        return Err(fail(format!(
            "type {ggml_type} (id {type_id}) has been removed from ggml; its layout is unknown"
        )));
    };
    let dims = &ne[..n_dims as usize];
    if let Some(d) = dims.iter().position(|&n| n > MAX_COUNT) {
        return Err(fail(format!(
            "dimension {d} is {}, larger than the int64 maximum",
            dims[d]
        )));
    }
    let product = |dims: &[u64]| {
        dims.iter().try_fold(1u64, |acc, &n| {
            acc.checked_mul(n).filter(|&p| p <= MAX_COUNT)
        })
    };
    let overflow = || {
        fail(format!(
            "the element count of dimensions {dims:?} overflows"
        ))
    };
    let n_elements = product(dims).ok_or_else(overflow)?;
    let n_rows = product(dims.get(1..).unwrap_or(&[])).ok_or_else(overflow)?;
    let row_len = ne[0];
    if !row_len.is_multiple_of(block_len) {
        return Err(fail(format!(
            "row length ne[0] = {row_len} is not a multiple of the {ggml_type} block size {block_len}"
        )));
    }
    let row_bytes = (row_len / block_len)
        .checked_mul(block_bytes)
        .ok_or_else(overflow)?;
    let n_bytes = row_bytes.checked_mul(n_rows).ok_or_else(overflow)?;
    Ok(TensorInfo {
        name,
        ggml_type,
        n_dims: n_dims as usize,
        ne,
        offset,
        file_offset: 0,
        n_elements,
        n_rows,
        row_bytes,
        n_bytes,
    })
}

/// Places a tensor in the data section and checks that its data lies inside the file.
fn place_tensor(
    info: &mut TensorInfo,
    data_offset: u64,
    alignment: u64,
    file_size: u64,
    path: &Path,
) -> Result<()> {
    let fail = |problem: String| Error::tensor(path, info.name.as_str(), problem);
    if !info.offset.is_multiple_of(alignment) {
        return Err(fail(format!(
            "data offset {} is not a multiple of the alignment {alignment}",
            info.offset
        )));
    }
    let start = data_offset.checked_add(info.offset);
    let end = start.and_then(|s| s.checked_add(info.n_bytes));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_size => {
            info.file_offset = start;
            Ok(())
        }
        (Some(start), Some(end)) => Err(fail(format!(
            "data [{start}, {end}) runs past the end of the file (size {file_size})"
        ))),
        _ => Err(fail(format!(
            "data at offset {} + {} bytes after the data section start {data_offset} \
             overflows a 64-bit file position",
            info.offset, info.n_bytes
        ))),
    }
}
