//! Builds the normalised text and its locations as the format readers walk a document.
//!
//! Readers push text and structure (line breaks, paragraph ends, headings, page starts); the
//! builder collapses whitespace, writes the separators lazily (so the text never starts or ends
//! with one and never has two in a row), counts chars as it goes and records page and section
//! starts at the char where their first text lands.

use crate::error::{ExtractError, Limit};
use crate::{Extracted, Section};

/// What separates the next visible char from the previous one, strongest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Gap {
    None,
    Space,
    Line,
    Paragraph,
}

impl Gap {
    fn as_str(self) -> &'static str {
        match self {
            Gap::None => "",
            Gap::Space => " ",
            Gap::Line => "\n",
            Gap::Paragraph => "\n\n",
        }
    }
}

/// A heading whose text is being written.
#[derive(Debug)]
struct OpenHeading {
    level: u8,
    /// Char and byte offsets of its first char, once written.
    start: Option<(usize, usize)>,
}

#[derive(Debug)]
pub(crate) struct TextBuilder {
    text: String,
    chars: usize,
    max_chars: usize,
    gap: Gap,
    page_starts: Vec<usize>,
    /// Pages begun whose first char is not written yet.
    pending_pages: usize,
    sections: Vec<Section>,
    heading: Option<OpenHeading>,
}

impl TextBuilder {
    pub(crate) fn new(max_chars: usize) -> Self {
        Self {
            text: String::new(),
            chars: 0,
            max_chars,
            gap: Gap::None,
            page_starts: Vec::new(),
            pending_pages: 0,
            sections: Vec::new(),
            heading: None,
        }
    }

    /// Appends inline text: whitespace runs become one space, control chars are dropped.
    pub(crate) fn push_str(&mut self, s: &str) -> Result<(), ExtractError> {
        for c in s.chars() {
            self.push_char(c)?;
        }
        Ok(())
    }

    /// Appends text whose line breaks are kept (preformatted text, PDF lines): one newline is
    /// a line break, a blank line a paragraph break.
    pub(crate) fn push_lines(&mut self, s: &str) -> Result<(), ExtractError> {
        let mut newlines = 0;
        for (i, line) in s.split('\n').enumerate() {
            if i > 0 {
                newlines += 1;
            }
            if line.trim().is_empty() {
                self.push_str(line)?;
                continue;
            }
            self.breaks(newlines);
            newlines = 0;
            self.push_str(line)?;
        }
        self.breaks(newlines);
        Ok(())
    }

    fn breaks(&mut self, newlines: usize) {
        match newlines {
            0 => {}
            1 => self.line_break(),
            _ => self.paragraph_break(),
        }
    }

    pub(crate) fn push_char(&mut self, c: char) -> Result<(), ExtractError> {
        if let Some(expanded) = ligature(c) {
            return expanded.chars().try_for_each(|c| self.emit(c));
        }
        if c.is_whitespace() {
            self.widen(Gap::Space);
            Ok(())
        } else if c.is_control() {
            Ok(())
        } else {
            self.emit(c)
        }
    }

    /// A word boundary.
    pub(crate) fn space(&mut self) {
        self.widen(Gap::Space);
    }

    pub(crate) fn line_break(&mut self) {
        self.widen(Gap::Line);
    }

    pub(crate) fn paragraph_break(&mut self) {
        self.widen(Gap::Paragraph);
    }

    /// Starts a new page (1-based, in call order): the page begins with the next text written.
    pub(crate) fn begin_page(&mut self) {
        self.paragraph_break();
        self.pending_pages += 1;
    }

    /// Starts a heading of `level` (1 = top): its own paragraph, and a section from here on.
    pub(crate) fn begin_heading(&mut self, level: u8) {
        self.end_heading();
        self.paragraph_break();
        self.heading = Some(OpenHeading { level, start: None });
    }

