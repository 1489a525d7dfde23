//! Heimdex's text extraction: an uploaded file's bytes to plain text plus source locations, for
//! the worker to chunk and embed. Synchronous and pure (no I/O); call it from a blocking thread.
//!
//! # Text
//!
//! [`Extracted::text`] reads as prose: no markup, runs of whitespace collapsed to one space,
//! paragraphs separated by a blank line (`"\n\n"`), headings as paragraphs of their own, line
//! breaks that carry meaning (PDF lines, `<br>`, `<pre>`, code blocks, plain-text lines) kept as
//! a single `"\n"`, control characters dropped. It never starts or ends with whitespace.
//!
//! | format | yields | locations |
//! | --- | --- | --- |
//! | PDF | each page's text in reading order as [`pdf_extract`] lays it out, pages separated by `"\n\n"`; a larger vertical gap between lines is a paragraph break | pages |
//! | DOCX | the paragraphs of `word/document.xml` (body and table cells; not headers, footers, footnotes or comments) | sections: paragraphs styled as headings (`heading N`/`Title` styles or an outline level) |
//! | HTML | the `<body>`'s visible text; block elements are paragraphs; `<head>`, `<script>`, `<style>`, `<noscript>`, `<template>` are dropped | sections: `<h1>`–`<h6>` |
//! | Markdown | CommonMark with tables and strikethrough; raw HTML and front matter are dropped | sections: ATX and setext headings |
//! | text | the text, a leading BOM dropped | none |
//!
//! # Locations
//!
//! Offsets are in chars (Unicode scalar values: Rust `char` indices, Python `str` indices) of
//! [`Extracted::text`]. [`Extracted::location`] maps a range to its page(s) and section.
//!
//! # Errors
//!
//! Every [`ExtractError`] means the file is bad: encrypted, corrupt, without text, too large,
//! or (text formats) not UTF-8. Parser panics on hostile input are caught and reported as
//! [`ExtractError::Corrupt`] (this needs `panic = "unwind"`, the default); the panic hook still
//! runs, so the panic message is printed to stderr.

mod builder;
mod docx;
mod error;
mod html;
mod markdown;
mod pdf;
pub mod testing;
mod text;

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

pub use error::{Cause, ExtractError, Limit};

use error::Panicked;

/// A supported file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Pdf,
    Docx,
    Html,
    Markdown,
    Text,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Pdf,
        Format::Docx,
        Format::Html,
        Format::Markdown,
        Format::Text,
    ];

    /// From a Content-Type, its parameters (`; charset=utf-8`) ignored, case-insensitive:
    /// `application/pdf`, `application/vnd.openxmlformats-officedocument.wordprocessingml.document`,
    /// `text/html`, `text/markdown` or `text/x-markdown`, `text/plain`. `None`: unsupported.
    pub fn from_content_type(content_type: &str) -> Option<Format> {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        let essence = essence.to_ascii_lowercase();
        match essence.as_str() {
            "text/x-markdown" => Some(Format::Markdown),
            other => Self::ALL.into_iter().find(|f| f.content_type() == other),
        }
    }

    /// From a file name's extension, with or without the dot, case-insensitive: `pdf`, `docx`,
    /// `html`, `htm`, `md`, `markdown`, `txt`.
    pub fn from_extension(ext: &str) -> Option<Format> {
        let ext = ext.strip_prefix('.').unwrap_or(ext).to_ascii_lowercase();
        match ext.as_str() {
            "pdf" => Some(Format::Pdf),
            "docx" => Some(Format::Docx),
            "html" | "htm" => Some(Format::Html),
            "md" | "markdown" => Some(Format::Markdown),
            "txt" => Some(Format::Text),
            _ => None,
        }
    }

    /// The canonical Content-Type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Pdf => "application/pdf",
            Format::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            Format::Html => "text/html",
            Format::Markdown => "text/markdown",
            Format::Text => "text/plain",
        }
    }

    /// `pdf`, `docx`, `html`, `markdown`, `text`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Docx => "docx",
            Format::Html => "html",
            Format::Markdown => "markdown",
            Format::Text => "text",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Size limits against hostile or absurd input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The file's size.
    pub max_input_bytes: usize,
    /// The extracted text's length, in chars.
    pub max_text_chars: usize,
    /// Total bytes decompressed from a DOCX's zip entries or a PDF's Flate streams
    /// (compression-bomb guard).
    pub max_decompressed_bytes: usize,
}

impl Default for Limits {
    /// 64 MiB in, 16 Mi chars out, 256 MiB decompressed.
    fn default() -> Self {
        Self {
            max_input_bytes: 64 << 20,
            max_text_chars: 16 << 20,
            max_decompressed_bytes: 256 << 20,
        }
    }
}

/// A heading and where its section starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// 1 for the top level (`<h1>`, `#`, Word's `heading 1` or `Title`), up to 9.
    pub level: u8,
    /// The heading's text, normalised as in [`Extracted::text`].
    pub title: String,
    /// Char offset of the heading's first char in [`Extracted::text`].
    pub start: usize,
}

