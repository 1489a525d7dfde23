//! Markdown (CommonMark with tables, strikethrough, task lists and front matter) through
//! pulldown-cmark: paragraphs, list items on their own lines, code blocks with their lines,
//! headings as sections. Raw HTML and YAML/TOML front matter are dropped.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, TagEnd};

use crate::builder::TextBuilder;
use crate::{ExtractError, Extracted, Limits};

pub(crate) fn extract(text: &str, limits: &Limits) -> Result<Extracted, ExtractError> {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS
        | Options::ENABLE_PLUSES_DELIMITED_METADATA_BLOCKS;
    let mut walker = Walker {
        out: TextBuilder::new(limits.max_text_chars),
        in_code: false,
        in_metadata: false,
    };
    for event in Parser::new_ext(text, options) {
        walker.event(event)?;
    }
    walker.out.finish()
}

struct Walker {
    out: TextBuilder,
    in_code: bool,
    in_metadata: bool,
}

impl Walker {
    fn event(&mut self, event: Event<'_>) -> Result<(), ExtractError> {
        match event {
            Event::Start(tag) => self.tag(tag.to_end(), true),
            Event::End(tag) => self.tag(tag, false),
            Event::Text(text) if self.in_code => self.out.push_lines(&text)?,
            Event::Text(text)
            | Event::Code(text)
            | Event::InlineMath(text)
            | Event::DisplayMath(text) => {
                if !self.in_metadata {
                    self.out.push_str(&text)?;
                }
            }
            Event::SoftBreak => self.out.space(),
            Event::HardBreak => self.out.line_break(),
            Event::Rule => self.out.paragraph_break(),
            Event::Html(_)
            | Event::InlineHtml(_)
            | Event::FootnoteReference(_)
            | Event::TaskListMarker(_) => {}
        }
        Ok(())
    }

    /// The start (`open`) or end of an element.
    fn tag(&mut self, tag: TagEnd, open: bool) {
        match tag {
            TagEnd::Heading(level) if open => self.out.begin_heading(heading_level(level)),
            TagEnd::Heading(_) => self.out.end_heading(),
            TagEnd::CodeBlock => {
                self.in_code = open;
                self.out.paragraph_break();
            }
            TagEnd::MetadataBlock(_) => self.in_metadata = open,
            TagEnd::Paragraph
            | TagEnd::BlockQuote(_)
            | TagEnd::HtmlBlock
            | TagEnd::List(_)
            | TagEnd::FootnoteDefinition
            | TagEnd::DefinitionList
            | TagEnd::Table => self.out.paragraph_break(),
            TagEnd::Item
            | TagEnd::DefinitionListTitle
            | TagEnd::DefinitionListDefinition
            | TagEnd::TableHead
            | TagEnd::TableRow => self.out.line_break(),
            TagEnd::TableCell => self.out.space(),
            TagEnd::Emphasis
            | TagEnd::Strong
            | TagEnd::Strikethrough
            | TagEnd::Superscript
            | TagEnd::Subscript
            | TagEnd::Link
            | TagEnd::Image => {}
        }
    }
}

fn heading_level(level: HeadingLevel) -> u8 {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}
