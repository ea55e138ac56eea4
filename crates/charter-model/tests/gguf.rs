//! The GGUF reader against files built here: round trips of every metadata
//! and tensor type, malformed files, corruption, and the real default model.

use std::path::PathBuf;

use charter_model::{
    Array, Block, BlockQ4_0, BlockQ4_1, BlockQ8_0, Error, GgmlType, Gguf, Value, f16,
};

// ggml type ids, as written in tensor infos.
const F32: u32 = 0;
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q4_1: u32 = 3;
const Q8_0: u32 = 8;
const Q4_K: u32 = 12;
const BF16: u32 = 30;

/// A tiny GGUF writer: metadata, tensor infos and data, with escape hatches
/// for writing invalid files.
struct Writer {
    version: u32,
    alignment: u64,
    n_kv: u64,
    kvs: Vec<u8>,
    n_tensors: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s);
}

fn put_payload(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => buf.extend(v.to_le_bytes()),
        Value::I8(v) => buf.extend(v.to_le_bytes()),
        Value::U16(v) => buf.extend(v.to_le_bytes()),
        Value::I16(v) => buf.extend(v.to_le_bytes()),
        Value::U32(v) => buf.extend(v.to_le_bytes()),
        Value::I32(v) => buf.extend(v.to_le_bytes()),
        Value::F32(v) => buf.extend(v.to_le_bytes()),
        Value::Bool(v) => buf.push(u8::from(*v)),
        Value::String(s) => put_str(buf, s.as_bytes()),
        Value::Array(a) => put_array(buf, a),
        Value::U64(v) => buf.extend(v.to_le_bytes()),
        Value::I64(v) => buf.extend(v.to_le_bytes()),
        Value::F64(v) => buf.extend(v.to_le_bytes()),
    }
}

fn put_array(buf: &mut Vec<u8>, array: &Array) {
    buf.extend(array.element_type().id().to_le_bytes());
    buf.extend((array.len() as u64).to_le_bytes());
    fn each<T>(buf: &mut Vec<u8>, items: &[T], wrap: impl Fn(&T) -> Value) {
        for item in items {
            put_payload(buf, &wrap(item));
        }
    }
    match array {
        Array::U8(v) => each(buf, v, |&x| Value::U8(x)),
        Array::I8(v) => each(buf, v, |&x| Value::I8(x)),
        Array::U16(v) => each(buf, v, |&x| Value::U16(x)),
        Array::I16(v) => each(buf, v, |&x| Value::I16(x)),
        Array::U32(v) => each(buf, v, |&x| Value::U32(x)),
        Array::I32(v) => each(buf, v, |&x| Value::I32(x)),
        Array::F32(v) => each(buf, v, |&x| Value::F32(x)),
        Array::Bool(v) => each(buf, v, |&x| Value::Bool(x)),
        Array::String(v) => each(buf, v, |x| Value::String(x.clone())),
        Array::Array(v) => each(buf, v, |x| Value::Array(x.clone())),
        Array::U64(v) => each(buf, v, |&x| Value::U64(x)),
        Array::I64(v) => each(buf, v, |&x| Value::I64(x)),
        Array::F64(v) => each(buf, v, |&x| Value::F64(x)),
    }
}

impl Writer {
    fn new(version: u32) -> Self {
        Self {
            version,
            alignment: 32,
            n_kv: 0,
            kvs: Vec::new(),
            n_tensors: 0,
            infos: Vec::new(),
            data: Vec::new(),
        }
    }

    fn kv(self, key: &str, value: &Value) -> Self {
        let mut payload = Vec::new();
        put_payload(&mut payload, value);
        self.raw_kv(key.as_bytes(), value.value_type().id(), &payload)
    }

    fn raw_kv(mut self, key: &[u8], value_type: u32, payload: &[u8]) -> Self {
        put_str(&mut self.kvs, key);
        self.kvs.extend(value_type.to_le_bytes());
        self.kvs.extend(payload);
        self.n_kv += 1;
        self
    }

    fn alignment(mut self, alignment: u32) -> Self {
        self.alignment = alignment.into();
        self.kv("general.alignment", &Value::U32(alignment))
    }

