//! Typed rows: the bridge between Rust structs and Arrow record batches.

use arrow_array::RecordBatch;

use crate::schema::{Role, TableSpec};
use crate::value::Value;

/// A typed row of one of charter's tables.
///
/// Implemented by the row structs in [`crate::tables`]; the conversions are
/// generated from the same column list as the table's [`TableSpec`].
pub trait Record: Sized {
    /// The table this row belongs to.
    const SPEC: &'static TableSpec;

    /// The row's cells, in column order.
    fn values(&self) -> Vec<Value<'_>>;

    /// The row's id, computed from its key columns (the `id` field is ignored).
    fn compute_id(&self) -> String {
        let values = self.values();
        crate::hash::row_id(
            Self::SPEC.name,
            Self::SPEC
                .columns
                .iter()
                .zip(values)
                .filter(|(c, _)| c.role == Role::Key)
                .map(|(c, v)| (c.name, v)),
        )
    }

    /// Sets the `id` field from the key columns and returns the row.
    fn with_id(self) -> Self;

    /// Converts rows to a record batch with the table's Arrow schema.
    fn to_batch(rows: &[Self]) -> crate::Result<RecordBatch>;

    /// Converts a record batch (checked against the table's schema) to rows.
    /// `path` and `first_row` locate values in error messages.
    fn from_batch(
        batch: &RecordBatch,
        path: &std::path::Path,
        first_row: u64,
    ) -> crate::Result<Vec<Self>>;
}

/// Declares a table: its row struct, its [`TableSpec`] and the [`Record`] impl.
macro_rules! table {
    (
        $(#[$meta:meta])*
        pub struct $row:ident in $spec:ident = $name:literal, version $version:literal {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty => $role:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $row {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        #[doc = concat!("The `", $name, "` table.")]
        pub const $spec: $crate::schema::TableSpec = $crate::schema::TableSpec {
            name: $name,
            version: $version,
            columns: &[$(
                $crate::schema::ColumnSpec {
                    name: stringify!($field),
                    ty: <$ty as $crate::value::ColumnValue>::TYPE,
                    nullable: <$ty as $crate::value::ColumnValue>::NULLABLE,
                    role: $crate::schema::Role::$role,
                },
            )*],
        };

        impl $crate::record::Record for $row {
            const SPEC: &'static $crate::schema::TableSpec = &$spec;

            fn values(&self) -> Vec<$crate::value::Value<'_>> {
                vec![$( $crate::value::ColumnValue::to_value(&self.$field), )*]
            }

            fn with_id(mut self) -> Self {
                self.id = $crate::record::Record::compute_id(&self);
                self
            }

            fn to_batch(rows: &[Self]) -> $crate::Result<arrow_array::RecordBatch> {
                let columns = vec![$(
                    $crate::value::build_array(
                        <$ty as $crate::value::ColumnValue>::TYPE,
                        rows.iter().map(|r| $crate::value::ColumnValue::to_value(&r.$field)),
                    ),
                )*];
                arrow_array::RecordBatch::try_new($spec.arrow_schema(), columns)
                    .map_err(|e| $crate::Error::arrow(concat!("building a `", $name, "` batch"), e))
            }

            fn from_batch(
                batch: &arrow_array::RecordBatch,
                path: &std::path::Path,
                first_row: u64,
            ) -> $crate::Result<Vec<Self>> {
                $( let $field = $crate::record::view(batch, stringify!($field), path)?; )*
                (0..batch.num_rows())
                    .map(|i| Ok($row {
                        $( $field: $crate::record::cell::<$ty>(&$field, i, stringify!($field), path, first_row)?, )*
                    }))
                    .collect()
            }
        }
    };
}
pub(crate) use table;

/// A typed view of the named column of `batch`.
pub(crate) fn view<'a>(
    batch: &'a RecordBatch,
    name: &str,
    path: &std::path::Path,
) -> crate::Result<crate::value::ColumnView<'a>> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| crate::Error::Column {
            path: path.to_path_buf(),
            column: name.to_string(),
            problem: "missing".to_string(),
        })?;
    crate::value::ColumnView::new(column.as_ref()).ok_or_else(|| crate::Error::Column {
        path: path.to_path_buf(),
        column: name.to_string(),
        problem: format!("unsupported type {}", column.data_type()),
    })
}

/// Reads one typed cell, naming the row and column if it is null where it must not be.
pub(crate) fn cell<T: crate::value::ColumnValue>(
    view: &crate::value::ColumnView<'_>,
    row: usize,
    name: &str,
    path: &std::path::Path,
    first_row: u64,
) -> crate::Result<T> {
    let value = view.value(row);
    let is_null = value == Value::Null;
    T::from_value(value).ok_or_else(|| crate::Error::Value {
        path: path.to_path_buf(),
        row: first_row + row as u64,
        column: name.to_string(),
        problem: if is_null {
            "null in a non-nullable column".to_string()
        } else {
            format!("not a {} value", T::TYPE.name())
        },
    })
}
