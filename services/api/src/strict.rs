//! Request types stricter than poem-openapi's defaults.
//!
//! * [`StrictString`], [`StrictText`]: its `String` accepts JSON numbers and booleans and turns
//!   them into text (`5` → `"5"`); an API that names things by id must not guess, so a wrongly
//!   typed field is refused like any malformed body.
//! * [`Known`]: a body whose fields the API does not have is refused, naming the first such
//!   field by its path (`filter.asset`, `segments[2].txt`), with the closest known name when one
//!   is near. A typo in an optional field (`"filters"` for `"filter"`) would otherwise be
//!   dropped in silence and the request run without it. Unknown fields are looked for before
//!   anything else, so a misspelt required field is reported as the typo it is rather than as
//!   the missing field it causes. Objects whose keys are the user's (a schema with
//!   `additionalProperties`, or with no properties: metadata-like maps) are not checked.

use std::any::TypeId;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

macro_rules! strict_string {
    ($(#[$doc:meta])* $name:ident, max_length: $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name(pub String);

        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = String;
            type RawElementValueType = String;

            fn name() -> Cow<'static, str> {
                "string".into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new(MetaSchema {
                    min_length: Some(1),
                    max_length: $max,
                    ..MetaSchema::new("string")
                }))
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
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                match value {
                    Some(Value::String(s)) => Ok(Self(s)),
                    Some(other) => Err(ParseError::expected_type(other)),
                    None => Err(ParseError::expected_input()),
                }
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                Some(Value::String(self.0.clone()))
            }
        }
    };
}

strict_string!(
    /// A JSON string, and nothing else: an identifier of 1–256 characters.
    StrictString,
    max_length: Some(256)
);

strict_string!(
    /// A JSON string, and nothing else: text, whose limit each route documents.
    StrictText,
    max_length: None
);

/// A JSON request body of type `T` that may carry no field `T`'s schema does not name (see the
/// module documentation). Every route taking a JSON body takes `Json<Known<T>>`.
#[derive(Debug)]
pub struct Known<T>(pub T);

impl<T: Type> Type for Known<T> {
    const IS_REQUIRED: bool = T::IS_REQUIRED;
    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        T::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_raw_value()
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        self.0.raw_element_iter()
    }
}

impl<T: ParseFromJSON + 'static> ParseFromJSON for Known<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        if let Some(value) = &value {
            let schemas = schemas_of::<T>();
            if let Some(unknown) = first_unknown(value, &T::schema_ref(), &schemas, Path::Root) {
                return Err(ParseError::custom(unknown));
            }
        }
        T::parse_from_json(value)
            .map(Known)
            .map_err(ParseError::propagate)
    }
}

impl<T: ToJSON> ToJSON for Known<T> {
    fn to_json(&self) -> Option<Value> {
        self.0.to_json()
    }
}

/// The schemas `T` refers to, registered once per type.
fn schemas_of<T: Type + 'static>() -> Arc<Registry> {
    static CACHE: LazyLock<RwLock<HashMap<TypeId, Arc<Registry>>>> = LazyLock::new(RwLock::default);
    let id = TypeId::of::<T>();
    if let Some(registry) = CACHE.read().ok().and_then(|cache| cache.get(&id).cloned()) {
        return registry;
    }
    let mut registry = Registry::new();
    T::register(&mut registry);
    let registry = Arc::new(registry);
    if let Ok(mut cache) = CACHE.write() {
        cache.insert(id, registry.clone());
    }
    registry
}