    /// A tensor info only: no data is written.
    fn info(mut self, name: &str, ne: &[u64], ggml_type: u32, offset: u64) -> Self {
        put_str(&mut self.infos, name.as_bytes());
        self.infos.extend((ne.len() as u32).to_le_bytes());
        for &n in ne {
            self.infos.extend(n.to_le_bytes());
        }
        self.infos.extend(ggml_type.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    /// A tensor info and its data, placed at the next aligned offset.
    fn tensor(mut self, name: &str, ne: &[u64], ggml_type: u32, data: &[u8]) -> Self {
        while !(self.data.len() as u64).is_multiple_of(self.alignment) {
            self.data.push(0);
        }
        let offset = self.data.len() as u64;
        self.data.extend(data);
        self.info(name, ne, ggml_type, offset)
    }

    fn header(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kvs);
        out.extend(&self.infos);
        out
    }

    /// Where the data section starts.
    fn data_offset(&self) -> u64 {
        (self.header().len() as u64).next_multiple_of(self.alignment)
    }

    /// The file; padding before the data section only when there are tensors,
    /// so that a header-only file ends where its metadata does.
    fn build(&self) -> Vec<u8> {
        let mut out = self.header();
        while self.n_tensors > 0 && !(out.len() as u64).is_multiple_of(self.alignment) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn parse_err(bytes: &[u8]) -> Error {
    Gguf::parse_bytes(bytes).expect_err("the file should be rejected")
}

/// One value of every metadata type, arrays of every element type, nested and empty arrays.
fn every_value() -> Vec<(String, Value)> {
    let values = vec![
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60_000)),
        ("t.i16", Value::I16(-30_000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(1e-5)),
        ("t.bool", Value::Bool(true)),
        ("t.false", Value::Bool(false)),
        ("t.string", Value::String("héllo, 世界".into())),
        ("t.empty_string", Value::String(String::new())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(-1.5e300)),
        ("a.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("a.i8", Value::Array(Array::I8(vec![-128, 127]))),
        ("a.u16", Value::Array(Array::U16(vec![1, 65_535]))),
        ("a.i16", Value::Array(Array::I16(vec![-1, 2]))),
        ("a.u32", Value::Array(Array::U32(vec![7, 8, 9]))),
        ("a.i32", Value::Array(Array::I32(vec![-3, 3]))),
        ("a.f32", Value::Array(Array::F32(vec![0.5, -0.25]))),
        ("a.bool", Value::Array(Array::Bool(vec![true, false, true]))),
        (
            "a.string",
            Value::Array(Array::String(vec![
                "a b".into(),
                String::new(),
                "Ġthe".into(),
            ])),
        ),
        ("a.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        ("a.i64", Value::Array(Array::I64(vec![i64::MIN, i64::MAX]))),
        ("a.f64", Value::Array(Array::F64(vec![1.0, 2.5]))),
        ("a.empty", Value::Array(Array::U32(vec![]))),
        (
            "a.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::F32(vec![3.0])]),
                Array::Bool(vec![]),
            ])),
        ),
    ];
    values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[test]
fn every_metadata_type_round_trips_in_v2_and_v3() {
    for version in [2, 3] {
        let entries = every_value();
        let mut w = Writer::new(version);
        for (key, value) in &entries {
            w = w.kv(key, value);
        }
        let gguf = Gguf::parse_bytes(&w.build()).unwrap();
        assert_eq!(gguf.version(), version);
        assert_eq!(gguf.alignment(), 32);
        let read: Vec<(String, Value)> = gguf
            .metadata()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        assert_eq!(read, entries);

        let m = gguf.metadata();
        assert_eq!(m.get_u32("t.u32").unwrap(), 4_000_000_000);
        assert_eq!(m.get_u64("t.u8").unwrap(), 200);
        assert_eq!(m.get_i32("t.i16").unwrap(), -30_000);
        assert_eq!(m.get_i64("t.i64").unwrap(), i64::MIN);
        assert_eq!(m.get_f32("t.f32").unwrap(), 1e-5);
        assert_eq!(m.get_f64("t.f64").unwrap(), -1.5e300);
        assert!(m.get_bool("t.bool").unwrap());
        assert_eq!(m.get_str("t.string").unwrap(), "héllo, 世界");
        assert_eq!(m.get_str_array("a.string").unwrap()[2], "Ġthe");
        assert_eq!(m.get_f32_array("a.f32").unwrap(), [0.5, -0.25]);
        assert_eq!(m.get_i32_array("a.i32").unwrap(), [-3, 3]);
        assert_eq!(m.get_u32_array("a.u32").unwrap(), [7, 8, 9]);
        assert_eq!(m.get_array("a.nested").unwrap().len(), 4);
        let err = m.get_u32("t.i8").unwrap_err().to_string();
        assert_eq!(
            err,
            "<memory>: metadata `t.i8`: expected an integer in the uint32 range, found int8 -100"
        );
    }
}

#[test]
fn open_reads_a_file_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let bytes = Writer::new(3)
        .kv("general.architecture", &Value::String("llama".into()))
        .tensor(
            "w",
            &[3, 2],
            F32,
            &f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        )
        .build();
    std::fs::write(&path, &bytes).unwrap();

    let gguf = Gguf::open(&path).unwrap();
    assert_eq!(gguf.path(), path);
    assert_eq!(gguf.file_size(), bytes.len() as u64);
    assert_eq!(
        gguf.metadata().get_str("general.architecture").unwrap(),
        "llama"
    );
    assert_eq!(
        gguf.dequantize("w").unwrap(),
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    assert_eq!(gguf.dequantize_rows("w", 1..2).unwrap(), [4.0, 5.0, 6.0]);

    let missing = dir.path().join("missing.gguf");
    let err = Gguf::open(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().starts_with(&missing.display().to_string()));
}

#[test]
fn every_supported_tensor_type_dequantises_to_hand_computed_values() {
    // Q8_0, one block: d = 0.5, q_j = j - 16.
    let mut q8 = f16_bytes(0.5).to_vec();
    q8.extend((0..32).map(|j: i32| ((j - 16) as i8).to_le_bytes()[0]));
    let q8_expected: Vec<f32> = (0..32).map(|j| 0.5 * (j - 16) as f32).collect();

    // Q4_0, two rows of one block.
    // Row 0: d = 1, byte j = j | (15 - j) << 4, so element j = j - 8 and
    // element j + 16 = (15 - j) - 8.
    // Row 1: d = -2, every byte 0x80: low nibbles 0 → 16, high nibbles 8 → 0.
    let mut q4_0 = f16_bytes(1.0).to_vec();
    q4_0.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    q4_0.extend(f16_bytes(-2.0));
    q4_0.extend([0x80; 16]);
    let mut q4_0_expected: Vec<f32> = (0..16).map(|j| j as f32 - 8.0).collect();
    q4_0_expected.extend((0..16).map(|j| 7.0 - j as f32));
    q4_0_expected.extend([16.0; 16]);
    q4_0_expected.extend([-0.0; 16]);

    // Q4_1, one row of two blocks.
    // Block 0: d = 0.5, m = -4, byte 1 = 0xA3 and the rest 0x00:
    // element 1 = 0.5·3 − 4 = −2.5 and element 17 = 0.5·10 − 4 = 1.
    // Block 1: d = 0.25, m = 1.5, every byte 0xF0: elements 0..16 = 1.5, 16..32 = 5.25.
    let mut q4_1 = f16_bytes(0.5).to_vec();
    q4_1.extend(f16_bytes(-4.0));
    let mut qs = [0u8; 16];
    qs[1] = 0xA3;
    q4_1.extend(qs);
    q4_1.extend(f16_bytes(0.25));
    q4_1.extend(f16_bytes(1.5));
    q4_1.extend([0xF0; 16]);
    let mut q4_1_expected = vec![-4.0; 32];
    q4_1_expected[1] = -2.5;
    q4_1_expected[17] = 1.0;
    q4_1_expected.extend([1.5; 16]);
    q4_1_expected.extend([5.25; 16]);

    let f16s: Vec<u8> = [0.5, -1.0, 2.0, 65504.0]
        .iter()
        .flat_map(|&x| f16_bytes(x))
        .collect();
    // bf16: 1.0 = 0x3f80, -3.0 = 0xc040
    let bf16s = [0x80, 0x3f, 0x40, 0xc0];

    let bytes = Writer::new(3)
        .tensor(
            "f32",
            &[3, 2],
            F32,
            &f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        )
        .tensor("f16", &[4], F16, &f16s)
        .tensor("bf16", &[2], BF16, &bf16s)
        .tensor("q8_0", &[32], Q8_0, &q8)
        .tensor("q4_0", &[32, 2], Q4_0, &q4_0)
        .tensor("q4_1", &[64, 1], Q4_1, &q4_1)
        .build();
    let gguf = Gguf::parse_bytes(&bytes).unwrap();

    let names: Vec<&str> = gguf.tensors().iter().map(|t| t.name()).collect();
    assert_eq!(names, ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]);

    let f32_info = gguf.tensor("f32").unwrap();
    assert_eq!(f32_info.ggml_type(), GgmlType::F32);
    assert_eq!(f32_info.ne(), [3, 2]);
    assert_eq!(f32_info.shape(), [2, 3]);
    assert_eq!(f32_info.n_rows(), 2);
    assert_eq!(f32_info.row_len(), 3);
    assert_eq!(f32_info.n_bytes(), 24);
    assert_eq!(f32_info.file_offset(), gguf.data_offset());
    assert_eq!(gguf.data_offset() % 32, 0);
    assert_eq!(
        gguf.dequantize("f32").unwrap(),
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );

    assert_eq!(gguf.dequantize("f16").unwrap(), [0.5, -1.0, 2.0, 65504.0]);
    assert_eq!(gguf.dequantize("bf16").unwrap(), [1.0, -3.0]);

    assert_eq!(gguf.dequantize("q8_0").unwrap(), q8_expected);
    assert_eq!(gguf.tensor("q8_0").unwrap().n_bytes(), 34);

    let q4_0_info = gguf.tensor("q4_0").unwrap();
    assert_eq!(q4_0_info.shape(), [2, 32]);
    assert_eq!(q4_0_info.row_bytes(), 18);
    assert_eq!(gguf.dequantize("q4_0").unwrap(), q4_0_expected);
    assert_eq!(
        gguf.dequantize_rows("q4_0", 1..2).unwrap(),
        q4_0_expected[32..]
    );
    assert_eq!(
        gguf.dequantize_rows("q4_0", 0..0).unwrap(),
        Vec::<f32>::new()
    );
    assert_eq!(gguf.read_raw_rows("q4_0", 1..2).unwrap(), q4_0[18..]);

    let q4_1_values = gguf.dequantize("q4_1").unwrap();
    assert_eq!(q4_1_values, q4_1_expected);
    assert_eq!(q4_1_values[1], -2.5);
    assert_eq!(q4_1_values[17], 1.0);
    assert_eq!(gguf.read_raw("q4_1").unwrap(), q4_1);

    // Raw blocks, without dequantising.
    let blocks = gguf.blocks::<BlockQ4_1>("q4_1").unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].d, f16::from_f32(0.5));
    assert_eq!(blocks[0].m, f16::from_f32(-4.0));
    assert_eq!(blocks[0].quants()[1], 3);
    assert_eq!(blocks[0].quants()[17], 10);
    assert_eq!(blocks[1].qs, [0xF0; 16]);
    let blocks = gguf.blocks::<BlockQ4_0>("q4_0").unwrap();
    assert_eq!(blocks[1].d, f16::from_f32(-2.0));
    assert_eq!(blocks[0].quants()[..4], [0, 1, 2, 3]);
    assert_eq!(blocks[0].quants()[16..20], [15, 14, 13, 12]);
    let blocks = gguf.blocks::<BlockQ8_0>("q8_0").unwrap();
    assert_eq!(blocks[0].qs[0], -16);
    assert_eq!(blocks[0].qs[31], 15);

    let err = gguf.blocks::<BlockQ4_1>("q4_0").unwrap_err().to_string();
    assert_eq!(
        err,
        "<memory>: tensor `q4_0`: has type Q4_0, not the Q4_1 blocks requested"
    );
    let err = gguf.dequantize_rows("q4_0", 1..3).unwrap_err().to_string();
    assert_eq!(
        err,
        "<memory>: tensor `q4_0`: rows 1..3 are out of range (the tensor has 2 rows)"
    );
    let err = gguf.dequantize("nope").unwrap_err();
    assert!(matches!(err, Error::MissingTensor { .. }));
    assert_eq!(err.to_string(), "<memory>: no tensor named `nope`");
}

