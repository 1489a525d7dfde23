//! HTTP routes, one module per resource. Each handler validates, authenticates (through
//! [`crate::auth::BearerAuth`]) and delegates; errors go through [`crate::problem`].

pub mod health;
pub mod ingest;
pub mod jobs;
pub mod search;
pub mod vectors;

use crate::problem::ApiError;

/// Identifiers supplied by clients (`asset_id`, `segment_id`): 1–256 characters, no control
/// characters. They end up in payloads, ids and log lines, so they are checked at the door.
pub fn validate_identifier(field: &str, value: &str) -> Result<(), ApiError> {
    let chars = value.chars().count();
    if chars == 0 || chars > 256 {
        return Err(ApiError::Validation(format!(
            "{field} must be 1 to 256 characters, got {chars}"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::Validation(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_identifier;

    #[test]
    fn identifiers() {
        assert!(validate_identifier("asset_id", "doc-123").is_ok());
        assert!(validate_identifier("asset_id", &"é".repeat(256)).is_ok());
        assert!(validate_identifier("asset_id", &"a".repeat(257)).is_err());
        assert!(validate_identifier("asset_id", "").is_err());
        assert!(validate_identifier("asset_id", "a\nb").is_err());
        assert!(validate_identifier("asset_id", "a\u{7f}b").is_err());
        assert!(validate_identifier("asset_id", "a\u{0}").is_err());
    }
}
