//! GGUF metadata: typed values and the key-value map with typed getters.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The type tag of a GGUF metadata value (`gguf_metadata_value_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `uint8`
    U8,
    /// `int8`
    I8,
    /// `uint16`
    U16,
    /// `int16`
    I16,
    /// `uint32`
    U32,
    /// `int32`
    I32,
    /// `float32`
    F32,
    /// `bool`, one byte holding 0 or 1.
    Bool,
    /// `string`: a u64 byte length and UTF-8 bytes.
    String,
    /// `array`: an element type, a u64 count and the elements.
    Array,
    /// `uint64`
    U64,
    /// `int64`
    I64,
    /// `float64`
    F64,
}

impl ValueType {
    /// The type with GGUF id `id`.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The GGUF id of the type.
    pub fn id(self) -> u32 {
        match self {
            Self::U8 => 0,
            Self::I8 => 1,
            Self::U16 => 2,
            Self::I16 => 3,
            Self::U32 => 4,
            Self::I32 => 5,
            Self::F32 => 6,
            Self::Bool => 7,
            Self::String => 8,
            Self::Array => 9,
            Self::U64 => 10,
            Self::I64 => 11,
            Self::F64 => 12,
        }
    }

    /// The GGUF specification's name for the type (`uint32`, `float32`, `string`).
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::U16 => "uint16",
            Self::I16 => "int16",
            Self::U32 => "uint32",
            Self::I32 => "int32",
            Self::F32 => "float32",
            Self::Bool => "bool",
            Self::String => "string",
            Self::Array => "array",
            Self::U64 => "uint64",
            Self::I64 => "int64",
            Self::F64 => "float64",
        }
    }

    /// The fewest bytes a value of this type takes in a file: the fixed size,
    /// or the length or count prefix of strings and arrays. The parser checks
    /// `count × min_size` against the bytes left before allocating an array.
    pub(crate) fn min_size(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
            // element type (u32) + count (u64)
            Self::Array => 12,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `float32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// `string`
    String(String),
    /// `array`
    Array(Array),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float64`
    F64(f64),
}

/// A metadata array: homogeneous, stored unboxed per element type.
///
/// Arrays may nest; each inner array has its own element type.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// `uint8` elements.
    U8(Vec<u8>),
    /// `int8` elements.
    I8(Vec<i8>),
    /// `uint16` elements.
    U16(Vec<u16>),
    /// `int16` elements.
    I16(Vec<i16>),
    /// `uint32` elements.
    U32(Vec<u32>),
    /// `int32` elements.
    I32(Vec<i32>),
    /// `float32` elements.
    F32(Vec<f32>),
    /// `bool` elements.
    Bool(Vec<bool>),
    /// `string` elements.
    String(Vec<String>),
    /// Nested arrays.
    Array(Vec<Array>),
    /// `uint64` elements.
    U64(Vec<u64>),
    /// `int64` elements.
    I64(Vec<i64>),
    /// `float64` elements.
    F64(Vec<f64>),
}

impl Value {
    /// The value's type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// A description of the type for messages: `uint32`, `array of string`.
    pub fn type_description(&self) -> String {
        match self {
            Self::Array(array) => format!("array of {}", array.element_type()),
            other => other.value_type().name().to_owned(),
        }
    }

    /// The value as an `i128` if it is an integer of any width or sign.
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl Array {
    /// The element type.
    pub fn element_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::Array(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file's metadata: the key-value pairs in file order, with typed getters.
///
/// Integer getters accept any integer type whose value fits the requested
/// one (writers disagree on whether counts are `uint32` or `uint64`); float
/// and array getters are strict about the element type.
#[derive(Debug, Clone)]
pub struct Metadata {
    path: PathBuf,
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// An empty map for the file at `path` (named in errors).
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Adds a key; `false` (and no change) if the key is already present.
    pub(crate) fn insert(&mut self, key: String, value: Value) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key-value pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The value of `key`, or [`Error::MissingKey`].
    pub fn value(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        })
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T> {
        let value = self.value(key)?;
        convert(value).ok_or_else(|| Error::KeyType {
            path: self.path.clone(),
            key: key.to_owned(),
            expected: expected.to_owned(),
            found: match value.as_integer() {
                Some(v) => format!("{} {v}", value.type_description()),
                None => value.type_description(),
            },
        })
    }

    fn integer<T: TryFrom<i128>>(&self, key: &str, expected: &str) -> Result<T> {
        self.typed(key, expected, |v| {
            v.as_integer().and_then(|i| T::try_from(i).ok())
        })
    }

    /// `key` as a `u32`, from any integer type whose value fits.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.integer(key, "an integer in the uint32 range")
    }

    /// `key` as a `u64`, from any integer type whose value fits.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.integer(key, "an integer in the uint64 range")
    }