/// Where a range of [`Extracted::text`] comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    /// PDF: the 1-based page the range starts on.
    pub page: Option<u32>,
    /// PDF: the page the range ends on, only when it is not `page`.
    pub page_end: Option<u32>,
    /// HTML, Markdown, DOCX: the title of the nearest heading at or before the range's start;
    /// `None` before the first heading.
    pub section: Option<String>,
}

/// A file's text and its locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    text: String,
    chars: usize,
    /// PDF: char offset where page `i + 1` starts. An empty page starts where the next text is.
    page_starts: Vec<usize>,
    /// In text order.
    sections: Vec<Section>,
}

impl Extracted {
    /// The normalised text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Consumes `self`, returning the text.
    pub fn into_text(self) -> String {
        self.text
    }

    /// The text's length in chars.
    pub fn char_len(&self) -> usize {
        self.chars
    }

    /// PDF: the char offset where each page starts (index 0 is page 1). Empty otherwise.
    pub fn page_starts(&self) -> &[usize] {
        &self.page_starts
    }

    /// The headings in text order (HTML, Markdown, DOCX).
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The location of the chars `[char_start, char_end)`: the page it starts on, the page it
    /// ends on when that differs, and the nearest preceding heading. Offsets past the end are
    /// taken as the end.
    pub fn location(&self, char_start: usize, char_end: usize) -> Location {
        let page = self.page_at(char_start);
        let last = char_end.saturating_sub(1).max(char_start);
        let page_end = self.page_at(last).filter(|&end| Some(end) != page);
        let section = self.section_at(char_start).map(|s| s.title.clone());
        Location {
            page,
            page_end,
            section,
        }
    }

    /// The 1-based page holding the char at `offset`.
    fn page_at(&self, offset: usize) -> Option<u32> {
        // The last page starting at or before `offset` (pages that are empty share their start
        // with the next page, which holds the char).
        let n = self.page_starts.partition_point(|&start| start <= offset);
        u32::try_from(n).ok().filter(|&n| n > 0)
    }

    fn section_at(&self, offset: usize) -> Option<&Section> {
        let n = self.sections.partition_point(|s| s.start <= offset);
        n.checked_sub(1).and_then(|i| self.sections.get(i))
    }
}

/// Extracts the text of a file of `format`.
pub fn extract(format: Format, bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    if bytes.len() > limits.max_input_bytes {
        return Err(ExtractError::TooLarge {
            limit: Limit::InputBytes,
            max: limits.max_input_bytes,
        });
    }
    catch_unwind(AssertUnwindSafe(|| {
        extract_unguarded(format, bytes, limits)
    }))
    .unwrap_or_else(|payload| {
        Err(ExtractError::corrupt_by(
            format,
            "the parser failed on it",
            Panicked::from_payload(payload.as_ref()),
        ))
    })
}

fn extract_unguarded(
    format: Format,
    bytes: &[u8],
    limits: &Limits,
) -> Result<Extracted, ExtractError> {
    match format {
        Format::Pdf => pdf::extract(bytes, limits),
        Format::Docx => docx::extract(bytes, limits),
        Format::Html => html::extract(text::decode(bytes)?, limits),
        Format::Markdown => markdown::extract(text::decode(bytes)?, limits),
        Format::Text => text::extract(text::decode(bytes)?, limits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
        for (ct, want) in [
            ("application/pdf", Some(Format::Pdf)),
            ("Application/PDF", Some(Format::Pdf)),
            (docx, Some(Format::Docx)),
            ("text/html; charset=utf-8", Some(Format::Html)),
            ("text/markdown", Some(Format::Markdown)),
            ("text/x-markdown;charset=UTF-8", Some(Format::Markdown)),
            (" text/plain ; charset=utf-8", Some(Format::Text)),
            ("application/msword", None),
            ("image/png", None),
            ("", None),
            ("text", None),
        ] {
            assert_eq!(Format::from_content_type(ct), want, "{ct}");
        }
        for f in Format::ALL {
            assert_eq!(Format::from_content_type(f.content_type()), Some(f));
        }
    }

    #[test]
    fn extensions() {
        for (ext, want) in [
            ("pdf", Some(Format::Pdf)),
            (".PDF", Some(Format::Pdf)),
            ("docx", Some(Format::Docx)),
            ("htm", Some(Format::Html)),
            ("html", Some(Format::Html)),
            ("md", Some(Format::Markdown)),
            ("markdown", Some(Format::Markdown)),
            ("txt", Some(Format::Text)),
            ("doc", None),
            ("", None),
        ] {
            assert_eq!(Format::from_extension(ext), want, "{ext}");
        }
        let names: Vec<_> = Format::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(names, ["pdf", "docx", "html", "markdown", "text"]);
    }

    #[test]
    fn input_limit() {
        let limits = Limits {
            max_input_bytes: 4,
            ..Limits::default()
        };
        let err = extract(Format::Text, b"hello", &limits).unwrap_err();
        assert!(matches!(
            err,
            ExtractError::TooLarge {
                limit: Limit::InputBytes,
                max: 4
            }
        ));
        assert_eq!(err.code(), "too_large");
    }

    #[test]
    fn location_without_pages_or_sections() {
        let e = extract(Format::Text, b"just text", &Limits::default()).unwrap();
        assert_eq!(e.location(0, 4), Location::default());
    }
}
