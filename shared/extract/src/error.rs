//! Why a file yields no text. Every variant means "this file is bad" (the crate does no I/O).

use std::fmt;

use crate::Format;

/// The cause behind [`ExtractError::Corrupt`], from the parser that failed.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A file that cannot be turned into text. Display gives a short reason for a person.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The file needs a password: a PDF whose user password is not empty, a password-protected
    /// DOCX (an OLE file holding an `EncryptedPackage`).
    #[error("the file is encrypted")]
    Encrypted,
    /// The bytes are not a readable file of the format, or its parser failed or panicked.
    #[error("not a readable {format} file: {reason}")]
    Corrupt {
        format: Format,
        reason: &'static str,
        #[source]
        source: Option<Cause>,
    },
    /// The file is well-formed but holds no text (a scanned PDF, an empty document).
    #[error("the file has no extractable text")]
    NoText,
    /// A size limit of [`crate::Limits`] was exceeded.
    #[error("{limit} is over the limit of {max}")]
    TooLarge { limit: Limit, max: usize },
    /// A text format (plain text, Markdown, HTML) that is not valid UTF-8.
    #[error("the text is not valid UTF-8 (at byte {valid_up_to})")]
    NotUtf8 {
        valid_up_to: usize,
        #[source]
        source: std::str::Utf8Error,
    },
}

impl ExtractError {
    /// A stable machine-readable code: `encrypted`, `corrupt`, `no_text`, `too_large`,
    /// `not_utf8` (for API error bodies and metric labels).
    pub fn code(&self) -> &'static str {
        match self {
            ExtractError::Encrypted => "encrypted",
            ExtractError::Corrupt { .. } => "corrupt",
            ExtractError::NoText => "no_text",
            ExtractError::TooLarge { .. } => "too_large",
            ExtractError::NotUtf8 { .. } => "not_utf8",
        }
    }

    pub(crate) fn corrupt(format: Format, reason: &'static str) -> Self {
        ExtractError::Corrupt {
            format,
            reason,
            source: None,
        }
    }

    pub(crate) fn corrupt_by(
        format: Format,
        reason: &'static str,
        source: impl Into<Cause>,
    ) -> Self {
        ExtractError::Corrupt {
            format,
            reason,
            source: Some(source.into()),
        }
    }
}

/// Which limit of [`crate::Limits`] a file exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`crate::Limits::max_input_bytes`].
    InputBytes,
    /// [`crate::Limits::max_text_chars`].
    TextChars,
    /// [`crate::Limits::max_decompressed_bytes`].
    DecompressedBytes,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::InputBytes => "the file's size in bytes",
            Limit::TextChars => "the extracted text's length in chars",
            Limit::DecompressedBytes => "the decompressed size in bytes",
        })
    }
}

/// A parser panic, kept as the source of [`ExtractError::Corrupt`].
#[derive(Debug, thiserror::Error)]
#[error("parser panicked: {0}")]
pub(crate) struct Panicked(pub(crate) String);

impl Panicked {
    pub(crate) fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Panicked(message)
    }
}