#[test]
fn custom_alignment_places_data_and_is_validated() {
    let w = Writer::new(3)
        .alignment(64)
        .tensor("a", &[1], F32, &f32_bytes(&[1.0]))
        .tensor("b", &[1], F32, &f32_bytes(&[2.0]));
    let gguf = Gguf::parse_bytes(&w.build()).unwrap();
    assert_eq!(gguf.alignment(), 64);
    assert_eq!(gguf.data_offset() % 64, 0);
    assert_eq!(gguf.tensor("b").unwrap().offset(), 64);
    assert_eq!(gguf.dequantize("b").unwrap(), [2.0]);

    let err = parse_err(&Writer::new(3).alignment(48).build());
    assert!(matches!(err, Error::KeyType { .. }));
    assert_eq!(
        err.to_string(),
        "<memory>: metadata `general.alignment`: expected a uint32 power of two, found uint32 48"
    );
    let err = parse_err(
        &Writer::new(3)
            .kv("general.alignment", &Value::U64(32))
            .build(),
    );
    assert!(err.to_string().ends_with("found uint64"), "{err}");
}

#[test]
fn bad_magic() {
    let mut bytes = Writer::new(3).build();
    bytes[..4].copy_from_slice(b"GGML");
    let err = parse_err(&bytes);
    assert!(matches!(err, Error::NotGguf { .. }));
    assert_eq!(
        err.to_string(),
        "<memory>: not a GGUF file: expected the magic `GGUF` at byte 0, found `GGML`"
    );
    let err = parse_err(b"\x89PNG\r\n\x1a\n and more");
    assert!(err.to_string().ends_with("found `\\x89PNG`"), "{err}");
}

