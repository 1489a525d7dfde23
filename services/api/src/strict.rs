//! Request field types stricter than poem-openapi's defaults. Its `String` accepts JSON numbers
//! and booleans and turns them into text (`5` → `"5"`); an API that names things by id must not
//! guess, so a wrongly typed field is refused like any malformed body.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
