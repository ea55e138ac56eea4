//! safetensors files: reading HuggingFace checkpoints (F32, F16 and BF16
//! tensors, as f32) and writing a model directory's f32 `model.safetensors`.
//!
//! The [format](https://github.com/huggingface/safetensors#format): an 8-byte
//! little-endian header length, a JSON header giving each tensor's dtype,
//! shape and byte range, then the tensor data, row-major and little-endian.
//! The `safetensors` crate parses and validates the header (contiguous
//! ranges, sizes that match dtype and shape); tensor data is read on demand
//! with positioned reads, because a checkpoint may be larger than memory and
//! the workspace denies the `unsafe` a memory map needs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ::safetensors::Dtype as TensorDtype;
use ::safetensors::tensor::{Metadata, TensorInfo};
use half::{bf16, f16};

use crate::error::{Error, Result};

/// Tensors by name, each as (shape outermost first, row-major f32 values).
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Bytes in the length prefix.
const LEN_BYTES: u64 = 8;

/// The largest header accepted, as in the `safetensors` crate.
const MAX_HEADER: u64 = 100_000_000;

/// One safetensors file: its header read and checked on open, each tensor's
/// data read when asked for.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    data_start: u64,
    metadata: Metadata,
}

impl SafetensorsFile {
    /// Opens a safetensors file and checks that its header describes exactly
    /// the bytes that follow it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let malformed = |offset: u64, problem: String| Error::Malformed {
            path: path.clone(),
            offset,
            context: "safetensors header".to_string(),
            problem,
        };
        if len < LEN_BYTES {
            return Err(malformed(
                0,
                format!("the file has {len} bytes, fewer than the 8-byte header length"),
            ));
        }
        let mut prefix = [0u8; LEN_BYTES as usize];
        file.read_exact_at(&mut prefix, 0)
            .map_err(|e| Error::io(&path, e))?;
        let n = u64::from_le_bytes(prefix);
        if n > MAX_HEADER || n > len - LEN_BYTES {
            return Err(malformed(
                0,
                format!(
                    "header length {n} is larger than {} (the file has {len} bytes)",
                    MAX_HEADER.min(len - LEN_BYTES)
                ),
            ));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, LEN_BYTES)
            .map_err(|e| Error::io(&path, e))?;
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| malformed(LEN_BYTES, e.to_string()))?;
        let data_start = LEN_BYTES + n;
        let data_len = metadata.data_len() as u64;
        if data_start + data_len != len {
            return Err(malformed(
                LEN_BYTES,
                format!(
                    "the header describes {data_len} bytes of tensor data, the file holds {}",
                    len - data_start
                ),
            ));
        }
        Ok(SafetensorsFile {
            path,
            file,
            data_start,
            metadata,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, in the order of their data in the file.
    pub fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    /// A tensor's shape, outermost first, or `None` if the file has no such tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.metadata.info(name).map(|i| i.shape.as_slice())
    }

    /// An entry of the header's `__metadata__` (`format` is `pt` for files
    /// PyTorch's loaders accept).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(key))
            .map(String::as_str)
    }

    /// Every tensor by name as (shape, f32 values); tensors of other types
    /// than F32, F16 and BF16 are left out.
    pub fn read_all(&self) -> Result<Tensors> {
        let mut out = Tensors::new();
        for name in self.names() {
            if let Some(tensor) = self.read_f32(&name)? {
                out.insert(name, tensor);
            }
        }
        Ok(out)
    }

    /// The tensor named `name` as (shape, f32 values), row-major, or `None`
    /// if the file has no such tensor. F32, F16 and BF16 tensors are read.
    pub fn read_f32(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some(info) = self.metadata.info(name) else {
            return Ok(None);
        };
        let (start, end) = info.data_offsets;
        let mut bytes = vec![0u8; end - start];
        self.file
            .read_exact_at(&mut bytes, self.data_start + start as u64)
            .map_err(|e| Error::io(&self.path, e))?;
        let values = match info.dtype {
            TensorDtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            TensorDtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            TensorDtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::tensor(
                    &self.path,
                    name,
                    format!("dtype {other:?}; charter reads F32, F16 and BF16 tensors"),
                ));
            }
        };
        Ok(Some((info.shape.clone(), values)))
    }
}

/// Writes an f32 safetensors file one tensor at a time, so a model never
/// has to be in memory whole.
///
/// The header comes first in the file but needs every tensor's shape, so
/// tensor data goes to an anonymous temporary file beside the output until
/// [`SafetensorsWriter::finish`] writes the header and copies it after.
#[derive(Debug)]
pub struct SafetensorsWriter {
    path: PathBuf,
    data: BufWriter<File>,
    tensors: Vec<(String, TensorInfo)>,
    names: BTreeSet<String>,
    offset: usize,
}

