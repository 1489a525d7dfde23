//! PDF through lopdf (structure, encryption) and pdf-extract (text with fonts and encodings, laid
//! out by glyph position). Each page's text is a run of paragraphs: pdf-extract ends a line where
//! the baseline moves and leaves a blank line where it jumps by more than 1.5 font sizes. Pages
//! are separated by a paragraph break and located by [`Extracted::location`].
//!
//! lopdf and pdf-extract decompress streams without a limit, so before extracting, the Flate
//! streams' decompressed sizes are counted through a cap and their total held to
//! [`Limits::max_decompressed_bytes`]. (Object streams are decompressed by lopdf while loading,
//! before that check; a second Flate stage of a stream is not counted.)
//!
//! A file whose user password is not empty is [`ExtractError::Encrypted`]; one encrypted with the
//! empty user password (restrictions only) is read. A page that fails or panics in pdf-extract is
//! left empty; the file is [`ExtractError::Corrupt`] only when no page could be read.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};

use flate2::read::ZlibDecoder;
use lopdf::{Document, Object, Stream};
use pdf_extract::PlainTextOutput;

use crate::builder::TextBuilder;
use crate::error::{Limit, Panicked};
use crate::{Cause, ExtractError, Extracted, Format, Limits};

pub(crate) fn extract(bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    let doc = Document::load_mem(bytes).map_err(load_error)?;
    // lopdf decrypts on load when the user password is empty, and removes /Encrypt then.
    if doc.is_encrypted() {
        return Err(ExtractError::Encrypted);
    }
    check_decompressed_size(&doc, limits.max_decompressed_bytes)?;
    let pages = doc.get_pages();
    if pages.is_empty() {
        return Err(ExtractError::corrupt(Format::Pdf, "no pages"));
    }
    let mut out = TextBuilder::new(limits.max_text_chars);
    let mut first_failure = None;
    let mut failures = 0;
    for &number in pages.keys() {
        out.begin_page();
        match page_text(&doc, number) {
            Ok(text) => out.push_lines(&text)?,
            Err(cause) => {
                failures += 1;
                first_failure.get_or_insert(cause);
            }
        }
    }
    if failures == pages.len()
        && let Some(cause) = first_failure
    {
        return Err(ExtractError::corrupt_by(
            Format::Pdf,
            "no page could be read",
            cause,
        ));
    }
    out.finish()
}

/// Fails when the document's Flate streams decompress to more than `max` bytes in total.
fn check_decompressed_size(doc: &Document, max: usize) -> Result<(), ExtractError> {
    let mut left = max;
    for object in doc.objects.values() {
        if let Object::Stream(stream) = object
            && first_filter_is_flate(stream)
        {
            let cap = u64::try_from(left).unwrap_or(u64::MAX).saturating_add(1);
            let mut decoder = ZlibDecoder::new(stream.content.as_slice()).take(cap);
            // A stream that fails to decompress counts what it gave until then; lopdf and
            // pdf-extract deal with it later.
            let size = std::io::copy(&mut decoder, &mut std::io::sink()).unwrap_or(0);
            left = usize::try_from(size)
                .ok()
                .and_then(|size| left.checked_sub(size))
                .ok_or(ExtractError::TooLarge {
                    limit: Limit::DecompressedBytes,
                    max,
                })?;
        }
    }
    Ok(())
}

fn first_filter_is_flate(stream: &Stream) -> bool {
    let first = match stream.dict.get(b"Filter") {
        Ok(Object::Array(filters)) => filters.first(),
        Ok(filter) => Some(filter),
        Err(_) => None,
    };
    first
        .and_then(|filter| filter.as_name().ok())
        .is_some_and(|name| name == b"FlateDecode" || name == b"Fl")
}

fn load_error(error: lopdf::Error) -> ExtractError {
    if matches!(
        error,
        lopdf::Error::Decryption(_) | lopdf::Error::InvalidPassword
    ) {
        ExtractError::Encrypted
    } else {
        ExtractError::corrupt_by(Format::Pdf, "unreadable PDF structure", error)
    }
}

/// One page's text as pdf-extract lays it out; a panic is an error.
fn page_text(doc: &Document, number: u32) -> Result<String, Cause> {
    catch_unwind(AssertUnwindSafe(|| {
        let mut text = String::new();
        pdf_extract::output_doc_page(doc, &mut PlainTextOutput::new(&mut text), number)?;
        Ok(text)
    }))
    .unwrap_or_else(|payload| Err(Panicked::from_payload(payload.as_ref()).into()))
}
