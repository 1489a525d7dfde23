//! DOCX (Office Open XML): the paragraphs of the main document part (named by `_rels/.rels`,
//! else `word/document.xml`), in order, table cells included;
//! headers, footers, footnotes, comments and deleted text are not. A paragraph is a heading when
//! its style is a heading (`heading N` or `Title` in `word/styles.xml`, or a style id such as
//! `Heading2`) or when it has an outline level. Every zip entry read counts towards
//! [`Limits::max_decompressed_bytes`], read through a cap, so a zip bomb stops at the limit.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::{NsReader, XmlVersion};
use zip::ZipArchive;
use zip::result::ZipError;

use crate::builder::TextBuilder;
use crate::error::Limit;
use crate::{ExtractError, Extracted, Format, Limits};

const WORD_NS: &str = "http://schemas.openxmlformats.org/wordprocessingml/2006/main";
/// The same vocabulary in Strict Open XML documents.
const WORD_STRICT_NS: &str = "http://purl.oclc.org/ooxml/wordprocessingml/main";
const RELATIONSHIPS_NS: &str = "http://schemas.openxmlformats.org/package/2006/relationships";
/// Relationship types (transitional and strict) whose target is the main document part.
const OFFICE_DOCUMENT_RELS: [&str; 2] = [
    "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument",
    "http://purl.oclc.org/ooxml/officeDocument/relationships/officeDocument",
];
const MARKUP_COMPATIBILITY_NS: &str = "http://schemas.openxmlformats.org/markup-compatibility/2006";
/// An OLE compound file: a legacy `.doc`, or a password-protected DOCX.
const OLE_MAGIC: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

pub(crate) fn extract(bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    if bytes.starts_with(OLE_MAGIC) {
        return Err(ole_error(bytes));
    }
    let mut archive = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| ExtractError::corrupt_by(Format::Docx, "not a zip archive", e))?;
    let mut budget = Budget {
        left: limits.max_decompressed_bytes,
        max: limits.max_decompressed_bytes,
    };
    let styles = match read_part(&mut archive, "word/styles.xml", &mut budget)? {
        Some(xml) => heading_styles(&xml)?,
        None => HashMap::new(),
    };
    let main_part = match read_part(&mut archive, "_rels/.rels", &mut budget)? {
        Some(xml) => main_part_name(&xml)?,
        None => None,
    };
    let main_part = main_part.unwrap_or_else(|| "word/document.xml".to_owned());
    let document = read_part(&mut archive, &main_part, &mut budget)?
        .ok_or_else(|| ExtractError::corrupt(Format::Docx, "no main document part"))?;
    let mut out = TextBuilder::new(limits.max_text_chars);
    read_document(&document, &styles, &mut out)?;
    out.finish()
}

/// An encrypted DOCX is an OLE file holding an `EncryptedPackage` stream.
fn ole_error(bytes: &[u8]) -> ExtractError {
    let name: Vec<u8> = "EncryptedPackage"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    if bytes.windows(name.len()).any(|w| w == name.as_slice()) {
        ExtractError::Encrypted
    } else {
        ExtractError::corrupt(Format::Docx, "an OLE file (a legacy .doc?), not a DOCX")
    }
}

/// What is left of [`Limits::max_decompressed_bytes`].
struct Budget {
    left: usize,
    max: usize,
}

/// A zip entry as UTF-8 text, `None` if absent. Decompresses at most what is left of the budget
/// (plus one byte, to tell "over"), and takes what it read from it.
fn read_part(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    name: &str,
    budget: &mut Budget,
) -> Result<Option<String>, ExtractError> {
    let entry = match archive.by_name(name) {
        Ok(entry) => entry,
        Err(ZipError::FileNotFound) => return Ok(None),
        Err(e) => {
            return Err(ExtractError::corrupt_by(
                Format::Docx,
                "unreadable zip entry",
                e,
            ));
        }
    };
    let cap = u64::try_from(budget.left)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut data = Vec::new();
    entry
        .take(cap)
        .read_to_end(&mut data)
        .map_err(|e| ExtractError::corrupt_by(Format::Docx, "unreadable zip entry", e))?;
    budget.left = budget
        .left
        .checked_sub(data.len())
        .ok_or(ExtractError::TooLarge {
            limit: Limit::DecompressedBytes,
            max: budget.max,
        })?;
    let text = String::from_utf8(data)
        .map_err(|e| ExtractError::corrupt_by(Format::Docx, "an XML part is not UTF-8", e))?;
    Ok(Some(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    }))
}