#[test]
fn unsupported_versions() {
    for (version, found) in [
        (1u32, "1"),
        (4, "4"),
        (0x0300_0000, "3 in big-endian byte order"),
    ] {
        let err = parse_err(&Writer::new(version).build());
        assert!(matches!(err, Error::UnsupportedVersion { .. }));
        assert_eq!(
            err.to_string(),
            format!(
                "<memory>: unsupported GGUF version {found}; charter reads little-endian versions 2 and 3"
            )
        );
    }
}

#[test]
fn truncated_header() {
    let bytes = Writer::new(3).build();
    let err = parse_err(&bytes[..12]);
    assert!(matches!(err, Error::Malformed { offset: 8, .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "<memory>: at byte 8, header: tensor count needs 8 bytes, but the file ends at byte 12"
    );
    let err = parse_err(&[]);
    assert_eq!(
        err.to_string(),
        "<memory>: at byte 0, header: the magic needs 4 bytes, but the file ends at byte 0"
    );
}

#[test]
fn truncated_metadata() {
    let bytes = Writer::new(3)
        .kv("general.name", &Value::String("tiny".into()))
        .kv("llama.block_count", &Value::U32(30))
        .build();
    // Cut inside the second value: header 24 + first kv (8 + 12 + 4 + 8 + 4) + second key and type.
    let second_value_at = 24 + (8 + 12 + 4 + 8 + 4) + (8 + 17 + 4);
    let err = parse_err(&bytes[..second_value_at + 2]);
    assert_eq!(
        err.to_string(),
        format!(
            "<memory>: at byte {second_value_at}, metadata `llama.block_count`: \
             uint32 value needs 4 bytes, but the file ends at byte {}",
            second_value_at + 2
        )
    );
    // Cut inside the first key (of a file with one key, so that the metadata
    // count alone still looks plausible).
    let bytes = Writer::new(3)
        .kv("general.name", &Value::String("tiny".into()))
        .build();
    let err = parse_err(&bytes[..24 + 8 + 6]);
    assert_eq!(
        err.to_string(),
        "<memory>: at byte 24, metadata entry #0: key has length 12, but only 6 bytes remain \
         in the file (size 38)"
    );
    // Too short for the entries the header announces.
    let err = parse_err(&bytes[..30]);
    assert!(
        err.to_string().contains(
            "at byte 16, header: metadata count is 1, which needs at least 13 bytes (13 per item), \
             but only 6 bytes remain in the file (size 30)"
        ),
        "{err}"
    );
}

#[test]
fn string_longer_than_the_file() {
    let mut payload = (1u64 << 40).to_le_bytes().to_vec();
    payload.extend(b"short");
    let bytes = Writer::new(3).raw_kv(b"general.name", 8, &payload).build();
    let err = parse_err(&bytes);
    assert!(matches!(err, Error::Malformed { .. }));
    assert!(
        err.to_string().contains(
            "metadata `general.name`: string value has length 1099511627776, but only 5 bytes remain"
        ),
        "{err}"
    );
    // The same in a key.
    let mut bytes = Writer::new(3).kv("k", &Value::U8(1)).build();
    bytes[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = parse_err(&bytes);
    assert!(
        err.to_string()
            .contains("key has length 18446744073709551615"),
        "{err}"
    );
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    // An array claiming 2^60 u64 elements.
    let mut payload = 10u32.to_le_bytes().to_vec();
    payload.extend((1u64 << 60).to_le_bytes());
    payload.extend([0; 16]);
    let err = parse_err(&Writer::new(3).raw_kv(b"a", 9, &payload).build());
    assert!(
        err.to_string().contains(
            "metadata `a`: the length of an array of uint64 is 1152921504606846976, which needs at \
             least 9223372036854775808 bytes (8 per item), but only 16 bytes remain"
        ),
        "{err}"
    );
    // An array of strings, each needing at least its 8-byte length.
    let mut payload = 8u32.to_le_bytes().to_vec();
    payload.extend(u64::MAX.to_le_bytes());
    let err = parse_err(&Writer::new(3).raw_kv(b"a", 9, &payload).build());
    assert!(
        err.to_string()
            .contains("the length of an array of string is 18446744073709551615"),
        "{err}"
    );
    // Header counts.
    let mut bytes = Writer::new(3).build();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = parse_err(&bytes);
    assert!(
        err.to_string()
            .contains("tensor count is 18446744073709551615, which needs"),
        "{err}"
    );
    let mut bytes = Writer::new(3).build();
    bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = parse_err(&bytes);
    assert!(
        err.to_string()
            .contains("metadata count is 1099511627776, which needs"),
        "{err}"
    );
}

#[test]
fn invalid_metadata_values() {
    let err = parse_err(&Writer::new(3).raw_kv(b"b", 7, &[2]).build());
    assert_eq!(
        err.to_string(),
        "<memory>: at byte 37, metadata `b`: a bool must be 0 or 1, found 2"
    );
    let mut payload = 7u32.to_le_bytes().to_vec();
    payload.extend(3u64.to_le_bytes());
    payload.extend([1, 0, 9]);
    let err = parse_err(&Writer::new(3).raw_kv(b"b", 9, &payload).build());
    assert!(
        err.to_string()
            .contains("element 2 of a bool array must be 0 or 1, found 9")
    );
    let err = parse_err(&Writer::new(3).raw_kv(b"t", 13, &[0; 8]).build());
    assert!(
        err.to_string()
            .contains("metadata `t`: value type 13 is not a GGUF value type (0..=12)"),
        "{err}"
    );
    let err = parse_err(&Writer::new(3).raw_kv(b"bad\xffkey", 0, &[0]).build());
    assert!(
        err.to_string()
            .contains("metadata entry #0: key is not valid UTF-8 (invalid byte at offset 3"),
        "{err}"
    );
    let err = parse_err(
        &Writer::new(3)
            .kv("k", &Value::U8(1))
            .kv("k", &Value::U8(2))
            .build(),
    );
    assert!(
        err.to_string()
            .contains("metadata `k`: the key appears twice"),
        "{err}"
    );
}

#[test]
fn nested_arrays_are_bounded() {
    fn nest(depth: usize) -> Array {
        (1..depth).fold(Array::U8(vec![7]), |inner, _| Array::Array(vec![inner]))
    }
    let ok = Writer::new(3).kv("n", &Value::Array(nest(16))).build();
    assert_eq!(
        Gguf::parse_bytes(&ok).unwrap().metadata().get("n"),
        Some(&Value::Array(nest(16)))
    );
    let err = parse_err(&Writer::new(3).kv("n", &Value::Array(nest(17))).build());
    assert!(
        err.to_string()
            .contains("arrays are nested more than 16 deep"),
        "{err}"
    );
}

#[test]
fn tensor_data_past_the_end_of_the_file() {
    let w = Writer::new(3).info("blk.0.attn_q.weight", &[64, 64], F32, 0);
    let bytes = w.build();
    let start = w.data_offset();
    let err = parse_err(&bytes);
    assert!(matches!(err, Error::Tensor { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "<memory>: tensor `blk.0.attn_q.weight`: data [{start}, {}) runs past the end of the \
             file (size {})",
            start + 64 * 64 * 4,
            bytes.len()
        )
    );
    // An offset so large that the position overflows.
    let bytes = Writer::new(3).info("w", &[32], F32, u64::MAX - 31).build();
    let err = parse_err(&bytes);
    assert!(
        err.to_string().contains("overflows a 64-bit file position"),
        "{err}"
    );
}

#[test]
fn misaligned_tensor_offset() {
    let bytes = Writer::new(3)
        .info("w", &[1], F32, 8)
        .tensor("pad", &[16], F32, &[0; 64])
        .build();
    let err = parse_err(&bytes);
    assert_eq!(
        err.to_string(),
        "<memory>: tensor `w`: data offset 8 is not a multiple of the alignment 32"
    );
}

#[test]
fn overflowing_and_invalid_dimensions() {
    let err = parse_err(
        &Writer::new(3)
            .info("w", &[1 << 32, 1 << 32, 1 << 32], F32, 0)
            .build(),
    );
    assert_eq!(
        err.to_string(),
        "<memory>: tensor `w`: the element count of dimensions [4294967296, 4294967296, 4294967296] \
         overflows"
    );
    // Elements fit but bytes do not.
    let err = parse_err(&Writer::new(3).info("w", &[1 << 62], F32, 0).build());
    assert!(err.to_string().contains("overflows"), "{err}");
    let err = parse_err(&Writer::new(3).info("w", &[u64::MAX], F32, 0).build());
    assert!(
        err.to_string().contains("larger than the int64 maximum"),
        "{err}"
    );
    let err = parse_err(&Writer::new(3).info("w", &[1, 1, 1, 1, 1], F32, 0).build());
    assert_eq!(
        err.to_string(),
        "<memory>: tensor `w`: has 5 dimensions; GGUF allows at most 4"
    );
    let err = parse_err(&Writer::new(3).tensor("w", &[16], Q4_0, &[0; 18]).build());
    assert_eq!(
        err.to_string(),
        "<memory>: tensor `w`: row length ne[0] = 16 is not a multiple of the Q4_0 block size 32"
    );
}

#[test]
fn unknown_and_unsupported_tensor_types() {
    let err = parse_err(&Writer::new(3).info("w", &[32], 99, 0).build());
    assert_eq!(
        err.to_string(),
        "<memory>: tensor `w`: unknown ggml type id 99"
    );
    let err = parse_err(&Writer::new(3).info("w", &[32], 4, 0).build());
    assert!(
        err.to_string()
            .contains("type Q4_2 (id 4) has been removed"),
        "{err}"
    );

    // A K-quant tensor: the file opens, the data is readable raw, but not dequantisable.
    let gguf = Gguf::parse_bytes(
        &Writer::new(3)
            .tensor("blk.0.ffn_down.weight", &[256, 2], Q4_K, &[0; 288])
            .build(),
    )
    .unwrap();
    let info = gguf.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(info.ggml_type(), GgmlType::Q4_K);
    assert_eq!(info.n_bytes(), 288);
    assert_eq!(gguf.read_raw("blk.0.ffn_down.weight").unwrap().len(), 288);
    let err = gguf.dequantize("blk.0.ffn_down.weight").unwrap_err();
    assert!(matches!(
        err,
        Error::UnsupportedType {
            ggml_type: GgmlType::Q4_K,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "<memory>: tensor `blk.0.ffn_down.weight` has type Q4_K, which charter cannot dequantise \
         (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"
    );
}

#[test]
fn duplicate_tensor_names() {
    let bytes = Writer::new(3)
        .tensor("w", &[1], F32, &f32_bytes(&[1.0]))
        .tensor("w", &[1], F32, &f32_bytes(&[2.0]))
        .build();
    let err = parse_err(&bytes);
    assert_eq!(
        err.to_string(),
        "<memory>: tensor `w`: the name appears twice in the tensor infos (again as #1)"
    );
}

/// A small valid file with metadata and tensors of several types.
fn sample_file() -> Vec<u8> {
    let mut q4_1 = f16_bytes(0.5).to_vec();
    q4_1.extend(f16_bytes(-1.0));
    q4_1.extend(0..16);
    let mut q8 = f16_bytes(0.25).to_vec();
    q8.extend(0..32);
    Writer::new(3)
        .kv("general.architecture", &Value::String("llama".into()))
        .kv("llama.block_count", &Value::U32(1))
        .kv(
            "tokenizer.ggml.tokens",
            &Value::Array(Array::String(vec!["a".into(), "b".into()])),
        )
        .kv(
            "nested",
            &Value::Array(Array::Array(vec![Array::F32(vec![1.0])])),
        )
        .tensor("norm", &[4], F32, &f32_bytes(&[1.0, 2.0, 3.0, 4.0]))
        .tensor("q4_1", &[32], Q4_1, &q4_1)
        .tensor("q8_0", &[32], Q8_0, &q8)
        .build()
}

/// Exercises every read on a parsed file; none may panic.
fn read_everything(gguf: &Gguf) {
    for info in gguf.tensors() {
        let name = info.name();
        let _ = gguf.read_raw(name);
        let _ = gguf.dequantize(name);
        let _ = gguf.dequantize_rows(name, 0..1);
        let _ = gguf.blocks::<BlockQ4_0>(name);
        let _ = gguf.blocks::<BlockQ4_1>(name);
        let _ = gguf.blocks::<BlockQ8_0>(name);
    }
    for (key, _) in gguf.metadata().iter() {
        let _ = gguf.metadata().get_u32(key);
        let _ = gguf.metadata().get_str_array(key);
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_file();
    let gguf = Gguf::parse_bytes(&bytes).unwrap();
    read_everything(&gguf);
    for len in 0..bytes.len() {
        assert!(
            Gguf::parse_bytes(&bytes[..len]).is_err(),
            "a file cut to {len} bytes parsed"
        );
    }
}

#[test]
fn random_corruption_never_panics() {
    let original = sample_file();
    // xorshift64*: deterministic, no dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut parsed = 0;
    for _ in 0..20_000 {
        let mut bytes = original.clone();
        let edits = 1 + next() % 4;
        for _ in 0..edits {
            let at = (next() % bytes.len() as u64) as usize;
            match next() % 4 {
                // One random byte.
                0 => bytes[at] = next() as u8,
                // A random u64 (counts, lengths, dims, offsets).
                1 => {
                    let end = (at + 8).min(bytes.len());
                    let word = next().to_le_bytes();
                    bytes[at..end].copy_from_slice(&word[..end - at]);
                }
                // A small number, often a valid-looking type id or count.
                2 => bytes[at] = (next() % 16) as u8,
                // Cut the file.
                _ => bytes.truncate(at),
            }
            if bytes.is_empty() {
                break;
            }
        }
        if let Ok(gguf) = Gguf::parse_bytes(&bytes) {
            parsed += 1;
            read_everything(&gguf);
        }
    }
    // Some corruptions (inside tensor data or string contents) leave a valid file.
    assert!(parsed > 0);
}

/// The default model, as `scripts/setup` installs it.
fn default_model() -> PathBuf {
    let home = std::env::var_os("CHARTER_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/charter")))
        .expect("neither CHARTER_HOME nor HOME is set");
    home.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[test]
fn default_model_matches_the_design_facts() {
    let path = default_model();
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup to download the default model",
        path.display()
    );
    let gguf = Gguf::open(&path).unwrap();
    let m = gguf.metadata();
    assert_eq!(m.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(m.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(m.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(m.get_u32("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(m.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(m.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(m.get_u32("llama.context_length").unwrap(), 8192);
    assert_eq!(m.get_f32("llama.rope.freq_base").unwrap(), 100_000.0);
    assert_eq!(
        m.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5
    );
    assert_eq!(m.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    let tokens = m.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49_152);
    let merges = m.get_str_array("tokenizer.ggml.merges").unwrap();
    assert_eq!(merges.len(), 48_900);
    assert!(merges.iter().all(|merge| merge.split(' ').count() == 2));
    assert!(
        m.get_str("tokenizer.chat_template")
            .unwrap()
            .contains("<|im_start|>")
    );

    assert!(gguf.tensor("output.weight").is_none());
    let embd = gguf.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.ggml_type(), GgmlType::Q8_0);
    assert_eq!(embd.shape(), [49_152, 576]);
    for info in gguf.tensors() {
        let name = info.name();
        if name.ends_with("norm.weight") {
            assert_eq!(info.ggml_type(), GgmlType::F32, "{name}");
        } else if name.starts_with("blk.") {
            assert_eq!(info.ggml_type(), GgmlType::Q4_1, "{name}");
        }
    }
    assert_eq!(
        gguf.tensor("blk.0.attn_q.weight").unwrap().shape(),
        [576, 576]
    );
    assert_eq!(
        gguf.tensor("blk.0.attn_k.weight").unwrap().shape(),
        [192, 576]
    );
    assert_eq!(
        gguf.tensor("blk.29.ffn_down.weight").unwrap().shape(),
        [576, 1536]
    );

    let norm = gguf.dequantize("blk.0.attn_norm.weight").unwrap();
    assert_eq!(norm.len(), 576);
    assert!(norm.iter().all(|x| x.is_finite() && x.abs() < 100.0));
    assert!(norm.iter().any(|&x| x != 0.0));

    let rows = gguf.dequantize_rows("token_embd.weight", 0..3).unwrap();
    assert_eq!(rows.len(), 3 * 576);
    let last = gguf
        .dequantize_rows("token_embd.weight", 49_151..49_152)
        .unwrap();
    for x in rows.iter().chain(&last) {
        assert!(x.is_finite() && x.abs() < 10.0, "{x}");
    }
    let mean_abs = rows.iter().map(|x| x.abs()).sum::<f32>() / rows.len() as f32;
    assert!(mean_abs > 1e-3 && mean_abs < 1.0, "{mean_abs}");

    // Rows read alone agree with the whole tensor, and blocks with dequantisation.
    let q = gguf.dequantize("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        gguf.dequantize_rows("blk.0.attn_q.weight", 5..7).unwrap(),
        q[5 * 576..7 * 576]
    );
    let blocks = gguf.blocks::<BlockQ4_1>("blk.0.attn_q.weight").unwrap();
    assert_eq!(blocks.len(), 576 * 576 / 32);
    let from_blocks: Vec<f32> = blocks.iter().flat_map(|b| b.dequantize()).collect();
    assert_eq!(from_blocks, q);
}
