//! End-to-end: files built here with lopdf and zip (and strings), and real-world PDF, DOCX and
//! HTML files from TeX, LaTeX, Word, LibreOffice, pandoc, Docutils and makeinfo
//! (tests/data/README.md), through
//! `extract`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use heimdex_extract::testing::{RELS, W, docx, para, pdf, save, zip_of};
use heimdex_extract::{ExtractError, Extracted, Format, Limit, Limits, Location, extract};
use lopdf::{
    Document, EncryptionState, EncryptionVersion, Object, Permissions, Stream, dictionary,
};

fn ok(format: Format, bytes: &[u8]) -> Extracted {
    match extract(format, bytes, &Limits::default()) {
        Ok(extracted) => extracted,
        Err(e) => panic!("{format}: {e} ({e:?})"),
    }
}

fn err(format: Format, bytes: &[u8]) -> ExtractError {
    match extract(format, bytes, &Limits::default()) {
        Ok(extracted) => panic!("{format}: expected an error, got {:?}", extracted.text()),
        Err(e) => e,
    }
}

/// The char range of `needle` in the text.
fn range_of(e: &Extracted, needle: &str) -> (usize, usize) {
    let byte = e
        .text()
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {:?}", e.text()));
    let start = e.text()[..byte].chars().count();
    (start, start + needle.chars().count())
}

fn section_of(e: &Extracted, needle: &str) -> Option<String> {
    let (start, end) = range_of(e, needle);
    e.location(start, end).section
}

// ---------------------------------------------------------------------------------------------
// PDF

/// A PDF whose pages hold paragraphs of lines in Helvetica 12 pt: lines 14 pt apart, paragraphs
/// 36 pt apart.
fn three_pages() -> Vec<u8> {
    save(pdf(&[
        &[
            &["Alpha opens the report.", "It has two lines."],
            &["Second paragraph on page one."],
        ],
        &[&["Bravo is on page two."]],
        &[&["Charlie closes on page three."]],
    ]))
}

#[test]
fn pdf_pages_land_where_they_are() {
    let e = ok(Format::Pdf, &three_pages());
    assert_eq!(e.page_starts().len(), 3, "{:?}", e.text());
    for (needle, page) in [
        ("Alpha opens", 1),
        ("Second paragraph", 1),
        ("Bravo", 2),
        ("Charlie", 3),
    ] {
        let (start, end) = range_of(&e, needle);
        let location = e.location(start, end);
        assert_eq!(
            location,
            Location {
                page: Some(page),
                page_end: None,
                section: None
            },
            "{needle}"
        );
    }
    // Paragraphs and pages are separated by blank lines, lines by a newline.
    assert!(
        e.text()
            .starts_with("Alpha opens the report.\nIt has two lines.\n\nSecond paragraph"),
        "{:?}",
        e.text()
    );
    assert!(e.text().contains("page one.\n\nBravo"), "{:?}", e.text());
    assert!(e.text().ends_with("page three."), "{:?}", e.text());
}

#[test]
fn pdf_range_across_pages_has_page_end() {
    let e = ok(Format::Pdf, &three_pages());
    let (start, _) = range_of(&e, "Second paragraph");
    let (_, end) = range_of(&e, "Charlie");
    let location = e.location(start, end);
    assert_eq!((location.page, location.page_end), (Some(1), Some(3)));
    let (_, end) = range_of(&e, "Bravo");
    assert_eq!(e.location(start, end).page_end, Some(2));
}

#[test]
fn pdf_without_text_is_no_text() {
    let bytes = save(pdf(&[&[], &[&["   "]]]));
    assert!(matches!(err(Format::Pdf, &bytes), ExtractError::NoText));
}