/// Where a value sits in the body: built into text (`segments[2].txt`) only for the message
/// that names an unknown field, so a body of many array items (a vector of 384 numbers) costs
/// no string per item.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, key) => f.write_str(key),
            Path::Field(parent, key) => write!(f, "{parent}.{key}"),
            Path::Item(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// The first field of `value` (depth first, in the body's order) that `schema` does not name,
/// as a message: "unknown field `filter.asset` (did you mean `filter.asset_id`?)".
fn first_unknown(
    value: &Value,
    schema: &MetaSchemaRef,
    registry: &Registry,
    path: Path<'_>,
) -> Option<String> {
    let schema: &MetaSchema = match schema {
        MetaSchemaRef::Inline(schema) => schema,
        MetaSchemaRef::Reference(name) => registry.schemas.get(name)?,
    };
    // A field with a description of its own refers to its type through `allOf` (the type's
    // `$ref` beside an inline schema holding the description, as OpenAPI 3.0 allows no
    // siblings beside `$ref`): the type's schema is the one to check against.
    if schema.properties.is_empty()
        && schema.additional_properties.is_none()
        && let Some(inner) = schema
            .all_of
            .iter()
            .find(|s| matches!(s, MetaSchemaRef::Reference(_)))
    {
        return first_unknown(value, inner, registry, path);
    }
    match value {
        Value::Object(fields) => {
            // A map keyed by the user (metadata): any key goes.
            if schema.additional_properties.is_some() || schema.properties.is_empty() {
                return None;
            }
            for (key, field) in fields {
                let at = Path::Field(&path, key);
                let Some((_, field_schema)) =
                    schema.properties.iter().find(|(name, _)| name == key)
                else {
                    let known = schema.properties.iter().map(|(name, _)| *name);
                    return Some(match closest(key, known) {
                        Some(name) => format!(
                            "unknown field `{at}` (did you mean `{}`?)",
                            Path::Field(&path, name)
                        ),
                        None => format!("unknown field `{at}`"),
                    });
                };
                if let Some(found) = first_unknown(field, field_schema, registry, at) {
                    return Some(found);
                }
            }
            None
        }
        Value::Array(items) => {
            let item_schema = schema.items.as_deref()?;
            items.iter().enumerate().find_map(|(i, item)| {
                first_unknown(item, item_schema, registry, Path::Item(&path, i))
            })
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => None,
    }
}

/// The known name within two edits of `key` (the closest), for a typo's hint.
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|name| (edit_distance(key, name), name))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// Levenshtein distance over characters (both strings are short field names).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(poem_openapi::Object, Debug)]
    struct Inner {
        asset_id: Option<String>,
    }

    #[derive(poem_openapi::Object, Debug)]
    struct Outer {
        query: String,
        filter: Option<Inner>,
        /// A described field: its schema refers to `Inner` through `allOf`.
        described: Option<Inner>,
        items: Option<Vec<Inner>>,
        metadata: Option<HashMap<String, Value>>,
    }

    fn parse(value: Value) -> Result<Known<Outer>, String> {
        Known::<Outer>::parse_from_json(Some(value)).map_err(|err| err.into_message())
    }

    #[test]
    fn unknown_fields_are_named_by_their_path() {
        assert!(parse(json!({"query": "q", "filter": {"asset_id": "a"}})).is_ok());
        let err = parse(json!({"query": "q", "filters": {}})).unwrap_err();
        assert!(
            err.contains("unknown field `filters` (did you mean `filter`?)"),
            "{err}"
        );
        let err = parse(json!({"query": "q", "filter": {"asset": "a"}})).unwrap_err();
        assert!(
            err.contains("unknown field `filter.asset`") && !err.contains("did you mean"),
            "{err}"
        );
        let err = parse(json!({"query": "q", "items": [{}, {"asset_idd": "a"}]})).unwrap_err();
        assert!(
            err.contains("unknown field `items[1].asset_idd` (did you mean `items[1].asset_id`?)"),
            "{err}"
        );
        let err = parse(json!({"query": "q", "described": {"asset_idd": "a"}})).unwrap_err();
        assert!(
            err.contains(
                "unknown field `described.asset_idd` (did you mean `described.asset_id`?)"
            ),
            "a field with a doc comment is checked too: {err}"
        );
        let err = parse(json!({"querry": "q"})).unwrap_err();
        assert!(
            err.contains("unknown field `querry` (did you mean `query`?)"),
            "a misspelt required field is named as the typo: {err}"
        );
        let err = parse(json!({"query": "q", "zzz": 1})).unwrap_err();
        assert!(
            err.contains("unknown field `zzz`") && !err.contains("did you mean"),
            "{err}"
        );
    }

    #[test]
    fn user_keyed_maps_take_any_key() {
        assert!(
            parse(json!({"query": "q", "metadata": {"anything": 1, "at": {"all": 2}}})).is_ok()
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("filter", "filters"), 1);
        assert_eq!(edit_distance("segment_id", "segmnt_id"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn only_strings_parse() {
        assert_eq!(
            StrictString::parse_from_json(Some(json!("a"))).unwrap().0,
            "a"
        );
        for bad in [json!(5), json!(true), json!(null), json!([]), json!({})] {
            assert!(
                StrictString::parse_from_json(Some(bad.clone())).is_err(),
                "{bad}"
            );
        }
        assert!(StrictString::parse_from_json(None).is_err());
        assert!(StrictText::parse_from_json(Some(json!(1.5))).is_err());
        assert_eq!(
            StrictText::parse_from_json(Some(json!("long text")))
                .unwrap()
                .0,
            "long text"
        );
    }
}
