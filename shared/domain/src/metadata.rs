//! Metadata: a client's own keys and values on a document or segment, and the filters that
//! search them. Parsed once where they enter (the API, or an event being decoded) and passed
//! on as types, so a [`Metadata`] or [`MetaFilter`] that exists is within its limits.
//!
//! * Up to [`MAX_KEYS`] keys of 1–[`MAX_KEY_CHARS`] ASCII letters, digits, `_` and `-`: a key
//!   is a segment of the store's payload path `meta.<key>`, and these characters need no
//!   quoting there.
//! * Values are strings, numbers, booleans or arrays of strings; at most [`MAX_BYTES`] as JSON.
//! * Numbers are compared as 64-bit floats (by the store's range conditions), which are exact
//!   for integers up to 2^53: an integer beyond ±2^53 is refused rather than compared wrongly.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Number, Value};

/// Most keys in one metadata object.
pub const MAX_KEYS: usize = 32;
/// Most bytes of one metadata object serialized as JSON.
pub const MAX_BYTES: usize = 8 * 1024;
/// Most characters in a key.
pub const MAX_KEY_CHARS: usize = 64;
/// Largest magnitude of a number: up to it, every integer is exact as a 64-bit float.
pub const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;
/// Most conditions in one filter (`must` and `must_not` together).
pub const MAX_CONDITIONS: usize = 32;
/// Most values in one `any` condition.
pub const MAX_ANY_VALUES: usize = 100;

/// The name of a JSON value's type, for messages ("got an object").
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Why a string is not a metadata key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("must be 1 to {MAX_KEY_CHARS} characters, got {0}")]
    Length(usize),
    #[error("may hold only ASCII letters, digits, `_` and `-`, not {0:?}")]
    Char(char),
}

/// A metadata key: 1–64 of `[A-Za-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetaKey(String);

impl MetaKey {
    pub fn parse(value: impl Into<String>) -> Result<Self, KeyError> {
        let value = value.into();
        let chars = value.chars().count();
        if chars == 0 || chars > MAX_KEY_CHARS {
            return Err(KeyError::Length(chars));
        }
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
        {
            return Err(KeyError::Char(c));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MetaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for MetaKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Why a JSON value is not a metadata value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("must be a string, a number, a boolean or an array of strings, got {0}")]
    Type(&'static str),
    #[error("is an array that may hold only strings, got {kind} at [{index}]")]
    ArrayItem { index: usize, kind: &'static str },
    #[error("is {0}, beyond ±2^53 (numbers compare as 64-bit floats)")]
    Inexact(Number),
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum MetaValue {
    String(String),
    /// Kept as sent (an integer stays an integer in the payload).
    Number(Number),
    Bool(bool),
    Strings(Vec<String>),
}

/// Whether `number` is exact as a 64-bit float: an integer within ±2^53, or any float.
fn exact(number: &Number) -> bool {
    const LIMIT: u64 = 1 << 53;
    if let Some(n) = number.as_i64() {
        n.unsigned_abs() <= LIMIT
    } else if let Some(n) = number.as_u64() {
        n <= LIMIT
    } else {
        number
            .as_f64()
            .is_some_and(|n| n.is_finite() && n.abs() <= MAX_EXACT_INTEGER)
    }
}

impl MetaValue {
    pub fn from_json(value: Value) -> Result<Self, ValueError> {
        match value {
            Value::String(s) => Ok(Self::String(s)),
            Value::Bool(b) => Ok(Self::Bool(b)),
            Value::Number(n) if exact(&n) => Ok(Self::Number(n)),
            Value::Number(n) => Err(ValueError::Inexact(n)),
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(index, item)| match item {
                    Value::String(s) => Ok(s),
                    other @ (Value::Null
                    | Value::Bool(_)
                    | Value::Number(_)
                    | Value::Array(_)
                    | Value::Object(_)) => Err(ValueError::ArrayItem {
                        index,
                        kind: kind(&other),
                    }),
                })
                .collect::<Result<_, _>>()
                .map(Self::Strings),
            other @ (Value::Null | Value::Object(_)) => Err(ValueError::Type(kind(&other))),
        }
    }
}

/// Why a JSON value is not a metadata object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("must be an object of keys and values, got {0}")]
    NotAnObject(&'static str),
    #[error("has {0} keys; at most {MAX_KEYS}")]
    TooManyKeys(usize),
    #[error("is {0} bytes as JSON; at most {MAX_BYTES}")]
    TooLarge(usize),
    #[error("key {key:?} {error}")]
    Key { key: String, error: KeyError },
    #[error("value of \"{key}\" {error}")]
    Value { key: MetaKey, error: ValueError },
}

/// A document's or segment's metadata: at most [`MAX_KEYS`] keys and [`MAX_BYTES`] of JSON.
/// Serialized as a plain JSON object (keys sorted); decoding validates it again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<MetaKey, MetaValue>);

impl Metadata {
    /// Validates a JSON value as metadata.
    pub fn from_json(value: Value) -> Result<Self, MetadataError> {
        let Value::Object(map) = value else {
            return Err(MetadataError::NotAnObject(kind(&value)));
        };
        if map.len() > MAX_KEYS {
            return Err(MetadataError::TooManyKeys(map.len()));
        }
        let bytes = serde_json::to_vec(&map).map_or(usize::MAX, |json| json.len());
        if bytes > MAX_BYTES {
            return Err(MetadataError::TooLarge(bytes));
        }
        let mut entries = BTreeMap::new();
        for (key, value) in map {
            let key = match MetaKey::parse(key.clone()) {
                Ok(parsed) => parsed,
                Err(error) => return Err(MetadataError::Key { key, error }),
            };
            match MetaValue::from_json(value) {
                Ok(value) => entries.insert(key, value),
                Err(error) => return Err(MetadataError::Value { key, error }),
            };
        }
        Ok(Self(entries))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&MetaKey, &MetaValue)> {
        self.0.iter()
    }

    /// As a JSON value (an object).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_json(value).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Filters

/// A value a condition compares with.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaScalar {
    /// Equal to a string value, or to an element of an array of strings.
    String(String),
    /// Equal, as a number, to a number value (`5` equals `5.0`); never to a string.
    Number(f64),
    Bool(bool),
}

/// Bounds on a number value; at least one is set, all finite.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MetaRange {
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
}

/// What a condition tests.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaTest {
    /// The value (or, for an array, one of its elements) equals this.
    Eq(MetaScalar),
    /// The value (or one of its elements) equals one of these.
    Any(Vec<MetaScalar>),
    /// The value is a number within these bounds.
    Range(MetaRange),
}

/// One condition on one key.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaCondition {
    pub key: MetaKey,
    pub test: MetaTest,
}