fn xml_error(e: impl Into<crate::Cause>) -> ExtractError {
    ExtractError::corrupt_by(Format::Docx, "malformed XML", e)
}

fn reader(xml: &str) -> NsReader<&[u8]> {
    let mut reader = NsReader::from_str(xml);
    reader.config_mut().expand_empty_elements = true;
    reader
}

/// The value of an element's attribute by local name (`val` for `w:val`).
fn attribute(element: &BytesStart<'_>, name: &str) -> Result<Option<String>, ExtractError> {
    for attribute in element.attributes() {
        let attribute = attribute.map_err(xml_error)?;
        if attribute.key.local_name().as_ref() == name {
            let value = attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(xml_error)?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

fn val(element: &BytesStart<'_>) -> Result<Option<String>, ExtractError> {
    attribute(element, "val")
}

/// The heading level of a style name or id: `heading 2`, `Heading2` → 2; `Title` → 1.
fn heading_level(name: &str) -> Option<u8> {
    let name = name.trim().to_ascii_lowercase();
    if name == "title" {
        return Some(1);
    }
    let digits = name.strip_prefix("heading")?.trim_start();
    digits.parse().ok().filter(|level| (1..=9).contains(level))
}

/// An outline level (`w:outlineLvl`, 0-based; 9 is body text) as a heading level.
fn outline_level(value: &str) -> Option<u8> {
    value
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|&l| l < 9)
        .map(|l| l + 1)
}

fn is_word(ns: &str) -> bool {
    ns == WORD_NS || ns == WORD_STRICT_NS
}

/// The main document part's name in the zip, from the package relationships.
fn main_part_name(xml: &str) -> Result<Option<String>, ExtractError> {
    let mut reader = reader(xml);
    loop {
        let (ns, event) = reader.read_resolved_event().map_err(xml_error)?;
        match event {
            Event::Start(e)
                if matches!(ns, ResolveResult::Bound(ns) if ns.as_ref() == RELATIONSHIPS_NS)
                    && e.local_name().as_ref() == "Relationship" =>
            {
                let kind = attribute(&e, "Type")?.unwrap_or_default();
                if OFFICE_DOCUMENT_RELS.contains(&kind.as_str())
                    && let Some(target) = attribute(&e, "Target")?
                {
                    return Ok(Some(target.trim_start_matches('/').to_owned()));
                }
            }
            Event::Eof => return Ok(None),
            Event::Start(_)
            | Event::End(_)
            | Event::Empty(_)
            | Event::Text(_)
            | Event::CData(_)
            | Event::Comment(_)
            | Event::Decl(_)
            | Event::PI(_)
            | Event::DocType(_)
            | Event::GeneralRef(_) => {}
        }
    }
}

/// Style id → heading level, from `word/styles.xml`.
fn heading_styles(xml: &str) -> Result<HashMap<String, u8>, ExtractError> {
    let mut reader = reader(xml);
    let mut styles = HashMap::new();
    let mut current: Option<String> = None;
    loop {
        let (ns, event) = reader.read_resolved_event().map_err(xml_error)?;
        let in_word = matches!(ns, ResolveResult::Bound(ns) if is_word(ns.as_ref()));
        match event {
            Event::Start(e) if in_word => {
                let name = e.local_name();
                match (name.as_ref(), current.as_ref()) {
                    ("style", _) => current = attribute(&e, "styleId")?,
                    ("name", Some(id)) => {
                        if let Some(level) = val(&e)?.as_deref().and_then(heading_level) {
                            styles.insert(id.clone(), level);
                        }
                    }
                    ("outlineLvl", Some(id)) => {
                        if let Some(level) = val(&e)?.as_deref().and_then(outline_level) {
                            styles.entry(id.clone()).or_insert(level);
                        }
                    }
                    _ => {}
                }
            }
            Event::End(e) if in_word && e.local_name().as_ref() == "style" => current = None,
            Event::Eof => return Ok(styles),
            Event::Start(_)
            | Event::End(_)
            | Event::Empty(_)
            | Event::Text(_)
            | Event::CData(_)
            | Event::Comment(_)
            | Event::Decl(_)
            | Event::PI(_)
            | Event::DocType(_)
            | Event::GeneralRef(_) => {}
        }
    }
}

/// A paragraph being read.
#[derive(Debug, Default)]
struct Paragraph {
    text: String,
    level: Option<u8>,
}

struct DocumentReader<'a> {
    styles: &'a HashMap<String, u8>,
    /// Open paragraphs (text boxes nest paragraphs in paragraphs).
    paragraphs: Vec<Paragraph>,
    /// Inside `w:t`.
    in_text: bool,
    /// Depth inside elements whose content is skipped.
    skip: usize,
}

fn read_document(
    xml: &str,
    styles: &HashMap<String, u8>,
    out: &mut TextBuilder,
) -> Result<(), ExtractError> {
    let mut reader = reader(xml);
    let mut doc = DocumentReader {
        styles,
        paragraphs: Vec::new(),
        in_text: false,
        skip: 0,
    };
    loop {
        let (ns, event) = reader.read_resolved_event().map_err(xml_error)?;
        let ns = match ns {
            ResolveResult::Bound(ns) => Some(ns.as_ref().to_owned()),
            ResolveResult::Unbound | ResolveResult::Unknown(_) => None,
        };
        match event {
            Event::Start(e) => doc.start(ns.as_deref(), &e)?,
            Event::End(e) => doc.end(ns.as_deref(), e.local_name().as_ref(), out)?,
            Event::Text(t) if doc.in_text => doc.push_text(&t.xml10_content()),
            Event::CData(t) if doc.in_text => doc.push_text(&t.xml10_content()),
            Event::GeneralRef(r) if doc.in_text => {
                let c = match r.resolve_char_ref().map_err(xml_error)? {
                    Some(c) => Some(c),
                    None => predefined_entity(&r),
                };
                if let Some(c) = c {
                    doc.push_text(c.encode_utf8(&mut [0; 4]));
                }
            }
            Event::Eof => return Ok(()),
            // Empty elements come as Start and End (`expand_empty_elements`).
            Event::Empty(_)
            | Event::Text(_)
            | Event::CData(_)
            | Event::GeneralRef(_)
            | Event::Comment(_)
            | Event::Decl(_)
            | Event::PI(_)
            | Event::DocType(_) => {}
        }
    }
}

fn predefined_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => None,
    }
}

