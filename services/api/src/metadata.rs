//! Metadata in requests: the `metadata` object a document or segment carries, and the
//! `filter.metadata` of a search. The JSON is taken as it comes (any shape parses) and then
//! checked into the domain's [`Metadata`] and [`MetaFilter`], so a wrong shape is a `422`
//! naming the field and the reason, not a generic parse error. The schemas published in
//! `/openapi.json` still say what is accepted.

use std::borrow::Cow;

use heimdex_domain::metadata::{MAX_CONDITIONS, MAX_KEYS, MetaCondition, MetaRange};
use heimdex_domain::{MetaFilter, Metadata};
use poem_openapi::Object;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

use crate::problem::ApiError;
use crate::strict::StrictString;

fn inline(schema: MetaSchema) -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(schema))
}

fn scalar_schemas() -> Vec<MetaSchemaRef> {
    vec![
        inline(MetaSchema::new("string")),
        inline(MetaSchema::new("number")),
        inline(MetaSchema::new("boolean")),
    ]
}

macro_rules! any_json {
    ($(#[$doc:meta])* $name:ident, $schema:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name(pub Value);

        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = Value;
            type RawElementValueType = Value;

            fn name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn schema_ref() -> MetaSchemaRef {
                $schema
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(&self.0)
            }

            fn raw_element_iter<'a>(
                &'a self,
            ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(std::iter::once(&self.0))
            }
        }

        impl ParseFromJSON for $name {
            /// Any JSON parses; the route checks it (a `422` with the reason).
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                Ok(Self(value.unwrap_or(Value::Null)))
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                Some(self.0.clone())
            }
        }
    };
}

any_json!(
    /// A `metadata` object: the client's own keys (the schema's `additionalProperties`, so
    /// unknown-field checks leave them alone).
    MetadataBody,
    inline(MetaSchema {
        description: Some(
            "Your own keys and values, stored in every chunk's payload under `meta` and \
             searchable with `filter.metadata`. At most 32 keys of 1–64 ASCII letters, digits, \
             `_` and `-`; values are strings, numbers (within ±2^53), booleans or arrays of \
             strings; at most 8 KiB as JSON. Anything else is 422.",
        ),
        max_properties: Some(MAX_KEYS),
        additional_properties: Some(Box::new(inline(MetaSchema {
            any_of: {
                let mut schemas = scalar_schemas();
                schemas.push(inline(MetaSchema {
                    items: Some(Box::new(inline(MetaSchema::new("string")))),
                    ..MetaSchema::new("array")
                }));
                schemas
            },
            ..MetaSchema::ANY
        }))),
        ..MetaSchema::new("object")
    })
);

any_json!(
    /// A value a metadata condition compares with: a string, a number or a boolean.
    ScalarBody,
    inline(MetaSchema {
        any_of: scalar_schemas(),
        ..MetaSchema::ANY
    })
);

/// Checks a request's `metadata` (absent: none). `field` names it in the `422`.
pub fn parse_metadata(field: &str, body: Option<MetadataBody>) -> Result<Metadata, ApiError> {
    match body {
        None | Some(MetadataBody(Value::Null)) => Ok(Metadata::default()),
        Some(MetadataBody(value)) => {
            Metadata::from_json(value).map_err(|err| ApiError::Validation(format!("{field} {err}")))
        }
    }
}

/// Bounds of a `range` condition: only numbers are in a range.
#[derive(Object, Debug, Default)]
pub struct RangeBody {
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
}

/// One condition on one metadata key: exactly one of `eq`, `any` and `range`.
#[derive(Object, Debug)]
pub struct MetaConditionBody {
    /// The metadata key (1–64 ASCII letters, digits, `_` and `-`).
    pub key: StrictString,
    /// Equal to this string, number or boolean. A string equals a string value or an element
    /// of an array of strings; a number equals a number value by value (`5` is `5.0`), never
    /// a string (`"5"` is not `5`).
    pub eq: Option<ScalarBody>,
    /// Equal to one of these (1–100 values, of any of `eq`'s kinds).
    pub any: Option<Vec<ScalarBody>>,
    /// A number within these bounds (at least one); string values are in no range.
    pub range: Option<RangeBody>,
}

/// Conditions on the points' metadata, AND-ed with everything else in the filter (and always
/// with the caller's organization): every `must` condition holds and no `must_not` condition
/// does. A point without the key fails every condition on it: `must` excludes it, `must_not`
/// keeps it. At most 32 conditions in all.
#[derive(Object, Debug, Default)]
pub struct MetaFilterBody {
    pub must: Option<Vec<MetaConditionBody>>,
    pub must_not: Option<Vec<MetaConditionBody>>,
}

