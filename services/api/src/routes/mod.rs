//! HTTP routes, one module per resource. Each handler validates, authenticates (through
//! [`crate::auth::BearerAuth`]) and delegates; errors go through [`crate::problem`].

pub mod admin;
pub mod documents;
pub mod health;
pub mod ingest;
pub mod jobs;
pub mod search;
pub mod upload;
pub mod vectors;

use heimdex_domain::IdentError;

use crate::problem::ApiError;

/// Parses an identifier a client supplies (`asset_id`, `segment_id`, an `Idempotency-Key`) into
/// its domain type: 1–256 characters, no control characters. They end up in payloads, ids and
/// log lines, so they are checked at the door; a bad one is a 422 naming `field`.
pub fn parse_ident<T>(field: &str, value: impl Into<String>) -> Result<T, ApiError>
where
    T: TryFrom<String, Error = IdentError>,
{
    T::try_from(value.into()).map_err(|err| ApiError::Validation(format!("{field} {err}")))
}

#[cfg(test)]
mod tests {
    use heimdex_domain::AssetId;

    use super::parse_ident;
    use crate::problem::ApiError;

    fn detail(value: &str) -> Option<String> {
        match parse_ident::<AssetId>("asset_id", value) {
            Ok(_) => None,
            Err(ApiError::Validation(detail)) => Some(detail),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn identifiers() {
        assert_eq!(detail("doc-123"), None);
        assert_eq!(detail(&"é".repeat(256)), None);
        assert_eq!(
            detail(&"a".repeat(257)).as_deref(),
            Some("asset_id must be 1 to 256 characters, got 257")
        );
        assert!(detail("").is_some());
        assert_eq!(
            detail("a\nb").as_deref(),
            Some("asset_id must not contain control characters")
        );
        assert!(detail("a\u{7f}b").is_some());
        assert!(detail("a\u{0}").is_some());
    }
}
