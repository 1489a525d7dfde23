//! Validated identifiers a client chooses: parsed once where they enter (the API, or an event
//! being decoded), then passed as types. Serialised as plain strings, so events and payloads keep
//! their shape.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The most characters (Unicode scalar values) an identifier may have.
pub const MAX_IDENT_CHARS: usize = 256;

/// Why a string is not a valid identifier.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("must be 1 to {MAX_IDENT_CHARS} characters, got {0}")]
    Length(usize),
    #[error("must not contain control characters")]
    Control,
}

fn check(value: &str) -> Result<(), IdentError> {
    let chars = value.chars().count();
    if chars == 0 || chars > MAX_IDENT_CHARS {
        return Err(IdentError::Length(chars));
    }
    if value.chars().any(char::is_control) {
        return Err(IdentError::Control);
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value`: 1 to 256 characters, none of them a control character.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdentError> {
                let value = value.into();
                check(&value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdentError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// A document (asset) of a tenant, named by the client: `doc-123`, `reports/2024.pdf`.
    AssetId
);

identifier!(
    /// One segment (chunk) of an asset, named by the client or by chunking (`chunk-0`).
    SegmentId
);

identifier!(
    /// What names a delete request (its `Idempotency-Key`, or a fresh UUID): a retried request
    /// with the same key is the same job.
    RequestId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_one_to_256_characters_without_control_characters() {
        assert!(AssetId::parse("doc-123").is_ok());
        assert!(AssetId::parse("é".repeat(256)).is_ok());
        assert_eq!(
            AssetId::parse("a".repeat(257)),
            Err(IdentError::Length(257))
        );
        assert_eq!(SegmentId::parse(""), Err(IdentError::Length(0)));
        for bad in ["a\nb", "a\u{7f}b", "a\u{0}"] {
            assert_eq!(SegmentId::parse(bad), Err(IdentError::Control), "{bad:?}");
        }
    }

    #[test]
    fn serialised_as_plain_strings_and_validated_when_read() {
        let id = AssetId::parse("doc-123").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"doc-123\"");
        assert_eq!(serde_json::from_str::<AssetId>("\"doc-123\"").unwrap(), id);
        assert!(serde_json::from_str::<AssetId>("\"\"").is_err());
    }
}