    /// Ends the open heading, if any; a heading with no text records no section.
    pub(crate) fn end_heading(&mut self) {
        if let Some(OpenHeading {
            level,
            start: Some((start, byte)),
        }) = self.heading.take()
        {
            let title = self.text.get(byte..).unwrap_or_default().to_owned();
            self.sections.push(Section {
                level,
                title,
                start,
            });
            self.paragraph_break();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chars == 0
    }

    /// The text and its locations; [`ExtractError::NoText`] when nothing visible was written.
    pub(crate) fn finish(mut self) -> Result<Extracted, ExtractError> {
        self.end_heading();
        if self.is_empty() {
            return Err(ExtractError::NoText);
        }
        // Trailing empty pages start at the end of the text.
        let end = self.chars;
        self.page_starts
            .extend(std::iter::repeat_n(end, self.pending_pages));
        Ok(Extracted {
            text: self.text,
            chars: self.chars,
            page_starts: self.page_starts,
            sections: self.sections,
        })
    }

    fn widen(&mut self, gap: Gap) {
        self.gap = self.gap.max(gap);
    }

    fn emit(&mut self, c: char) -> Result<(), ExtractError> {
        if !self.text.is_empty() {
            let sep = self.gap.as_str();
            self.text.push_str(sep);
            self.chars += sep.len(); // separators are ASCII
        }
        self.gap = Gap::None;
        let (chars, bytes) = (self.chars, self.text.len());
        self.page_starts
            .extend(std::iter::repeat_n(chars, self.pending_pages));
        self.pending_pages = 0;
        if let Some(heading) = self.heading.as_mut() {
            heading.start.get_or_insert((chars, bytes));
        }
        self.text.push(c);
        self.chars += 1;
        if self.chars > self.max_chars {
            return Err(ExtractError::TooLarge {
                limit: Limit::TextChars,
                max: self.max_chars,
            });
        }
        Ok(())
    }
}

/// Latin typographic ligatures (common in PDFs typeset by TeX) as their letters, so that "ﬁle"
/// reads and matches as "file".
fn ligature(c: char) -> Option<&'static str> {
    match c {
        '\u{fb00}' => Some("ff"),
        '\u{fb01}' => Some("fi"),
        '\u{fb02}' => Some("fl"),
        '\u{fb03}' => Some("ffi"),
        '\u{fb04}' => Some("ffl"),
        '\u{fb05}' | '\u{fb06}' => Some("st"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_whitespace_and_separates_paragraphs() {
        let mut b = TextBuilder::new(1000);
        b.push_str("  Hello \t  world  ").unwrap();
        b.paragraph_break();
        b.paragraph_break();
        b.push_str("\n second ").unwrap();
        b.line_break();
        b.push_str("line \u{fb01}le").unwrap();
        b.paragraph_break();
        let e = b.finish().unwrap();
        assert_eq!(e.text(), "Hello world\n\nsecond\nline file");
    }

    #[test]
    fn pages_start_at_their_first_char() {
        let mut b = TextBuilder::new(1000);
        b.begin_page();
        b.push_str("one").unwrap();
        b.begin_page(); // empty page 2
        b.begin_page();
        b.push_str("three").unwrap();
        b.begin_page(); // empty trailing page 4
        let e = b.finish().unwrap();
        assert_eq!(e.text(), "one\n\nthree");
        assert_eq!(e.page_starts(), &[0, 5, 5, 10]);
        assert_eq!(e.location(5, 10).page, Some(3));
    }

    #[test]
    fn text_limit() {
        let mut b = TextBuilder::new(3);
        let err = b.push_str("abcd").unwrap_err();
        assert!(matches!(
            err,
            ExtractError::TooLarge {
                limit: Limit::TextChars,
                max: 3
            }
        ));
    }

    #[test]
    fn empty_is_no_text() {
        let mut b = TextBuilder::new(10);
        b.push_str(" \n\t ").unwrap();
        assert!(matches!(b.finish(), Err(ExtractError::NoText)));
    }
}