#[test]
fn pdf_with_a_user_password_is_encrypted() {
    let mut doc = pdf(&[&[&["Secret text."]]]);
    doc.trailer.set(
        "ID",
        vec![
            Object::string_literal(b"0123456789abcdef".to_vec()),
            Object::string_literal(b"0123456789abcdef".to_vec()),
        ],
    );
    let state = EncryptionState::try_from(EncryptionVersion::V2 {
        document: &doc,
        owner_password: "owner",
        user_password: "user",
        key_length: 128,
        permissions: Permissions::all(),
    })
    .unwrap();
    doc.encrypt(&state).unwrap();
    let e = err(Format::Pdf, &save(doc));
    assert!(matches!(e, ExtractError::Encrypted), "{e:?}");
    assert_eq!(e.code(), "encrypted");
}

#[test]
fn pdf_compression_bomb_stops_at_the_limit() {
    let mut doc = pdf(&[&[&["Tiny text."]]]);
    // 64 MiB of whitespace, deflated to about 64 KiB.
    doc.add_object(Stream::new(dictionary! {}, vec![b' '; 64 << 20]));
    doc.compress();
    let bytes = save(doc);
    assert!(bytes.len() < 1 << 20, "{}", bytes.len());
    let limits = Limits {
        max_decompressed_bytes: 4 << 20,
        ..Limits::default()
    };
    let e = extract(Format::Pdf, &bytes, &limits).unwrap_err();
    assert!(
        matches!(
            e,
            ExtractError::TooLarge {
                limit: Limit::DecompressedBytes,
                max
            } if max == 4 << 20
        ),
        "{e:?}"
    );
    assert_eq!(ok(Format::Pdf, &bytes).text(), "Tiny text.");
}

/// Gives page `number` a font F1 whose encoding pdf-extract does not know (it panics on it).
fn break_font_of_page(doc: &mut Document, number: u32) {
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
        "Encoding" => "NoSuchEncoding",
    });
    let page_id = doc.get_pages()[&number];
    let page = doc.get_object_mut(page_id).unwrap().as_dict_mut().unwrap();
    page.set(
        "Resources",
        dictionary! { "Font" => dictionary! { "F1" => font_id } },
    );
}

#[test]
fn pdf_parser_panic_is_caught() {
    // Every page panics: the file is corrupt, with the panic as the cause.
    let mut doc = pdf(&[&[&["Unreadable."]]]);
    break_font_of_page(&mut doc, 1);
    let e = err(Format::Pdf, &save(doc));
    assert!(matches!(e, ExtractError::Corrupt { .. }), "{e:?}");
    let cause = std::error::Error::source(&e).unwrap().to_string();
    assert!(cause.contains("panicked"), "{cause}");
    // One page panics: it is left empty, the others are read and keep their numbers.
    let mut doc = pdf(&[&[&["Page one."]], &[&["Page two."]], &[&["Page three."]]]);
    break_font_of_page(&mut doc, 2);
    let e = ok(Format::Pdf, &save(doc));
    assert_eq!(e.text(), "Page one.\n\nPage three.");
    assert_eq!(page_of(&e, "Page three"), Some(3));
}

#[test]
fn random_bytes_are_not_a_pdf() {
    for bytes in junk() {
        let e = err(Format::Pdf, &bytes);
        assert!(matches!(e, ExtractError::Corrupt { .. }), "{e:?}");
    }
}

#[test]
fn truncated_pdf_is_an_error_not_a_panic() {
    let bytes = three_pages();
    for cut in [10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 40] {
        // Either an error or (lopdf recovers some) text; never a panic.
        let _ = extract(Format::Pdf, &bytes[..cut], &Limits::default());
    }
    let mut flipped = bytes.clone();
    for i in (200..flipped.len()).step_by(97) {
        flipped[i] ^= 0x5a;
    }
    let _ = extract(Format::Pdf, &flipped, &Limits::default());
}

