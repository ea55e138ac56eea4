//! A small ONNX graph builder: nodes with generated names, constants, and
//! weights streamed to an external-data file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use super::proto::{
    AttributeProto, Dimension, DimensionValue, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto, attribute_type, data_type,
};
use crate::error::{Error, Result};

/// Byte alignment of each weight in the external-data file, so ONNX Runtime can map it.
const WEIGHT_ALIGN: u64 = 4096;
/// Tensors at most this large are stored inline in the graph.
const INLINE_MAX: usize = 1024;

/// A dimension of a graph input or output.
#[derive(Debug, Clone)]
pub(crate) enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named, dynamic size (`batch`, `sequence`, …).
    Named(&'static str),
}

/// An attribute value.
pub(crate) enum Attr {
    Int(i64),
    Float(f32),
}

pub(crate) struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    data: BufWriter<File>,
    data_path: PathBuf,
    data_name: String,
    offset: u64,
    counter: usize,
}

impl GraphBuilder {
    /// A builder whose large weights go to `data_path` (referenced from the
    /// graph by its file name, so graph and data must stay side by side).
    pub(crate) fn new(data_path: &Path) -> Result<Self> {
        let file = File::create(data_path).map_err(|e| Error::io(data_path, e))?;
        Ok(GraphBuilder {
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            data: BufWriter::with_capacity(1 << 20, file),
            data_path: data_path.to_path_buf(),
            data_name: data_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            offset: 0,
            counter: 0,
        })
    }

    pub(crate) fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.inputs.push(value_info(name, elem_type, dims));
    }

    pub(crate) fn output(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.outputs.push(value_info(name, elem_type, dims));
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a node with explicit output names.
    pub(crate) fn node_into(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) {
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name,
            op_type: op.to_string(),
            attribute: attrs.into_iter().map(|(n, a)| attribute(n, a)).collect(),
            domain: domain.to_string(),
        });
    }

    /// Adds a default-domain node with one output and returns the output's name.
    pub(crate) fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.node_into(op, "", inputs, &[&out], attrs);
        out
    }

    /// Adds a `com.microsoft` node with one output and returns the output's name.
    pub(crate) fn contrib(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.node_into(op, "com.microsoft", inputs, &[&out], attrs);
        out
    }

    /// Renames the value `from` to `to` wherever a node reads or writes it
    /// (to give a graph output its declared name).
    pub(crate) fn rename(&mut self, from: &str, to: &str) {
        for node in &mut self.nodes {
            for name in node.input.iter_mut().chain(node.output.iter_mut()) {
                if name == from {
                    *name = to.to_string();
                }
            }
        }
    }

    /// An int64 constant (1-D, or a scalar with `scalar`).
    pub(crate) fn const_i64(&mut self, values: &[i64], scalar: bool) -> String {
        let name = self.fresh("const");
        let dims = if scalar {
            vec![]
        } else {
            vec![values.len() as i64]
        };
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims,
            data_type: data_type::INT64,
            name: name.clone(),
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    /// A named weight of any element type from its little-endian bytes.
    pub(crate) fn weight(
        &mut self,
        name: &str,
        dims: &[usize],
        elem_type: i32,
        bytes: &[u8],
    ) -> Result<String> {
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        if bytes.len() <= INLINE_MAX {
            self.initializers.push(TensorProto {
                dims,
                data_type: elem_type,
                name: name.to_string(),
                raw_data: bytes.to_vec(),
                ..Default::default()
            });
            return Ok(name.to_string());
        }
        let pad = (WEIGHT_ALIGN - self.offset % WEIGHT_ALIGN) % WEIGHT_ALIGN;
        let io = |e| Error::io(&self.data_path, e);
        self.data.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        self.offset += pad;
        self.data
            .write_all(bytes)
            .map_err(|e| Error::io(&self.data_path, e))?;
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: k.to_string(),
            value: v,
        };
        self.initializers.push(TensorProto {
            dims,
            data_type: elem_type,
            name: name.to_string(),
            external_data: vec![
                entry("location", self.data_name.clone()),
                entry("offset", self.offset.to_string()),
                entry("length", bytes.len().to_string()),
            ],
            data_location: 1,
            ..Default::default()
        });
        self.offset += bytes.len() as u64;
        Ok(name.to_string())
    }

    /// A named f32 weight.
    pub(crate) fn weight_f32(
        &mut self,
        name: &str,
        dims: &[usize],
        values: &[f32],
    ) -> Result<String> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.weight(name, dims, data_type::FLOAT, &bytes)
    }

    /// Writes the model to `path` and flushes the external data.
    pub(crate) fn finish(
        mut self,
        path: &Path,
        opsets: &[(&str, i64)],
        metadata: &[(&str, String)],
    ) -> Result<()> {
        self.data
            .flush()
            .map_err(|e| Error::io(&self.data_path, e))?;
        self.data
            .get_ref()
            .sync_all()
            .map_err(|e| Error::io(&self.data_path, e))?;
        let model = ModelProto {
            ir_version: 10,
            producer_name: "charter".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: String::new(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: "charter".into(),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
            }),
            opset_import: opsets
                .iter()
                .map(|(d, v)| OperatorSetIdProto {
                    domain: d.to_string(),
                    version: *v,
                })
                .collect(),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: k.to_string(),
                    value: v.clone(),
                })
                .collect(),
        };
        std::fs::write(path, model.encode_to_vec()).map_err(|e| Error::io(path, e))
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => DimensionValue::DimValue(*v),
                Dim::Named(n) => DimensionValue::DimParam(n.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.i = i;
            a.r#type = attribute_type::INT;
        }
        Attr::Float(f) => {
            a.f = f;
            a.r#type = attribute_type::FLOAT;
        }
    }
    a
}