    /// `key` as an `i32`, from any integer type whose value fits.
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.integer(key, "an integer in the int32 range")
    }

    /// `key` as an `i64`, from any integer type whose value fits.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.integer(key, "an integer in the int64 range")
    }

    /// `key` as a `usize`, from any integer type whose value fits.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.integer(key, "a non-negative integer")
    }

    /// `key` as an `f32`; the value must be a `float32`.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.typed(key, "float32", |v| match *v {
            Value::F32(x) => Some(x),
            _ => None,
        })
    }

    /// `key` as an `f64`, from a `float32` or a `float64`.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.typed(key, "float32 or float64", |v| match *v {
            Value::F32(x) => Some(x.into()),
            Value::F64(x) => Some(x),
            _ => None,
        })
    }

    /// `key` as a `bool`.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, "bool", |v| match *v {
            Value::Bool(x) => Some(x),
            _ => None,
        })
    }

    /// `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "string", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// `key` as an array of any element type.
    pub fn get_array(&self, key: &str) -> Result<&Array> {
        self.typed(key, "array", |v| match v {
            Value::Array(a) => Some(a),
            _ => None,
        })
    }

    /// `key` as an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.typed(key, "array of string", |v| match v {
            Value::Array(Array::String(a)) => Some(a.as_slice()),
            _ => None,
        })
    }

    /// `key` as an array of `float32`.
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        self.typed(key, "array of float32", |v| match v {
            Value::Array(Array::F32(a)) => Some(a.as_slice()),
            _ => None,
        })
    }

    /// `key` as an array of `int32`.
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        self.typed(key, "array of int32", |v| match v {
            Value::Array(Array::I32(a)) => Some(a.as_slice()),
            _ => None,
        })
    }

    /// `key` as an array of `uint32`.
    pub fn get_u32_array(&self, key: &str) -> Result<&[u32]> {
        self.typed(key, "array of uint32", |v| match v {
            Value::Array(Array::U32(a)) => Some(a.as_slice()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Typed getters: conversions that fit, and errors that name key and types.

    use super::*;

    fn metadata(entries: Vec<(&str, Value)>) -> Metadata {
        let mut m = Metadata::new(Path::new("m.gguf"));
        for (k, v) in entries {
            assert!(m.insert(k.to_owned(), v));
        }
        m
    }

    #[test]
    fn integer_getters_accept_any_width_that_fits() {
        let m = metadata(vec![
            ("a", Value::U64(30)),
            ("b", Value::I32(-1)),
            ("c", Value::U8(7)),
            ("big", Value::U64(u64::MAX)),
        ]);
        assert_eq!(m.get_u32("a").unwrap(), 30);
        assert_eq!(m.get_i64("b").unwrap(), -1);
        assert_eq!(m.get_usize("c").unwrap(), 7);
        assert_eq!(m.get_u64("big").unwrap(), u64::MAX);
        let err = m.get_u32("b").unwrap_err().to_string();
        assert_eq!(
            err,
            "m.gguf: metadata `b`: expected an integer in the uint32 range, found int32 -1"
        );
        let err = m.get_u32("big").unwrap_err().to_string();
        assert!(err.contains("found uint64 18446744073709551615"), "{err}");
    }

    #[test]
    fn type_errors_and_missing_keys_name_the_key() {
        let m = metadata(vec![
            ("s", Value::String("llama".into())),
            ("f", Value::F32(1e-5)),
            ("t", Value::Array(Array::String(vec!["a".into()]))),
        ]);
        assert_eq!(m.get_str("s").unwrap(), "llama");
        assert_eq!(m.get_f32("f").unwrap(), 1e-5);
        assert_eq!(m.get_f64("f").unwrap(), f64::from(1e-5_f32));
        assert_eq!(m.get_str_array("t").unwrap(), ["a".to_owned()]);
        assert_eq!(
            m.get_f32("s").unwrap_err().to_string(),
            "m.gguf: metadata `s`: expected float32, found string"
        );
        assert_eq!(
            m.get_f32_array("t").unwrap_err().to_string(),
            "m.gguf: metadata `t`: expected array of float32, found array of string"
        );
        assert_eq!(
            m.get_u32("nope").unwrap_err().to_string(),
            "m.gguf: metadata key `nope` is missing"
        );
    }

    #[test]
    fn duplicate_keys_are_refused_and_order_is_kept() {
        let mut m = metadata(vec![("b", Value::U8(1)), ("a", Value::U8(2))]);
        assert!(!m.insert("b".to_owned(), Value::U8(3)));
        let keys: Vec<&str> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["b", "a"]);
        assert_eq!(m.get("b"), Some(&Value::U8(1)));
        assert_eq!(m.len(), 2);
    }
}