impl DocumentReader<'_> {
    fn start(&mut self, ns: Option<&str>, e: &BytesStart<'_>) -> Result<(), ExtractError> {
        let name = e.local_name();
        let name = name.as_ref();
        if self.skip > 0 || skipped(ns, name) {
            self.skip += 1;
            return Ok(());
        }
        if !ns.is_some_and(is_word) {
            return Ok(());
        }
        match name {
            "p" => self.paragraphs.push(Paragraph::default()),
            "t" => self.in_text = true,
            "tab" => self.push_text(" "),
            "br" | "cr" => self.push_text("\n"),
            "noBreakHyphen" => self.push_text("-"),
            "pStyle" => {
                let level = val(e)?
                    .and_then(|id| self.styles.get(&id).copied().or_else(|| heading_level(&id)));
                self.set_level(level);
            }
            "outlineLvl" => {
                let level = val(e)?.as_deref().and_then(outline_level);
                self.set_level(level);
            }
            _ => {}
        }
        Ok(())
    }

    fn end(
        &mut self,
        ns: Option<&str>,
        name: &str,
        out: &mut TextBuilder,
    ) -> Result<(), ExtractError> {
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(());
        }
        if !ns.is_some_and(is_word) {
            return Ok(());
        }
        match name {
            "t" => self.in_text = false,
            "p" => {
                if let Some(paragraph) = self.paragraphs.pop() {
                    write_paragraph(paragraph, out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn push_text(&mut self, text: &str) {
        if self.skip == 0
            && let Some(paragraph) = self.paragraphs.last_mut()
        {
            paragraph.text.push_str(text);
        }
    }

    fn set_level(&mut self, level: Option<u8>) {
        if let (Some(level), Some(paragraph)) = (level, self.paragraphs.last_mut()) {
            paragraph.level.get_or_insert(level);
        }
    }
}

/// Elements whose content is not the document's current text: the fallback copy of alternate
/// content (text boxes are written twice), tracked formatting changes (they hold the old style),
/// deleted text, field instructions.
fn skipped(ns: Option<&str>, name: &str) -> bool {
    match ns {
        Some(ns) if is_word(ns) => matches!(
            name,
            "pPrChange" | "rPrChange" | "del" | "delText" | "instrText"
        ),
        Some(MARKUP_COMPATIBILITY_NS) => name == "Fallback",
        _ => false,
    }
}

fn write_paragraph(paragraph: Paragraph, out: &mut TextBuilder) -> Result<(), ExtractError> {
    match paragraph.level {
        Some(level) => {
            out.begin_heading(level);
            out.push_lines(&paragraph.text)?;
            out.end_heading();
        }
        None => {
            out.push_lines(&paragraph.text)?;
            out.paragraph_break();
        }
    }
    Ok(())
}
