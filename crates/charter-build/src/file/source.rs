//! A build file's text read with the position of every key and value, so
//! that any error (a syntax error, an unknown field, a value of the wrong
//! type, a setting a stage rejects) names `file:line:column`.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;

use crate::error::Error;

/// A table's keys and values in file order, each with its span.
pub(crate) type Entries = Vec<(Spanned<String>, Spanned<toml::Value>)>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Wire {
    pub(crate) build: Spanned<BuildWire>,
    #[serde(default)]
    pub(crate) defaults: Option<Spanned<Keys>>,
    #[serde(default, rename = "stage")]
    pub(crate) stages: Vec<Spanned<Keys>>,
}

/// The `[build]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BuildWire {
    #[serde(default)]
    pub(crate) seed: u64,
    pub(crate) model: Option<Spanned<String>>,
    pub(crate) constitution: Option<Spanned<String>>,
    pub(crate) out: Spanned<String>,
}

/// A table of any keys, spans kept.
#[derive(Deserialize, Default)]
#[serde(transparent)]
pub(crate) struct Keys(BTreeMap<Spanned<String>, Spanned<toml::Value>>);

impl Keys {
    /// The entries in file order.
    pub(crate) fn entries(self) -> Entries {
        let mut all: Entries = self.0.into_iter().collect();
        all.sort_by_key(|(k, _)| k.span().start);
        all
    }
}

/// The build file's name and text, to turn byte offsets into `line:column`.
pub(crate) struct Source<'t> {
    pub(crate) file: String,
    text: &'t str,
    line_starts: Vec<usize>,
}

impl<'t> Source<'t> {
    pub(crate) fn new(file: String, text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            file,
            text,
            line_starts,
        }
    }

    /// `line:column` (1-based, columns in characters) of byte `offset`.
    pub(crate) fn position(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = self.text[start..offset].chars().count() + 1;
        format!("{line}:{column}")
    }

    /// `file:line:column: message` at the start of `span`.
    pub(crate) fn error(&self, span: &Range<usize>, message: impl std::fmt::Display) -> Error {
        Error::Settings(format!(
            "{}:{}: {message}",
            self.file,
            self.position(span.start)
        ))
    }

    /// The file parsed; a syntax or shape error is located.
    pub(crate) fn parse(&self) -> Result<Wire, Error> {
        toml::from_str(self.text).map_err(|e| {
            let message = e.message().trim_end().to_string();
            match e.span() {
                Some(span) => self.error(&span, message),
                None => Error::Settings(format!("{}: {message}", self.file)),
            }
        })
    }
}

/// The field names of the struct `T` deserializes as, asked of serde
/// itself, so that the list of a stage's settings is the settings struct
/// and never a copy of it.
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// `T` from `entries` (all of them fields of `T`). A value of the wrong
/// type is reported at that value: each entry is tried alone first.
pub(crate) fn settings<T: DeserializeOwned>(
    source: &Source<'_>,
    place: &str,
    entries: &[&(Spanned<String>, Spanned<toml::Value>)],
) -> Result<T, Error> {
    let table = |part: &[&(Spanned<String>, Spanned<toml::Value>)]| {
        toml::Value::Table(
            part.iter()
                .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone()))
                .collect(),
        )
    };
    for entry in entries {
        if let Err(e) = table(std::slice::from_ref(entry)).try_into::<T>() {
            let (key, value) = entry;
            return Err(source.error(
                &value.span(),
                format!(
                    "{place}, field `{}`: {}",
                    key.get_ref(),
                    e.message().trim_end()
                ),
            ));
        }
    }
    table(entries)
        .try_into::<T>()
        .map_err(|e| Error::Settings(format!("{}: {place}: {}", source.file, e.message())))
}
