//! Provenance: what built a table, recorded as Parquet key/value metadata.
//!
//! | key | value |
//! |---|---|
//! | `charter.table` | table name |
//! | `charter.schema_version` | schema version |
//! | `charter.stage`, `charter.stage_version` | the stage that wrote it |
//! | `charter.settings` | the stage's settings, canonical JSON |
//! | `charter.inputs` | `[{"name", "content_hash"}]` of every input, canonical JSON |
//! | `charter.model_hash`, `charter.constitution_hash` | when the stage used them |
//! | `charter.build_key` | blake3 of all of the above |
//! | `charter.content_hash` | the table's content hash (see [`crate::hash`]) |
//! | `charter.rows` | row count |
//! | `charter.created_by` | charter's version |
//!
//! Nothing time- or machine-dependent is recorded, so the same build writes
//! the same bytes.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::schema::TableSpec;

/// Metadata key: table name.
pub const KEY_TABLE: &str = "charter.table";
/// Metadata key: schema version.
pub const KEY_SCHEMA_VERSION: &str = "charter.schema_version";
/// Metadata key: stage name.
pub const KEY_STAGE: &str = "charter.stage";
/// Metadata key: stage version.
pub const KEY_STAGE_VERSION: &str = "charter.stage_version";
/// Metadata key: canonical settings JSON.
pub const KEY_SETTINGS: &str = "charter.settings";
/// Metadata key: inputs JSON.
pub const KEY_INPUTS: &str = "charter.inputs";
/// Metadata key: model content hash.
pub const KEY_MODEL_HASH: &str = "charter.model_hash";
/// Metadata key: constitution content hash.
pub const KEY_CONSTITUTION_HASH: &str = "charter.constitution_hash";
/// Metadata key: build key.
pub const KEY_BUILD_KEY: &str = "charter.build_key";
/// Metadata key: content hash of the rows.
pub const KEY_CONTENT_HASH: &str = "charter.content_hash";
/// Metadata key: row count.
pub const KEY_ROWS: &str = "charter.rows";
/// Metadata key: the charter version that wrote the file.
pub const KEY_CREATED_BY: &str = "charter.created_by";

/// One input of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// A name for the input: a table name or a file name.
    pub name: String,
    /// The input's content hash (a table's `charter.content_hash`, or blake3 of a file's bytes).
    pub content_hash: String,
}

/// What built a table. Together with the table name and schema version it
/// determines the build key.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// Stage name, e.g. `prompts.import`.
    pub stage: String,
    /// Stage version, bumped when the stage's output for the same inputs changes.
    pub stage_version: u32,
    /// The stage's settings (stored canonically: keys sorted, no whitespace).
    pub settings: Json,
    /// The stage's inputs, in the order the stage reads them.
    pub inputs: Vec<InputRef>,
    /// Content hash of the model, when the stage runs one.
    pub model_hash: Option<String>,
    /// Content hash of the constitution, when the stage uses one.
    pub constitution_hash: Option<String>,
}

impl Provenance {
    /// The build key of a `table` built this way: blake3 over the canonical
    /// JSON of the table, schema version and everything in `self`.
    pub fn build_key(&self, table: &TableSpec) -> String {
        let key = serde_json::json!({
            "table": table.name,
            "schema_version": table.version,
            "stage": self.stage,
            "stage_version": self.stage_version,
            "settings": self.settings,
            "inputs": self.inputs,
            "model_hash": self.model_hash,
            "constitution_hash": self.constitution_hash,
        });
        blake3::hash(canonical_json(&key).as_bytes())
            .to_hex()
            .to_string()
    }

    /// The metadata entries written before the rows (everything but the
    /// content hash and row count, which are known only at the end).
    pub(crate) fn metadata(&self, table: &TableSpec) -> Vec<(String, String)> {
        let mut kv = vec![
            (KEY_TABLE, table.name.to_string()),
            (KEY_SCHEMA_VERSION, table.version.to_string()),
            (KEY_STAGE, self.stage.clone()),
            (KEY_STAGE_VERSION, self.stage_version.to_string()),
            (KEY_SETTINGS, canonical_json(&self.settings)),
            (
                KEY_INPUTS,
                canonical_json(&serde_json::to_value(&self.inputs).unwrap_or(Json::Null)),
            ),
        ];
        if let Some(h) = &self.model_hash {
            kv.push((KEY_MODEL_HASH, h.clone()));
        }
        if let Some(h) = &self.constitution_hash {
            kv.push((KEY_CONSTITUTION_HASH, h.clone()));
        }
        kv.push((KEY_BUILD_KEY, self.build_key(table)));
        kv.push((
            KEY_CREATED_BY,
            concat!("charter ", env!("CARGO_PKG_VERSION")).to_string(),
        ));
        kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// JSON with object keys sorted at every level and no insignificant whitespace,
/// so equal values always give equal bytes.
pub fn canonical_json(value: &Json) -> String {
    fn sort(value: &Json) -> Json {
        match value {
            Json::Object(map) => {
                let mut entries: Vec<(&String, &Json)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Json::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sort(v)))
                        .collect(),
                )
            }
            Json::Array(items) => Json::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    // Serialising a `Value` cannot fail: its keys are strings.
    serde_json::to_string(&sort(value)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v = serde_json::json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[1,{"y":1,"z":0}]},"b":1}"#
        );
    }

    #[test]
    fn build_key_depends_on_every_part() {
        let base = Provenance {
            stage: "s".into(),
            stage_version: 1,
            settings: serde_json::json!({"x": 1}),
            inputs: vec![InputRef {
                name: "a".into(),
                content_hash: "h".into(),
            }],
            model_hash: None,
            constitution_hash: None,
        };
        let spec = &crate::tables::PROMPTS;
        let key = base.build_key(spec);
        let mut variants = vec![];
        let mut p = base.clone();
        p.stage_version = 2;
        variants.push(p);
        let mut p = base.clone();
        p.settings = serde_json::json!({"x": 2});
        variants.push(p);
        let mut p = base.clone();
        p.inputs[0].content_hash = "g".into();
        variants.push(p);
        let mut p = base.clone();
        p.model_hash = Some("m".into());
        variants.push(p);
        for v in variants {
            assert_ne!(v.build_key(spec), key);
        }
        assert_ne!(base.build_key(&crate::tables::RESPONSES), key);
        // Key order in settings does not matter.
        let mut p = base.clone();
        p.settings = serde_json::json!({"x": 1});
        assert_eq!(p.build_key(spec), key);
    }
}