/// Conditions on metadata: every `must` holds and no `must_not` does. A point without the key
/// fails every condition on it, so `must` excludes it and `must_not` keeps it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetaFilter {
    pub must: Vec<MetaCondition>,
    pub must_not: Vec<MetaCondition>,
}

impl MetaFilter {
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.must_not.is_empty()
    }
}

/// Why a condition, as a client wrote it, is not one.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConditionError {
    #[error("key {0}")]
    Key(KeyError),
    #[error("needs one of `eq`, `any` and `range`")]
    NoTest,
    #[error("takes only one of `eq`, `any` and `range`")]
    SeveralTests,
    #[error("`eq` must be a string, a number or a boolean, got {0}")]
    Eq(&'static str),
    #[error("`any[{index}]` must be a string, a number or a boolean, got {kind}")]
    AnyItem { index: usize, kind: &'static str },
    #[error("`{0}` is beyond ±2^53 (numbers compare as 64-bit floats)")]
    Inexact(&'static str),
    #[error("`any` needs 1 to {MAX_ANY_VALUES} values, got {0}")]
    AnyLength(usize),
    #[error("`range` needs at least one of `gt`, `gte`, `lt` and `lte`")]
    NoBound,
    #[error("`range.{0}` must be a finite number")]
    Bound(&'static str),
}

/// Why a filter is not one: too many conditions, or which condition is wrong.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FilterError {
    #[error("has {0} conditions; at most {MAX_CONDITIONS}")]
    TooMany(usize),
    #[error("{list}[{index}] {error}")]
    Condition {
        list: &'static str,
        index: usize,
        error: ConditionError,
    },
}

/// Why a JSON value is not a [`MetaScalar`].
enum ScalarError {
    Kind(&'static str),
    Inexact,
}

fn scalar(value: Value) -> Result<MetaScalar, ScalarError> {
    match value {
        Value::String(s) => Ok(MetaScalar::String(s)),
        Value::Bool(b) => Ok(MetaScalar::Bool(b)),
        Value::Number(n) => match n.as_f64() {
            Some(f) if exact(&n) => Ok(MetaScalar::Number(f)),
            _ => Err(ScalarError::Inexact),
        },
        other @ (Value::Null | Value::Array(_) | Value::Object(_)) => {
            Err(ScalarError::Kind(kind(&other)))
        }
    }
}

impl MetaCondition {
    /// A condition as a client writes it: a key and exactly one of `eq`, `any`, `range`.
    pub fn parse(
        key: impl Into<String>,
        eq: Option<Value>,
        any: Option<Vec<Value>>,
        range: Option<MetaRange>,
    ) -> Result<Self, ConditionError> {
        let key = MetaKey::parse(key).map_err(ConditionError::Key)?;
        let test = match (eq, any, range) {
            (None, None, None) => return Err(ConditionError::NoTest),
            (Some(eq), None, None) => MetaTest::Eq(scalar(eq).map_err(|e| match e {
                ScalarError::Kind(kind) => ConditionError::Eq(kind),
                ScalarError::Inexact => ConditionError::Inexact("eq"),
            })?),
            (None, Some(values), None) => {
                if values.is_empty() || values.len() > MAX_ANY_VALUES {
                    return Err(ConditionError::AnyLength(values.len()));
                }
                let values = values
                    .into_iter()
                    .enumerate()
                    .map(|(index, value)| {
                        scalar(value).map_err(|e| match e {
                            ScalarError::Kind(kind) => ConditionError::AnyItem { index, kind },
                            ScalarError::Inexact => ConditionError::Inexact("any"),
                        })
                    })
                    .collect::<Result<_, _>>()?;
                MetaTest::Any(values)
            }
            (None, None, Some(range)) => {
                let bounds = [
                    ("gt", range.gt),
                    ("gte", range.gte),
                    ("lt", range.lt),
                    ("lte", range.lte),
                ];
                if bounds.iter().all(|(_, b)| b.is_none()) {
                    return Err(ConditionError::NoBound);
                }
                if let Some((name, _)) = bounds
                    .iter()
                    .find(|(_, b)| b.is_some_and(|b| !b.is_finite()))
                {
                    return Err(ConditionError::Bound(name));
                }
                MetaTest::Range(range)
            }
            _ => return Err(ConditionError::SeveralTests),
        };
        Ok(Self { key, test })
    }
}

impl MetaFilter {
    /// A filter from its conditions, checked: at most [`MAX_CONDITIONS`] in all.
    pub fn new(
        must: Vec<MetaCondition>,
        must_not: Vec<MetaCondition>,
    ) -> Result<Self, FilterError> {
        let n = must.len() + must_not.len();
        if n > MAX_CONDITIONS {
            return Err(FilterError::TooMany(n));
        }
        Ok(Self { must, must_not })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_short_and_plain() {
        assert!(MetaKey::parse("lang").is_ok());
        assert!(MetaKey::parse("release-year_2").is_ok());
        assert!(MetaKey::parse("k".repeat(64)).is_ok());
        assert_eq!(MetaKey::parse(""), Err(KeyError::Length(0)));
        assert_eq!(MetaKey::parse("k".repeat(65)), Err(KeyError::Length(65)));
        for (bad, c) in [
            ("a.b", '.'),
            ("a b", ' '),
            ("a[0]", '['),
            ("é", 'é'),
            ("\"q\"", '"'),
        ] {
            assert_eq!(MetaKey::parse(bad), Err(KeyError::Char(c)), "{bad}");
        }
    }

    #[test]
    fn values_are_strings_numbers_booleans_or_arrays_of_strings() {
        let meta = Metadata::from_json(json!({
            "lang": "en", "year": 2004, "score": 0.5, "draft": false, "tags": ["a", "b"],
            "none": []
        }))
        .unwrap();
        assert_eq!(meta.len(), 6);
        assert_eq!(meta.get("year"), Some(&MetaValue::Number(2004.into())));
        assert_eq!(
            meta.to_json(),
            json!({"draft": false, "lang": "en", "none": [], "score": 0.5, "tags": ["a", "b"],
                   "year": 2004})
        );
        let err = |value: Value| Metadata::from_json(value).unwrap_err();
        assert_eq!(err(json!([1])), MetadataError::NotAnObject("an array"));
        assert_eq!(err(json!("x")), MetadataError::NotAnObject("a string"));
        let key = MetaKey::parse("k").unwrap();
        assert_eq!(
            err(json!({"k": null})),
            MetadataError::Value {
                key: key.clone(),
                error: ValueError::Type("null")
            }
        );
        assert_eq!(
            err(json!({"k": {"nested": 1}})),
            MetadataError::Value {
                key: key.clone(),
                error: ValueError::Type("an object")
            }
        );
        assert_eq!(
            err(json!({"k": ["a", 1]})),
            MetadataError::Value {
                key: key.clone(),
                error: ValueError::ArrayItem {
                    index: 1,
                    kind: "a number"
                }
            }
        );
        assert!(matches!(
            err(json!({"k": 9_007_199_254_740_993_u64})),
            MetadataError::Value {
                error: ValueError::Inexact(_),
                ..
            }
        ));
        assert!(matches!(
            err(json!({"a.b": 1})),
            MetadataError::Key {
                error: KeyError::Char('.'),
                ..
            }
        ));
        assert_eq!(
            err(json!({"k": null})).to_string(),
            "value of \"k\" must be a string, a number, a boolean or an array of strings, got null"
        );
    }

    #[test]
    fn at_most_32_keys_and_8_kib() {
        let keys: serde_json::Map<String, Value> =
            (0..32).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(Metadata::from_json(Value::Object(keys.clone())).is_ok());
        let mut more = keys;
        more.insert("k32".into(), json!(1));
        assert_eq!(
            Metadata::from_json(Value::Object(more)),
            Err(MetadataError::TooManyKeys(33))
        );
        // {"k":"…"} is 8 bytes of JSON around the string.
        assert!(Metadata::from_json(json!({"k": "x".repeat(MAX_BYTES - 8)})).is_ok());
        assert_eq!(
            Metadata::from_json(json!({"k": "x".repeat(MAX_BYTES - 7)})),
            Err(MetadataError::TooLarge(MAX_BYTES + 1))
        );
    }

    #[test]
    fn serialized_as_an_object_and_validated_when_read() {
        let meta = Metadata::from_json(json!({"b": 1, "a": "x"})).unwrap();
        assert_eq!(serde_json::to_string(&meta).unwrap(), r#"{"a":"x","b":1}"#);
        assert_eq!(
            serde_json::from_str::<Metadata>(r#"{"a":"x","b":1}"#).unwrap(),
            meta
        );
        assert!(serde_json::from_str::<Metadata>(r#"{"a":null}"#).is_err());
        assert!(serde_json::from_str::<Metadata>(r#"{"a.b":1}"#).is_err());
        assert!(Metadata::default().is_empty());
    }

    #[test]
    fn conditions_take_exactly_one_test() {
        let eq = MetaCondition::parse("lang", Some(json!("en")), None, None).unwrap();
        assert_eq!(eq.test, MetaTest::Eq(MetaScalar::String("en".into())));
        let n = MetaCondition::parse("year", Some(json!(2004)), None, None).unwrap();
        assert_eq!(n.test, MetaTest::Eq(MetaScalar::Number(2004.0)));
        let any = MetaCondition::parse(
            "tag",
            None,
            Some(vec![json!("a"), json!(1), json!(true)]),
            None,
        )
        .unwrap();
        assert_eq!(
            any.test,
            MetaTest::Any(vec![
                MetaScalar::String("a".into()),
                MetaScalar::Number(1.0),
                MetaScalar::Bool(true)
            ])
        );
        let range = MetaRange {
            gte: Some(2000.0),
            lt: Some(2010.0),
            ..MetaRange::default()
        };
        assert!(MetaCondition::parse("year", None, None, Some(range)).is_ok());

        let err = |eq, any, range| MetaCondition::parse("k", eq, any, range).unwrap_err();
        assert_eq!(err(None, None, None), ConditionError::NoTest);
        assert_eq!(
            err(Some(json!(1)), Some(vec![json!(1)]), None),
            ConditionError::SeveralTests
        );
        assert_eq!(
            err(Some(json!(null)), None, None),
            ConditionError::Eq("null")
        );
        assert_eq!(
            err(Some(json!(["a"])), None, None),
            ConditionError::Eq("an array")
        );
        assert_eq!(err(None, Some(vec![]), None), ConditionError::AnyLength(0));
        assert_eq!(
            err(None, Some(vec![json!("a"), json!({})]), None),
            ConditionError::AnyItem {
                index: 1,
                kind: "an object"
            }
        );
        assert_eq!(
            err(None, None, Some(MetaRange::default())),
            ConditionError::NoBound
        );
        assert_eq!(
            err(
                None,
                None,
                Some(MetaRange {
                    lt: Some(f64::INFINITY),
                    ..MetaRange::default()
                })
            ),
            ConditionError::Bound("lt")
        );
        assert_eq!(
            MetaCondition::parse("a.b", Some(json!(1)), None, None).unwrap_err(),
            ConditionError::Key(KeyError::Char('.'))
        );
    }

    #[test]
    fn at_most_32_conditions() {
        let c = MetaCondition::parse("k", Some(json!(1)), None, None).unwrap();
        assert!(MetaFilter::new(vec![c.clone(); 16], vec![c.clone(); 16]).is_ok());
        assert_eq!(
            MetaFilter::new(vec![c.clone(); 17], vec![c; 16]),
            Err(FilterError::TooMany(33))
        );
    }
}
