//! HTML through html5ever (scraper): the visible text of the document. Block elements end
//! paragraphs, `<br>`, list items and table rows end lines, `<pre>` keeps its lines, `<h1>`–`<h6>`
//! are sections. `<head>` (so `<title>`), scripts, styles and embedded content are dropped.

use scraper::{Html, Node};

use crate::builder::TextBuilder;
use crate::{ExtractError, Extracted, Limits};

pub(crate) fn extract(text: &str, limits: &Limits) -> Result<Extracted, ExtractError> {
    let html = Html::parse_document(text);
    let mut walker = Walker {
        out: TextBuilder::new(limits.max_text_chars),
        pre_depth: 0,
    };
    // Depth-first without recursion, so that deeply nested markup cannot overflow the stack.
    let root = html.tree.root();
    let mut node = root;
    'walk: loop {
        if walker.enter(node.value())?
            && let Some(child) = node.first_child()
        {
            node = child;
            continue;
        }
        loop {
            walker.leave(node.value());
            if node == root {
                break 'walk;
            }
            if let Some(next) = node.next_sibling() {
                node = next;
                break;
            }
            match node.parent() {
                Some(parent) => node = parent,
                None => break 'walk,
            }
        }
    }
    walker.out.finish()
}

/// How an element shapes the text around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Not rendered as text: skipped with its content.
    Hidden,
    Heading(u8),
    Preformatted,
    /// Ends a paragraph before and after.
    Block,
    /// Ends a line before and after.
    Line,
    /// `<br>`.
    Break,
    /// A table cell: spaces around.
    Cell,
    Inline,
}

fn role(name: &str) -> Role {
    match name {
        "head" | "script" | "style" | "noscript" | "template" | "svg" | "math" | "iframe"
        | "object" | "embed" | "canvas" | "audio" | "video" | "select" | "button" => Role::Hidden,
        "h1" => Role::Heading(1),
        "h2" => Role::Heading(2),
        "h3" => Role::Heading(3),
        "h4" => Role::Heading(4),
        "h5" => Role::Heading(5),
        "h6" => Role::Heading(6),
        "pre" | "listing" | "xmp" | "textarea" => Role::Preformatted,
        "address" | "article" | "aside" | "blockquote" | "body" | "caption" | "center"
        | "details" | "dialog" | "div" | "dl" | "fieldset" | "figcaption" | "figure" | "footer"
        | "form" | "header" | "hgroup" | "hr" | "html" | "legend" | "main" | "menu" | "nav"
        | "ol" | "p" | "section" | "summary" | "table" | "tbody" | "tfoot" | "thead" | "ul" => {
            Role::Block
        }
        "li" | "dt" | "dd" | "tr" | "option" => Role::Line,
        "br" => Role::Break,
        "td" | "th" => Role::Cell,
        _ => Role::Inline,
    }
}

struct Walker {
    out: TextBuilder,
    pre_depth: usize,
}

impl Walker {
    /// Handles the start of a node; `false` to skip its children.
    fn enter(&mut self, node: &Node) -> Result<bool, ExtractError> {
        match node {
            Node::Document | Node::Fragment => Ok(true),
            Node::Text(text) if self.pre_depth > 0 => {
                self.out.push_lines(text)?;
                Ok(false)
            }
            Node::Text(text) => {
                self.out.push_str(text)?;
                Ok(false)
            }
            Node::Element(element) => Ok(self.enter_element(role(element.name()))),
            Node::Doctype(_) | Node::Comment(_) | Node::ProcessingInstruction(_) => Ok(false),
        }
    }

    fn enter_element(&mut self, role: Role) -> bool {
        match role {
            Role::Hidden => return false,
            Role::Heading(level) => self.out.begin_heading(level),
            Role::Preformatted => {
                self.pre_depth += 1;
                self.out.paragraph_break();
            }
            Role::Block => self.out.paragraph_break(),
            Role::Line | Role::Break => self.out.line_break(),
            Role::Cell => self.out.space(),
            Role::Inline => {}
        }
        true
    }

    /// Handles the end of a node (also of those whose children were skipped).
    fn leave(&mut self, node: &Node) {
        let Node::Element(element) = node else {
            return;
        };
        match role(element.name()) {
            Role::Heading(_) => self.out.end_heading(),
            Role::Preformatted => {
                self.pre_depth = self.pre_depth.saturating_sub(1);
                self.out.paragraph_break();
            }
            Role::Block => self.out.paragraph_break(),
            Role::Line => self.out.line_break(),
            Role::Cell => self.out.space(),
            Role::Hidden | Role::Break | Role::Inline => {}
        }
    }
}
