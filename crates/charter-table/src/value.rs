//! One cell of a table, and the typed views that read cells out of Arrow arrays.
//!
//! # Cell encoding (v1)
//!
//! | cell | bytes |
//! |---|---|
//! | null | `0x00` |
//! | bool | `0x01`, then `0x00` or `0x01` |
//! | unsigned integer (any width) | `0x02`, then the value as u64 little-endian |
//! | signed integer (any width) | `0x03`, then the value as i64 little-endian |
//! | float (f32 widened to f64) | `0x04`, then the f64 bits little-endian; every NaN as `0x7ff8000000000000` |
//! | text | `0x05`, the byte length as u64 little-endian, the UTF-8 bytes |
//! | list of text | `0x06`, the item count as u64 little-endian, then each item encoded as text |
//!
//! Row ids and content hashes (`hash.rs`) are blake3 over these bytes: the
//! encoding is part of charter's file format, pinned by golden-value tests.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int64Array, LargeStringArray,
    StringArray, StringViewArray, UInt32Array, UInt64Array,
};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, Field};

use crate::schema::ColumnType;

/// A borrowed cell value: the common form that row ids and content hashes
/// are computed from, whichever Arrow type holds the column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// A null cell.
    Null,
    /// A boolean.
    Bool(bool),
    /// An unsigned integer (any width).
    UInt(u64),
    /// A signed integer (any width).
    Int(i64),
    /// A float (f32 values are widened exactly).
    Float(f64),
    /// Text.
    Str(&'a str),
    /// A list of strings.
    List(Vec<&'a str>),
}

/// A Rust type that maps to a column type: the bridge between typed rows and Arrow.
pub trait ColumnValue: Sized {
    /// The column's logical type.
    const TYPE: ColumnType;
    /// Whether the column is nullable (true only for `Option<T>`).
    const NULLABLE: bool = false;
    /// The value as a cell.
    fn to_value(&self) -> Value<'_>;
    /// The value from a cell; `None` if the cell is null or of another type.
    fn from_value(value: Value<'_>) -> Option<Self>;
}

macro_rules! column_value {
    ($ty:ty, $ct:ident, $variant:ident, |$v:ident| $to:expr, $from:expr) => {
        impl ColumnValue for $ty {
            const TYPE: ColumnType = ColumnType::$ct;
            fn to_value(&self) -> Value<'_> {
                let $v = self;
                Value::$variant($to)
            }
            fn from_value(value: Value<'_>) -> Option<Self> {
                match value {
                    Value::$variant($v) => $from,
                    _ => None,
                }
            }
        }
    };
}

column_value!(String, Utf8, Str, |v| v.as_str(), Some(v.to_string()));
column_value!(bool, Bool, Bool, |v| *v, Some(v));
column_value!(u32, UInt32, UInt, |v| u64::from(*v), u32::try_from(v).ok());
column_value!(u64, UInt64, UInt, |v| *v, Some(v));
column_value!(i64, Int64, Int, |v| *v, Some(v));
column_value!(f32, Float32, Float, |v| f64::from(*v), Some(v as f32));
column_value!(f64, Float64, Float, |v| *v, Some(v));
column_value!(
    Vec<String>,
    ListUtf8,
    List,
    |v| v.iter().map(String::as_str).collect(),
    Some(v.into_iter().map(str::to_string).collect())
);

impl<T: ColumnValue> ColumnValue for Option<T> {
    const TYPE: ColumnType = T::TYPE;
    const NULLABLE: bool = true;
    fn to_value(&self) -> Value<'_> {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
    fn from_value(value: Value<'_>) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// Builds an Arrow array of `ty` from cells. Cells of another type become nulls;
/// callers build cells from typed rows, so that never happens in practice.
pub(crate) fn build_array<'a>(
    ty: ColumnType,
    values: impl ExactSizeIterator<Item = Value<'a>>,
) -> ArrayRef {
    let n = values.len();
    macro_rules! build {
        ($builder:expr, $variant:ident, |$v:ident| $conv:expr) => {{
            let mut b = $builder;
            for value in values {
                match value {
                    Value::$variant($v) => b.append_value($conv),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match ty {
        ColumnType::Utf8 => build!(StringBuilder::with_capacity(n, n * 32), Str, |v| v),
        ColumnType::Bool => build!(BooleanBuilder::with_capacity(n), Bool, |v| v),
        ColumnType::UInt32 => build!(UInt32Builder::with_capacity(n), UInt, |v| v as u32),
        ColumnType::UInt64 => build!(UInt64Builder::with_capacity(n), UInt, |v| v),
        ColumnType::Int64 => build!(Int64Builder::with_capacity(n), Int, |v| v),
        ColumnType::Float32 => build!(Float32Builder::with_capacity(n), Float, |v| v as f32),
        ColumnType::Float64 => build!(Float64Builder::with_capacity(n), Float, |v| v),
        ColumnType::ListUtf8 => {
            let field = Arc::new(Field::new_list_field(DataType::Utf8, false));
            let mut b = ListBuilder::with_capacity(StringBuilder::new(), n).with_field(field);
            for value in values {
                match value {
                    Value::List(items) => {
                        for item in items {
                            b.values().append_value(item);
                        }
                        b.append(true);
                    }
                    _ => b.append(false),
                }
            }
            Arc::new(b.finish())
        }
    }
}

/// A string array of any of Arrow's three string layouts.
#[derive(Clone, Copy)]
pub(crate) enum StrView<'a> {
    Utf8(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
}

impl<'a> StrView<'a> {
    fn of(array: &'a dyn Array) -> Option<Self> {
        Some(match array.data_type() {
            DataType::Utf8 => StrView::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => StrView::Large(array.as_string::<i64>()),
            DataType::Utf8View => StrView::View(array.as_string_view()),
            _ => return None,
        })
    }

    #[inline]
    pub(crate) fn value(&self, i: usize) -> &'a str {
        match self {
            StrView::Utf8(a) => a.value(i),
            StrView::Large(a) => a.value(i),
            StrView::View(a) => a.value(i),
        }
    }
}

/// A typed, borrowed view of one column, for reading cells row by row.
#[derive(Clone)]
pub(crate) struct ColumnView<'a> {
    nulls: Option<&'a NullBuffer>,
    kind: ViewKind<'a>,
}

#[derive(Clone)]
enum ViewKind<'a> {
    Str(StrView<'a>),
    Bool(&'a BooleanArray),
    UInt32(&'a UInt32Array),
    UInt64(&'a UInt64Array),
    Int64(&'a Int64Array),
    Float32(&'a Float32Array),
    Float64(&'a Float64Array),
    List {
        offsets: Vec<usize>,
        items: StrView<'a>,
        item_nulls: Option<&'a NullBuffer>,
    },
}

impl<'a> ColumnView<'a> {
    /// A view of `array`, or `None` if charter cannot read its type.
    pub(crate) fn new(array: &'a dyn Array) -> Option<Self> {
        let kind = match array.data_type() {
            DataType::Boolean => ViewKind::Bool(array.as_boolean()),
            DataType::UInt32 => ViewKind::UInt32(array.as_primitive::<UInt32Type>()),
            DataType::UInt64 => ViewKind::UInt64(array.as_primitive::<UInt64Type>()),
            DataType::Int64 => ViewKind::Int64(array.as_primitive::<Int64Type>()),
            DataType::Float32 => ViewKind::Float32(array.as_primitive::<Float32Type>()),
            DataType::Float64 => ViewKind::Float64(array.as_primitive::<Float64Type>()),
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                let items = list.values();
                ViewKind::List {
                    offsets: list.value_offsets().iter().map(|&o| o as usize).collect(),
                    items: StrView::of(items.as_ref())?,
                    item_nulls: items.nulls(),
                }
            }
            DataType::LargeList(_) => {
                let list = array.as_list::<i64>();
                let items = list.values();
                ViewKind::List {
                    offsets: list.value_offsets().iter().map(|&o| o as usize).collect(),
                    items: StrView::of(items.as_ref())?,
                    item_nulls: items.nulls(),
                }
            }
            _ => ViewKind::Str(StrView::of(array)?),
        };
        Some(ColumnView {
            nulls: array.nulls(),
            kind,
        })
    }

    /// The cell at row `i`. Null items inside a list are skipped.
    #[inline]
    pub(crate) fn value(&self, i: usize) -> Value<'a> {
        if self.nulls.is_some_and(|n| n.is_null(i)) {
            return Value::Null;
        }
        match &self.kind {
            ViewKind::Str(s) => Value::Str(s.value(i)),
            ViewKind::Bool(a) => Value::Bool(a.value(i)),
            ViewKind::UInt32(a) => Value::UInt(u64::from(a.value(i))),
            ViewKind::UInt64(a) => Value::UInt(a.value(i)),
            ViewKind::Int64(a) => Value::Int(a.value(i)),
            ViewKind::Float32(a) => Value::Float(f64::from(a.value(i))),
            ViewKind::Float64(a) => Value::Float(a.value(i)),
            ViewKind::List {
                offsets,
                items,
                item_nulls,
            } => Value::List(
                (offsets[i]..offsets[i + 1])
                    .filter(|&j| !item_nulls.is_some_and(|n| n.is_null(j)))
                    .map(|j| items.value(j))
                    .collect(),
            ),
        }
    }

    /// Appends the canonical encoding of the cell at row `i` to `out`: the
    /// same bytes as encoding [`ColumnView::value`], without building a [`Value`].
    #[inline]
    pub(crate) fn encode(&self, i: usize, out: &mut Vec<u8>) {
        if self.nulls.is_some_and(|n| n.is_null(i)) {
            out.push(0x00);
            return;
        }
        match &self.kind {
            ViewKind::Str(s) => encode_str(s.value(i), out),
            ViewKind::List {
                offsets,
                items,
                item_nulls,
            } => {
                let present = |j: &usize| !item_nulls.is_some_and(|n| n.is_null(*j));
                let range = offsets[i]..offsets[i + 1];
                let count = range.clone().filter(present).count();
                out.push(0x06);
                out.extend_from_slice(&(count as u64).to_le_bytes());
                for j in range.filter(present) {
                    encode_str(items.value(j), out);
                }
            }
            _ => encode_value(&self.value(i), out),
        }
    }

    /// The text at row `i` if it is long enough to hash in place rather than copy.
    #[inline]
    pub(crate) fn long_str(&self, i: usize) -> Option<&'a str> {
        match &self.kind {
            ViewKind::Str(s) if !self.nulls.is_some_and(|n| n.is_null(i)) => {
                let v = s.value(i);
                (v.len() >= LONG_STR).then_some(v)
            }
            _ => None,
        }
    }
}

/// Text at least this long is handed to blake3 directly instead of being copied.
const LONG_STR: usize = 4096;

const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

/// Appends the canonical encoding of one cell to `out`.
#[inline]
pub(crate) fn encode_value(value: &Value<'_>, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0x00),
        Value::Bool(b) => out.extend_from_slice(&[0x01, u8::from(*b)]),
        Value::UInt(v) => {
            out.push(0x02);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::Int(v) => {
            out.push(0x03);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::Float(v) => {
            out.push(0x04);
            let bits = if v.is_nan() {
                CANONICAL_NAN
            } else {
                v.to_bits()
            };
            out.extend_from_slice(&bits.to_le_bytes());
        }
        Value::Str(s) => encode_str(s, out),
        Value::List(items) => {
            out.push(0x06);
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                encode_str(item, out);
            }
        }
    }
}

#[inline]
pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.push(0x05);
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_encoding_matches_value_encoding() {
        let arrays: Vec<ArrayRef> = vec![
            build_array(
                ColumnType::Utf8,
                [Value::Str("a"), Value::Null, Value::Str(&"x".repeat(5000))].into_iter(),
            ),
            build_array(
                ColumnType::ListUtf8,
                [
                    Value::List(vec!["p", "q"]),
                    Value::Null,
                    Value::List(vec![]),
                ]
                .into_iter(),
            ),
            build_array(
                ColumnType::Float32,
                [Value::Float(0.5), Value::Null, Value::Float(f64::NAN)].into_iter(),
            ),
            build_array(
                ColumnType::UInt32,
                [Value::UInt(1), Value::UInt(2), Value::Null].into_iter(),
            ),
            build_array(
                ColumnType::Bool,
                [Value::Bool(true), Value::Null, Value::Bool(false)].into_iter(),
            ),
        ];
        for array in &arrays {
            let view = ColumnView::new(array.as_ref()).unwrap();
            for i in 0..3 {
                let (mut direct, mut via_value) = (Vec::new(), Vec::new());
                view.encode(i, &mut direct);
                encode_value(&view.value(i), &mut via_value);
                assert_eq!(direct, via_value, "{:?} row {i}", array.data_type());
            }
        }
    }
}