/// Deterministic pseudo-random byte strings, some starting like a PDF or a zip.
fn junk() -> Vec<Vec<u8>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state.to_le_bytes()[0]
    };
    let mut out = vec![Vec::new()];
    for (prefix, len) in [
        (&b""[..], 1000),
        (b"%PDF-1.7\n", 5000),
        (b"PK\x03\x04", 3000),
        (b"", 65536),
    ] {
        let mut bytes = prefix.to_vec();
        bytes.extend((0..len).map(|_| next()));
        out.push(bytes);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Real-world PDFs

/// The page of the first occurrence of `needle`.
fn page_of(e: &Extracted, needle: &str) -> Option<u32> {
    let (start, end) = range_of(e, needle);
    e.location(start, end).page
}

/// A Texinfo manual (tests/data/README.md): title page, copyright page, contents (page i), then
/// page N on PDF page N + 3, as its running heads show.
#[test]
fn real_pdf_libtasn1_manual() {
    let bytes = include_bytes!("data/libtasn1.pdf");
    let e = ok(Format::Pdf, bytes);
    let pages = Document::load_mem(bytes).unwrap().get_pages().len();
    assert_eq!(e.page_starts().len(), pages);
    assert_eq!(pages, 36);
    assert!(
        e.text()
            .starts_with("Libtasn1\nAbstract Syntax Notation One (ASN.1) library")
    );
    assert_eq!(page_of(&e, "Nikos Mavrogiannopoulos"), Some(1));
    assert_eq!(page_of(&e, "Permission is granted to copy"), Some(2));
    assert_eq!(page_of(&e, "Table of Contents"), Some(3));
    assert_eq!(
        page_of(&e, "This document describes the Libtasn1 library"),
        Some(4)
    );
    let chapter_4 = "4 Function reference\n\n4.1 ASN.1 schema functions";
    assert_eq!(page_of(&e, chapter_4), Some(11));
    // Each page's text starts with its running head, whose page number is the PDF page less 3.
    let (start, _) = range_of(&e, chapter_4);
    let page_start = e.page_starts()[10];
    assert!(page_start < start);
    assert!(e.text()[char_to_byte(&e, page_start)..].starts_with("8\n"));
    // A range from the contents to the introduction spans pages 3 to 4.
    let (start, _) = range_of(&e, "Table of Contents");
    let (_, end) = range_of(&e, "This document describes");
    let location = e.location(start, end);
    assert_eq!((location.page, location.page_end), (Some(3), Some(4)));
    // TeX's "fi" ligature comes out as two letters.
    assert!(!e.text().contains('\u{fb01}'));
    assert!(e.text().contains("definitions"), "ligature-free words read");
}

fn char_to_byte(e: &Extracted, chars: usize) -> usize {
    e.text()
        .char_indices()
        .nth(chars)
        .map_or(e.text().len(), |(byte, _)| byte)
}

/// A DocBook spec, where this machine has it (CI machines might not).
#[test]
fn real_pdf_shared_mime_info_spec() {
    let path = "/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf";
    let Ok(bytes) = std::fs::read(path) else {
        eprintln!("skipped: {path} is absent");
        return;
    };
    let e = ok(Format::Pdf, &bytes);
    assert_eq!(page_of(&e, "Shared MIME-info Database"), Some(1));
    assert!(page_of(&e, "The source XML files") > Some(1));
    assert!(e.text().contains("update-mime-database"));
}

// ---------------------------------------------------------------------------------------------
// DOCX

#[test]
fn docx_paragraphs_and_sections() {
    let body = [
        para(None, "Preamble before any heading."),
        para(Some("berschrift1"), "Introduction"),
        para(None, "Intro text &amp; more."),
        // One paragraph in several runs, with a tab and a line break.
        r#"<w:p><w:r><w:t>Split </w:t></w:r><w:r><w:rPr><w:b/></w:rPr><w:t>across</w:t><w:tab/><w:t>runs</w:t><w:br/><w:t>next line</w:t></w:r></w:p>"#.to_owned(),
        para(Some("berschrift2"), "Details"),
        para(Some("Quote"), "A quoted paragraph is not a heading."),
        // Deleted text and the fallback copy of alternate content are not text.
        r#"<w:p><w:del><w:r><w:delText>gone</w:delText></w:r></w:del><w:r><w:t>Kept.</w:t></w:r></w:p>"#.to_owned(),
        r#"<w:p><mc:AlternateContent><mc:Choice><w:r><w:t>Chosen.</w:t></w:r></mc:Choice><mc:Fallback><w:r><w:t>Fallback.</w:t></w:r></mc:Fallback></mc:AlternateContent></w:p>"#.to_owned(),
        // A style id like English Word's, without a styles.xml entry; and a direct outline level.
        para(Some("Heading1"), "Second chapter"),
        para(None, "Chapter text."),
        r#"<w:p><w:pPr><w:outlineLvl w:val="2"/></w:pPr><w:r><w:t>Outlined</w:t></w:r></w:p>"#.to_owned(),
        para(None, "Under the outline."),
        r#"<w:tbl><w:tr><w:tc><w:p><w:r><w:t>Cell one</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>Cell two</w:t></w:r></w:p></w:tc></w:tr></w:tbl>"#.to_owned(),
    ]
    .concat();
    let e = ok(Format::Docx, &docx(&body));
    assert_eq!(
        e.text(),
        "Preamble before any heading.\n\nIntroduction\n\nIntro text & more.\n\n\
         Split across runs\nnext line\n\nDetails\n\nA quoted paragraph is not a heading.\n\n\
         Kept.\n\nChosen.\n\nSecond chapter\n\nChapter text.\n\nOutlined\n\n\
         Under the outline.\n\nCell one\n\nCell two"
    );
    let titles: Vec<_> = e
        .sections()
        .iter()
        .map(|s| (s.level, s.title.as_str()))
        .collect();
    assert_eq!(
        titles,
        [
            (1, "Introduction"),
            (2, "Details"),
            (1, "Second chapter"),
            (3, "Outlined")
        ]
    );
    assert_eq!(section_of(&e, "Preamble"), None);
    assert_eq!(
        section_of(&e, "Introduction").as_deref(),
        Some("Introduction")
    );
    assert_eq!(
        section_of(&e, "Intro text").as_deref(),
        Some("Introduction")
    );
    assert_eq!(section_of(&e, "next line").as_deref(), Some("Introduction"));
    assert_eq!(section_of(&e, "A quoted").as_deref(), Some("Details"));
    assert_eq!(
        section_of(&e, "Chapter text").as_deref(),
        Some("Second chapter")
    );
    assert_eq!(section_of(&e, "Cell two").as_deref(), Some("Outlined"));
    assert_eq!(e.location(0, 5).page, None);
}

#[test]
fn docx_main_part_is_found_through_relationships() {
    let rels = RELS.replace(
        "Target=\"word/document.xml\"",
        "Target=\"/word/document2.xml\"",
    );
    let document = format!(
        r#"<w:document xmlns:w="{W}"><w:body>{}</w:body></w:document>"#,
        para(Some("Heading2"), "Elsewhere")
    );
    let bytes = zip_of(&[
        ("_rels/.rels", rels.as_bytes()),
        ("word/document2.xml", document.as_bytes()),
    ]);
    let e = ok(Format::Docx, &bytes);
    assert_eq!(e.text(), "Elsewhere");
    assert_eq!(e.sections()[0].level, 2);
}

#[test]
fn docx_without_text_is_no_text() {
    let body = [para(None, "  "), "<w:p/>".to_owned()].concat();
    assert!(matches!(
        err(Format::Docx, &docx(&body)),
        ExtractError::NoText
    ));
}

#[test]
fn random_bytes_are_not_a_docx() {
    for bytes in junk() {
        let e = err(Format::Docx, &bytes);
        assert!(matches!(e, ExtractError::Corrupt { .. }), "{e:?}");
    }
    // A zip that is not a DOCX, and a DOCX whose XML is broken.
    let e = err(Format::Docx, &zip_of(&[("hello.txt", b"hello")]));
    assert!(matches!(e, ExtractError::Corrupt { .. }), "{e:?}");
    let e = err(Format::Docx, &docx("<w:p><w:r><w:t>unclosed</w:r></w:p>"));
    assert!(matches!(e, ExtractError::Corrupt { .. }), "{e:?}");
    // A PDF sent as a DOCX.
    let e = err(Format::Docx, &three_pages());
    assert!(matches!(e, ExtractError::Corrupt { .. }), "{e:?}");
}

#[test]
fn ole_files_are_not_docx() {
    let mut ole = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
    ole.resize(2048, 0);
    let e = err(Format::Docx, &ole);
    assert!(matches!(e, ExtractError::Corrupt { .. }), "{e:?}");
    let name: Vec<u8> = "EncryptedPackage"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    ole.extend(name);
    assert!(matches!(err(Format::Docx, &ole), ExtractError::Encrypted));
}

#[test]
fn zip_bomb_docx_stops_at_the_limit() {
    // 64 MiB of one paragraph's text compresses to about 64 KiB.
    let mut document = format!(r#"<w:document xmlns:w="{W}"><w:body><w:p><w:r><w:t>"#);
    document.push_str(&"a".repeat(64 << 20));
    document.push_str("</w:t></w:r></w:p></w:body></w:document>");
    let bytes = zip_of(&[("word/document.xml", document.as_bytes())]);
    drop(document);
    assert!(bytes.len() < 1 << 20, "{}", bytes.len());
    let limits = Limits {
        max_decompressed_bytes: 4 << 20,
        ..Limits::default()
    };
    let e = extract(Format::Docx, &bytes, &limits).unwrap_err();
    assert!(
        matches!(
            e,
            ExtractError::TooLarge {
                limit: Limit::DecompressedBytes,
                max
            } if max == 4 << 20
        ),
        "{e:?}"
    );
    // Within the decompression limit, the text limit stops it.
    let limits = Limits {
        max_text_chars: 1000,
        ..Limits::default()
    };
    let e = extract(Format::Docx, &bytes, &limits).unwrap_err();
    assert!(
        matches!(
            e,
            ExtractError::TooLarge {
                limit: Limit::TextChars,
                ..
            }
        ),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// HTML

#[test]
fn html_visible_text_and_sections() {
    let html = r#"<!DOCTYPE html>
<html><head><title>Page title</title><style>body { color: red }</style>
<script>var hidden = "script text";</script></head>
<body>
  <nav>Home &middot; About</nav>
  <h1>Main   <em>title</em></h1>
  <p>First    paragraph with <a href="/x">a link</a>
     and a line break<br>here.</p>
  <div><p>Nested paragraph.</p>Loose text in a div.</div>
  <h2 id="s">Sub section</h2>
  <ul><li>one</li><li>two</li></ul>
  <pre>line 1
  line 2</pre>
  <table><tr><th>Name</th><td>Value</td></tr><tr><td>a</td><td>b</td></tr></table>
  <noscript>enable js</noscript><template><p>template</p></template>
  <!-- a comment -->
</body></html>"#;
    let e = ok(Format::Html, html.as_bytes());
    assert_eq!(
        e.text(),
        "Home · About\n\nMain title\n\nFirst paragraph with a link and a line break\nhere.\n\n\
         Nested paragraph.\n\nLoose text in a div.\n\nSub section\n\none\ntwo\n\n\
         line 1\nline 2\n\nName Value\na b"
    );
    assert_eq!(section_of(&e, "Home"), None);
    assert_eq!(section_of(&e, "Main title").as_deref(), Some("Main title"));
    assert_eq!(section_of(&e, "Loose text").as_deref(), Some("Main title"));
    assert_eq!(section_of(&e, "two").as_deref(), Some("Sub section"));
    assert_eq!(section_of(&e, "a b").as_deref(), Some("Sub section"));
    assert_eq!(e.sections()[1].level, 2);
}

#[test]
fn html_deep_nesting_does_not_overflow() {
    let html = format!(
        "{}deep{}",
        "<div><span>".repeat(10_000),
        "</span></div>".repeat(10_000)
    );
    assert_eq!(ok(Format::Html, html.as_bytes()).text(), "deep");
}

#[test]
fn html_only_markup_is_no_text() {
    let html = "<html><head><title>t</title></head><body><script>x()</script> </body></html>";
    assert!(matches!(
        err(Format::Html, html.as_bytes()),
        ExtractError::NoText
    ));
}

// ---------------------------------------------------------------------------------------------
// Markdown

#[test]
fn markdown_text_and_sections() {
    let md = "---\ntitle: front matter\n---\n\nIntro *before* headings.\n\n\
              # Getting started\n\nInstall it\nwith `cargo`.  \nHard break.\n\n\
              - first item\n- second item\n\n\
              Setext heading\n--------------\n\n\
              ```rust\nfn main() {}\n\nlet x = 1;\n```\n\n\
              <div>raw html</div>\n\n\
              | a | b |\n|---|---|\n| 1 | 2 |\n\n\
              ## Next [link](http://x) ##\n\n> quoted\n";
    let e = ok(Format::Markdown, md.as_bytes());
    assert_eq!(
        e.text(),
        "Intro before headings.\n\nGetting started\n\nInstall it with cargo.\nHard break.\n\n\
         first item\nsecond item\n\nSetext heading\n\nfn main() {}\n\nlet x = 1;\n\n\
         a b\n1 2\n\nNext link\n\nquoted"
    );
    assert_eq!(section_of(&e, "Intro"), None);
    assert_eq!(
        section_of(&e, "Install").as_deref(),
        Some("Getting started")
    );
    assert_eq!(
        section_of(&e, "second item").as_deref(),
        Some("Getting started")
    );
    assert_eq!(section_of(&e, "let x").as_deref(), Some("Setext heading"));
    assert_eq!(section_of(&e, "quoted").as_deref(), Some("Next link"));
    let levels: Vec<_> = e.sections().iter().map(|s| s.level).collect();
    assert_eq!(levels, [1, 2, 2]);
}

#[test]
fn markdown_invalid_utf8_is_an_error() {
    let e = err(Format::Markdown, b"# Title\n\n\xff\xfe");
    assert!(matches!(e, ExtractError::NotUtf8 { .. }), "{e:?}");
}

#[test]
fn offsets_are_in_chars() {
    let md = "# Überblick\n\nÄrger mit Umlauten 🦀.\n\n## Zweiter Teil\n\nEnde.";
    let e = ok(Format::Markdown, md.as_bytes());
    assert_eq!(e.char_len(), e.text().chars().count());
    let (start, end) = range_of(&e, "Ende");
    assert_eq!(
        e.text()
            .chars()
            .skip(start)
            .take(end - start)
            .collect::<String>(),
        "Ende"
    );
    assert_eq!(
        e.location(start, end).section.as_deref(),
        Some("Zweiter Teil")
    );
    assert_eq!(
        e.sections()[1].start,
        start - "Zweiter Teil\n\n".chars().count()
    );
}

#[test]
fn errors_have_short_reasons() {
    let e = err(Format::Pdf, b"not a pdf");
    assert_eq!(e.code(), "corrupt");
    assert!(e.to_string().starts_with("not a readable pdf file"), "{e}");
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(
        err(Format::Text, b"").to_string(),
        "the file has no extractable text"
    );
}

// ---------------------------------------------------------------------------------------------
// Real-world DOCX and HTML from the usual producers (tests/data/README.md)

/// Each needle's section.
fn assert_sections(e: &Extracted, expected: &[(&str, &str)]) {
    for (needle, section) in expected {
        assert_eq!(
            section_of(e, needle).as_deref(),
            Some(*section),
            "{needle:?}"
        );
    }
}

/// `sources/handbook.md`'s paragraphs and their sections, in whatever format pandoc or
/// LibreOffice made of it.
const HANDBOOK: &[(&str, &str)] = &[
    ("Releases ship on Tuesdays", "Deploying"),
    ("Revert the release tag", "Rolling back"),
    ("Page the owner at once", "On call"),
    ("Write down every step", "On call"),
];

/// Word 2010 for Mac (python-docx's test file): a `Heading1` paragraph, then a normal one.
#[test]
fn real_docx_word_heading_and_paragraph() {
    let e = ok(
        Format::Docx,
        include_bytes!("data/word-known-paragraphs.docx"),
    );
    assert!(e.text().contains("Heading Paragraph"), "{:?}", e.text());
    assert_eq!(
        section_of(&e, "Normal paragraph").as_deref(),
        Some("Heading Paragraph")
    );
}

/// Word 2010 for Mac: paragraphs in `Heading1`, `BodyText`, and a style id the file does not
/// define.
#[test]
fn real_docx_word_styles() {
    let e = ok(Format::Docx, include_bytes!("data/word-known-styles.docx"));
    for text in [
        "no specified style",
        "missing style",
        "Heading 1",
        "Body Text",
    ] {
        assert!(e.text().contains(text), "{text:?} in {:?}", e.text());
    }
    assert_eq!(section_of(&e, "Body Text").as_deref(), Some("Heading 1"));
    assert_eq!(section_of(&e, "missing style"), None);
}

/// pandoc 2.17 from Markdown: title, author, headings on two levels, a table and a list.
#[test]
fn real_docx_pandoc_handbook() {
    let e = ok(Format::Docx, include_bytes!("data/pandoc-handbook.docx"));
    assert_sections(&e, HANDBOOK);
}

/// pandoc 2.17 from the same Markdown, as a standalone HTML page.
#[test]
fn real_html_pandoc_handbook() {
    let e = ok(Format::Html, include_bytes!("data/pandoc-handbook.html"));
    assert_sections(&e, HANDBOOK);
    assert!(!e.text().contains("font-family"), "no style sheet text");
}

/// Docutils 0.19 (`rst2html5`) from reStructuredText: the document title is an `h1`, sections
/// are `h2`/`h3` inside `<main>`, and a style sheet is inlined in `<head>`.
#[test]
fn real_html_docutils_guide() {
    let e = ok(Format::Html, include_bytes!("data/docutils-guide.html"));
    assert_sections(
        &e,
        &[
            ("split into chunks", "Indexing"),
            ("narrow a search", "Filters"),
            ("usually names a field", "Troubleshooting"),
        ],
    );
    assert!(!e.text().contains("margin"), "no style sheet text");
}

/// makeinfo (Texinfo) HTML from Debian's libffi8 manual: navigation header, a licence comment,
/// code examples.
#[test]
fn real_html_makeinfo_libffi() {
    let e = ok(
        Format::Html,
        include_bytes!("data/makeinfo-libffi-the-basics.html"),
    );
    assert!(e.text().contains("ffi_prep_cif"), "{:?}", e.text());
    assert!(
        !e.text().contains("Permission is hereby granted"),
        "comments are not text"
    );
    let section = section_of(&e, "ffi_prep_cif").unwrap_or_default();
    assert!(section.contains("The Basics"), "{section:?}");
}

/// LibreOffice 7.4 (Writer) saving pandoc's DOCX again as "Word 2007-365": its own XML for the
/// same headings and paragraphs.
#[test]
fn real_docx_libreoffice_handbook() {
    let e = ok(
        Format::Docx,
        include_bytes!("data/libreoffice-handbook.docx"),
    );
    assert_sections(&e, HANDBOOK);
}

/// pdfTeX 1.40 from LaTeX (`article`, Computer Modern Type 1 fonts): a title block and
/// numbered sections over two pages.
#[test]
fn real_pdf_latex_minutes() {
    let bytes = include_bytes!("data/latex-minutes.pdf");
    let e = ok(Format::Pdf, bytes);
    assert_eq!(e.page_starts().len(), 2);
    assert_eq!(page_of(&e, "Quarterly Planning Minutes"), Some(1));
    assert_eq!(page_of(&e, "storage budget"), Some(1));
    assert_eq!(page_of(&e, "legacy ingestion service"), Some(2));
    assert_eq!(page_of(&e, "rehearsed on a staging copy"), Some(2));
}