impl SafetensorsWriter {
    /// Starts a safetensors file at `path` (created by [`SafetensorsWriter::finish`]).
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let data = tempfile::tempfile_in(&parent).map_err(|e| Error::io(&parent, e))?;
        Ok(SafetensorsWriter {
            path,
            data: BufWriter::with_capacity(1 << 20, data),
            tensors: Vec::new(),
            names: BTreeSet::new(),
            offset: 0,
        })
    }

    /// Appends an f32 tensor of `shape` (outermost first) with row-major `values`.
    pub fn push(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(Error::tensor(
                &self.path,
                name,
                format!("shape {shape:?} holds {n} values, {} given", values.len()),
            ));
        }
        if !self.names.insert(name.to_string()) {
            return Err(Error::tensor(&self.path, name, "written twice"));
        }
        for v in values {
            self.data
                .write_all(&v.to_le_bytes())
                .map_err(|e| Error::io(&self.path, e))?;
        }
        let end = self.offset + 4 * n;
        self.tensors.push((
            name.to_string(),
            TensorInfo {
                dtype: TensorDtype::F32,
                shape: shape.to_vec(),
                data_offsets: (self.offset, end),
            },
        ));
        self.offset = end;
        Ok(())
    }

    /// Writes the file: header (with `metadata` as its `__metadata__`), then
    /// the tensors in the order they were pushed.
    pub fn finish(self, metadata: &[(&str, &str)]) -> Result<()> {
        let path = self.path;
        let info: HashMap<String, String> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let header = Metadata::new(Some(info), self.tensors)
            .map_err(|e| Error::Export(format!("{}: {e:?}", path.display())))?;
        let mut header = serde_json::to_vec(&header).map_err(|e| Error::Export(e.to_string()))?;
        // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
        header.resize(header.len().next_multiple_of(LEN_BYTES as usize), b' ');
        let mut data = self
            .data
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        data.rewind().map_err(|e| Error::io(&path, e))?;
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|()| out.write_all(&header))
            .and_then(|()| std::io::copy(&mut data, &mut out).map(|_| ()))
            .and_then(|()| out.flush())
            .map_err(|e| Error::io(&path, e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn written_files_read_back_and_pass_the_reference_parser() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let mut w = SafetensorsWriter::create(&path).unwrap();
        w.push("b", &[3], &[1.0, -2.5, 3.25]).unwrap();
        w.push("a", &[2, 2], &[0.5, 0.25, -1.0, 7.0]).unwrap();
        assert!(w.push("a", &[1], &[0.0]).is_err());
        assert!(w.push("c", &[2], &[0.0]).is_err());
        w.finish(&[("format", "pt")]).unwrap();

        let bytes = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(header_len % 8, 0);
        let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!(st.tensor("a").unwrap().shape(), &[2, 2]);

        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.names(), ["b", "a"]);
        assert_eq!(f.metadata("format"), Some("pt"));
        assert_eq!(
            f.read_f32("a").unwrap().unwrap(),
            (vec![2, 2], vec![0.5, 0.25, -1.0, 7.0])
        );
        assert!(f.read_f32("z").unwrap().is_none());
    }

    /// A file with one tensor of `dtype` holding `data`.
    fn raw_file(dir: &Path, dtype: &str, shape: &[usize], data: &[u8]) -> PathBuf {
        let header = format!(
            r#"{{"t":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[0,{}]}}}}"#,
            data.len()
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        let path = dir.join(format!("{dtype}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn half_precision_tensors_read_as_f32() {
        let dir = tempfile::tempdir().unwrap();
        let values = [1.0f32, -0.5, 3.0];
        let f16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        let bf16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        for (dtype, data) in [("F16", f16_bytes), ("BF16", bf16_bytes)] {
            let f = SafetensorsFile::open(raw_file(dir.path(), dtype, &[3], &data)).unwrap();
            assert_eq!(f.read_f32("t").unwrap().unwrap().1, values, "{dtype}");
        }
        let f = SafetensorsFile::open(raw_file(dir.path(), "I32", &[1], &[0; 4])).unwrap();
        let err = f.read_f32("t").unwrap_err().to_string();
        assert!(err.contains("tensor `t`: dtype I32"), "{err}");
    }

    #[test]
    fn a_header_that_disagrees_with_the_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = raw_file(dir.path(), "F32", &[2], &[0; 8]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        let err = SafetensorsFile::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("describes 8 bytes of tensor data, the file holds 7"),
            "{err}"
        );
        std::fs::write(&path, u64::MAX.to_le_bytes()).unwrap();
        let err = SafetensorsFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("header length"), "{err}");
    }
}
