//! `heimdex documents`: `GET /documents`, every page, as a table.

use clap::Args;
use serde_json::Value;

use heimdex::settings::Settings;

use super::{Client, Connection};

#[derive(Args, Debug)]
pub struct DocumentsArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Print the documents as JSON lines (one object each) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: DocumentsArgs, settings: &Settings) -> anyhow::Result<()> {
    let client = Client::new(&args.connection, settings)?;
    let documents = list(&client).await?;
    if args.json {
        for document in &documents {
            println!("{}", serde_json::to_string(document)?);
        }
        return Ok(());
    }
    if documents.is_empty() {
        println!("no documents");
        return Ok(());
    }
    print!("{}", table(&documents));
    println!("{} documents", documents.len());
    Ok(())
}

/// Every document of the organization, walking the pages.
pub async fn list(client: &Client) -> anyhow::Result<Vec<Value>> {
    let mut documents = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/documents?limit=1000&cursor={cursor}"),
            None => "/documents?limit=1000".to_owned(),
        };
        let page = client.get(&path).await?;
        documents.extend(page["documents"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(documents),
        }
    }
}

/// `asset  state  chunks  version  updated`, with a failed document's reason after its state.
fn table(documents: &[Value]) -> String {
    let rows: Vec<Vec<String>> = documents
        .iter()
        .map(|d| {
            let text = |key: &str| d[key].as_str().unwrap_or("").to_owned();
            let state = match d["error"]["message"].as_str() {
                Some(reason) => format!("{} ({reason})", text("state")),
                None => text("state"),
            };
            vec![
                text("asset_id"),
                state,
                d["chunks"].as_u64().unwrap_or(0).to_string(),
                text("version").chars().take(12).collect(),
                text("updated_at"),
            ]
        })
        .collect();
    super::table(&["asset", "state", "chunks", "version", "updated"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_shows_state_reason_and_a_short_version() {
        let out = table(&[
            json!({"asset_id": "guide", "state": "indexed", "chunks": 4,
                   "version": "0123456789abcdef0123", "updated_at": "2026-12-01T06:00:00Z"}),
            json!({"asset_id": "broken", "state": "failed", "chunks": 1, "version": "ff",
                   "updated_at": "2026-12-01T06:01:00Z",
                   "error": {"code": "invalid_input", "message": "no text"}}),
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["asset", "state", "chunks", "version", "updated"]
        );
        assert!(lines[1].starts_with("guide   indexed"), "{out}");
        assert!(lines[1].contains(" 0123456789ab "), "{out}");
        assert!(lines[2].contains("failed (no text)"), "{out}");
    }
}
