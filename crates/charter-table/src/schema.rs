//! Table and column specifications: what a table's columns are, and how they
//! map onto Arrow types.
//!
//! The same specification is written out, with each column's meaning, in the
//! repository's `schemas/` folder; a test keeps the two in step.

use std::path::Path;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};

/// The logical type of a column.
///
/// Several physical Arrow types read as one logical type (`Utf8`, `LargeUtf8`
/// and `Utf8View` are all `utf8`), so tables written by other tools — polars
/// writes large or view strings — are read without conversion. charter itself
/// always writes the first Arrow type listed for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// UTF-8 text (`Utf8`).
    Utf8,
    /// A boolean (`Boolean`).
    Bool,
    /// An unsigned 32-bit integer (`UInt32`).
    UInt32,
    /// An unsigned 64-bit integer (`UInt64`).
    UInt64,
    /// A signed 64-bit integer (`Int64`).
    Int64,
    /// A 32-bit float (`Float32`).
    Float32,
    /// A 64-bit float (`Float64`).
    Float64,
    /// A list of non-null UTF-8 strings (`List<Utf8>`).
    ListUtf8,
}

impl ColumnType {
    /// The Arrow type charter writes for this column type.
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::UInt32 => DataType::UInt32,
            ColumnType::UInt64 => DataType::UInt64,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::ListUtf8 => {
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, false)))
            }
        }
    }

    /// The name used in schema files: `utf8`, `bool`, `uint32`, `uint64`,
    /// `int64`, `float32`, `float64`, `list<utf8>`.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Utf8 => "utf8",
            ColumnType::Bool => "bool",
            ColumnType::UInt32 => "uint32",
            ColumnType::UInt64 => "uint64",
            ColumnType::Int64 => "int64",
            ColumnType::Float32 => "float32",
            ColumnType::Float64 => "float64",
            ColumnType::ListUtf8 => "list<utf8>",
        }
    }

    /// Parses a schema-file type name (the inverse of [`ColumnType::name`]).
    pub fn parse(name: &str) -> Option<Self> {
        const ALL: [ColumnType; 8] = [
            ColumnType::Utf8,
            ColumnType::Bool,
            ColumnType::UInt32,
            ColumnType::UInt64,
            ColumnType::Int64,
            ColumnType::Float32,
            ColumnType::Float64,
            ColumnType::ListUtf8,
        ];
        ALL.into_iter().find(|t| t.name() == name)
    }

    /// The logical type of an Arrow type, if charter reads it.
    pub fn of_arrow(data_type: &DataType) -> Option<Self> {
        let is_str =
            |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
        Some(match data_type {
            t if is_str(t) => ColumnType::Utf8,
            DataType::Boolean => ColumnType::Bool,
            DataType::UInt32 => ColumnType::UInt32,
            DataType::UInt64 => ColumnType::UInt64,
            DataType::Int64 => ColumnType::Int64,
            DataType::Float32 => ColumnType::Float32,
            DataType::Float64 => ColumnType::Float64,
            DataType::List(f) | DataType::LargeList(f) if is_str(f.data_type()) => {
                ColumnType::ListUtf8
            }
            _ => return None,
        })
    }
}

/// How a column takes part in the row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The row id itself.
    Id,
    /// Part of the row's identity: hashed into the id.
    Key,
    /// Carried with the row but not part of its identity (outputs, counts, labels).
    Data,
}

impl Role {
    /// The name used in schema files: `id`, `key` or `data`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Id => "id",
            Role::Key => "key",
            Role::Data => "data",
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSpec {
    /// Column name.
    pub name: &'static str,
    /// Logical type.
    pub ty: ColumnType,
    /// Whether the column may hold nulls.
    pub nullable: bool,
    /// Whether the column is part of the row id.
    pub role: Role,
}

/// A table: its name, schema version and columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    /// Table name, as recorded in the file's `charter.table` metadata.
    pub name: &'static str,
    /// Schema version, bumped whenever a column changes.
    pub version: u32,
    /// Columns in file order; the first is always `id`.
    pub columns: &'static [ColumnSpec],
}

impl TableSpec {
    /// The Arrow schema charter writes for this table.
    pub fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(c.name, c.ty.arrow(), c.nullable))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Checks a file's Arrow schema against this table and lists every
    /// mismatch by column, expected vs found.
    ///
    /// Extra columns are allowed (a notebook may add one); a nullable column
    /// where a non-null one is expected is allowed too, and checked for nulls
    /// when rows are read.
    pub fn check_schema(&self, path: &Path, found: &Schema) -> Result<()> {
        let mut mismatches = Vec::new();
        for col in self.columns {
            match found.field_with_name(col.name) {
                Err(_) => mismatches.push(format!(
                    "  column `{}`: expected {}{}, found no such column",
                    col.name,
                    col.ty.name(),
                    if col.nullable { " (nullable)" } else { "" }
                )),
                Ok(field) => {
                    if ColumnType::of_arrow(field.data_type()) != Some(col.ty) {
                        mismatches.push(format!(
                            "  column `{}`: expected {}, found {}",
                            col.name,
                            col.ty.name(),
                            field.data_type()
                        ));
                    }
                }
            }
        }
        if mismatches.is_empty() {
            Ok(())
        } else {
            Err(Error::Columns {
                path: path.to_path_buf(),
                table: self.name.to_string(),
                mismatches,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_round_trip() {
        for name in [
            "utf8",
            "bool",
            "uint32",
            "uint64",
            "int64",
            "float32",
            "float64",
            "list<utf8>",
        ] {
            let ty = ColumnType::parse(name).unwrap();
            assert_eq!(ty.name(), name);
            assert_eq!(ColumnType::of_arrow(&ty.arrow()), Some(ty));
        }
        assert_eq!(ColumnType::parse("string"), None);
        assert_eq!(
            ColumnType::of_arrow(&DataType::LargeUtf8),
            Some(ColumnType::Utf8)
        );
        assert_eq!(ColumnType::of_arrow(&DataType::Int8), None);
    }
}