/// Checks a search's `filter.metadata` into a [`MetaFilter`] (absent: none).
pub fn parse_filter(field: &str, body: Option<MetaFilterBody>) -> Result<MetaFilter, ApiError> {
    let Some(body) = body else {
        return Ok(MetaFilter::default());
    };
    let list = |name: &str, conditions: Option<Vec<MetaConditionBody>>| {
        conditions
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let range = c.range.map(|r| MetaRange {
                    gt: r.gt,
                    gte: r.gte,
                    lt: r.lt,
                    lte: r.lte,
                });
                MetaCondition::parse(
                    c.key.0,
                    c.eq.map(|v| v.0),
                    c.any
                        .map(|values| values.into_iter().map(|v| v.0).collect()),
                    range,
                )
                .map_err(|err| ApiError::Validation(format!("{field}.{name}[{i}] {err}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let n = body.must.as_ref().map_or(0, Vec::len) + body.must_not.as_ref().map_or(0, Vec::len);
    if n > MAX_CONDITIONS {
        return Err(ApiError::Validation(format!(
            "{field} has {n} conditions; at most {MAX_CONDITIONS}"
        )));
    }
    let must = list("must", body.must)?;
    let must_not = list("must_not", body.must_not)?;
    MetaFilter::new(must, must_not).map_err(|err| ApiError::Validation(format!("{field} {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strict::Known;
    use serde_json::json;

    #[derive(Object, Debug)]
    struct Body {
        metadata: Option<MetadataBody>,
        filter: Option<MetaFilterBody>,
    }

    fn detail(value: Value) -> Result<(Metadata, MetaFilter), String> {
        let body = Known::<Body>::parse_from_json(Some(value))
            .map_err(|err| format!("400 {}", err.into_message()))?
            .0;
        let validation = |err: ApiError| {
            let ApiError::Validation(detail) = err else {
                panic!("not a validation error: {err:?}");
            };
            detail
        };
        let metadata = parse_metadata("metadata", body.metadata).map_err(validation)?;
        let filter = parse_filter("filter.metadata", body.filter).map_err(validation)?;
        Ok((metadata, filter))
    }

    #[test]
    fn metadata_takes_any_key_and_refuses_bad_shapes_with_the_reason() {
        let (metadata, _) =
            detail(json!({"metadata": {"lang": "en", "any-key_1": [], "n": 1}})).expect("valid");
        assert_eq!(metadata.len(), 3);
        assert!(detail(json!({"metadata": null})).unwrap().0.is_empty());
        for (body, expected) in [
            (
                json!({"metadata": 5}),
                "metadata must be an object of keys and values, got a number",
            ),
            (
                json!({"metadata": {"a": {"b": 1}}}),
                "metadata value of \"a\" must be a string, a number, a boolean or an array of strings, got an object",
            ),
            (
                json!({"metadata": {"a": [1]}}),
                "metadata value of \"a\" is an array that may hold only strings, got a number at [0]",
            ),
            (
                json!({"metadata": {"a.b": 1}}),
                "metadata key \"a.b\" may hold only ASCII letters, digits, `_` and `-`, not '.'",
            ),
            (
                json!({"metadata": {"": 1}}),
                "metadata key \"\" must be 1 to 64 characters, got 0",
            ),
        ] {
            assert_eq!(detail(body).unwrap_err(), expected);
        }
    }

    #[test]
    fn filters_are_checked_condition_by_condition() {
        let (_, filter) = detail(json!({"filter": {
            "must": [{"key": "lang", "eq": "en"}, {"key": "year", "range": {"gte": 2000, "lt": 2010}},
                     {"key": "tag", "any": ["a", "b"]}],
            "must_not": [{"key": "draft", "eq": true}]
        }}))
        .expect("valid");
        assert_eq!((filter.must.len(), filter.must_not.len()), (3, 1));
        for (body, expected) in [
            (
                json!({"filter": {"must": [{"key": "k"}]}}),
                "filter.metadata.must[0] needs one of `eq`, `any` and `range`",
            ),
            (
                json!({"filter": {"must_not": [{"key": "k", "eq": 1, "range": {"gt": 0}}]}}),
                "filter.metadata.must_not[0] takes only one of `eq`, `any` and `range`",
            ),
            (
                json!({"filter": {"must": [{"key": "k", "eq": {}}]}}),
                "filter.metadata.must[0] `eq` must be a string, a number or a boolean, got an object",
            ),
            (
                json!({"filter": {"must": [{"key": "k", "any": []}]}}),
                "filter.metadata.must[0] `any` needs 1 to 100 values, got 0",
            ),
            (
                json!({"filter": {"must": [{"key": "k", "range": {}}]}}),
                "filter.metadata.must[0] `range` needs at least one of `gt`, `gte`, `lt` and `lte`",
            ),
            (
                json!({"filter": {"must": [{"key": "a b", "eq": 1}]}}),
                "filter.metadata.must[0] key may hold only ASCII letters, digits, `_` and `-`, not ' '",
            ),
        ] {
            assert_eq!(detail(body).unwrap_err(), expected);
        }
        let many: Vec<Value> = (0..33)
            .map(|i| json!({"key": format!("k{i}"), "eq": 1}))
            .collect();
        assert_eq!(
            detail(json!({"filter": {"must": many}})).unwrap_err(),
            "filter.metadata has 33 conditions; at most 32"
        );
        // A typo in a condition's field is an unknown field (400), like every other typo.
        let err = detail(json!({"filter": {"must": [{"key": "k", "eqq": 1}]}})).unwrap_err();
        assert!(
            err.starts_with("400") && err.contains("did you mean"),
            "{err}"
        );
    }
}
