//! A spec document read strictly, before its fields are: every number finite and in range, every
//! mapping without duplicate keys — each refusal naming the field's path. (A lenient read turned
//! YAML's `.nan` into a missing field, so a default took its place, and let a duplicated JSON key
//! silently replace the first.)

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A JSON value that refused non-finite numbers and duplicate keys on its way in.
pub(crate) struct StrictValue(pub(crate) Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

/// Brackets a duplicated key in an error message.
const DUPLICATE: char = '\u{1}';

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON or YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("must be a finite number (got {v})")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                // Marked, so `read` can name the key's own path.
                return Err(de::Error::custom(format!("{DUPLICATE}{key}{DUPLICATE}")));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// The path and reason of a strict read's failure.
pub(crate) fn read<'de, D>(d: D) -> Result<Value, (String, String)>
where
    D: Deserializer<'de>,
{
    serde_path_to_error::deserialize::<_, StrictValue>(d)
        .map(|v| v.0)
        .map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." || path.is_empty() {
                "(document)".to_string()
            } else {
                path
            };
            // YAML's messages start with the path already: said once.
            let why = e.into_inner().to_string();
            let mut parts = why.splitn(3, DUPLICATE);
            if let (Some(_), Some(key), Some(rest)) = (parts.next(), parts.next(), parts.next()) {
                let field = if field == "(document)" {
                    key.to_string()
                } else {
                    format!("{field}.{key}")
                };
                return (field, format!("appears twice in one mapping{rest}"));
            }
            let why = why
                .strip_prefix(&format!("{field}: "))
                .map_or(why.clone(), str::to_string);
            (field, why)
        })
}
