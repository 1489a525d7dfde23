//! Plain text: UTF-8 only (invalid bytes are an error rather than replaced, so that a binary
//! file sent as text/plain is refused instead of indexed as mojibake).

use crate::builder::TextBuilder;
use crate::{ExtractError, Extracted, Limits};

/// The bytes as UTF-8, without a leading byte-order mark.
pub(crate) fn decode(bytes: &[u8]) -> Result<&str, ExtractError> {
    let text = std::str::from_utf8(bytes).map_err(|source| ExtractError::NotUtf8 {
        valid_up_to: source.valid_up_to(),
        source,
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// Lines are kept; blank lines separate paragraphs.
pub(crate) fn extract(text: &str, limits: &Limits) -> Result<Extracted, ExtractError> {
    let mut out = TextBuilder::new(limits.max_text_chars);
    out.push_lines(text)?;
    out.finish()
}

#[cfg(test)]
mod tests {
    use crate::{ExtractError, Format, Limits, extract};

    #[test]
    fn paragraphs_and_lines() {
        let text = "\u{feff}Title\r\n\r\n  First   paragraph,\r\nsecond line.\n \n\n\nNext.\n";
        let e = extract(Format::Text, text.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(e.text(), "Title\n\nFirst paragraph,\nsecond line.\n\nNext.");
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let err = extract(Format::Text, b"caf\xe9 au lait", &Limits::default()).unwrap_err();
        assert!(
            matches!(err, ExtractError::NotUtf8 { valid_up_to: 3, .. }),
            "{err:?}"
        );
        assert_eq!(err.code(), "not_utf8");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn blank_text_is_no_text() {
        let err = extract(Format::Text, b" \n\n\t", &Limits::default()).unwrap_err();
        assert!(matches!(err, ExtractError::NoText));
    }
}
