//! `heimdex search "<query>"`: `POST /vectors/search` and a results table.

use clap::Args;
use serde_json::{Value, json};

use heimdex::settings::Settings;

use super::{Client, Connection};

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// What to look for.
    pub query: String,
    #[command(flatten)]
    pub connection: Connection,
    /// Results to show (1–100).
    #[arg(long, short, default_value_t = 5)]
    pub limit: u32,
    /// Only this asset.
    #[arg(long)]
    pub asset: Option<String>,
    /// Print the raw JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: SearchArgs, settings: &Settings) -> anyhow::Result<()> {
    let client = Client::new(&args.connection, settings)?;
    let mut body = json!({"query": args.query, "limit": args.limit});
    if let Some(model) = &args.connection.model {
        body["model"] = model.as_str().into();
    }
    if let Some(asset) = &args.asset {
        body["filter"] = json!({"asset_id": asset});
    }
    let answer = client.post("/vectors/search", &body).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    if results.is_empty() {
        println!("no results");
        return Ok(());
    }
    print!("{}", table(&results));
    Ok(())
}

/// `#  score  asset  segment  text`, the text on one line and cut to fit.
fn table(results: &[Value]) -> String {
    const TEXT: usize = 72;
    let rows: Vec<[String; 5]> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let p = &r["payload"];
            let text: String = p["text"]
                .as_str()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let text = if text.chars().count() > TEXT {
                format!("{}…", text.chars().take(TEXT - 1).collect::<String>())
            } else {
                text
            };
            [
                (i + 1).to_string(),
                format!("{:.3}", r["score"].as_f64().unwrap_or(0.0)),
                p["asset_id"].as_str().unwrap_or("").to_owned(),
                p["segment_id"].as_str().unwrap_or("").to_owned(),
                text,
            ]
        })
        .collect();
    let header = ["#", "score", "asset", "segment", "text"];
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| -> String {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header);
    for row in &rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_cuts_text() {
        let results = vec![
            json!({"score": 0.91234, "payload": {"asset_id": "a.md", "segment_id": "chunk-0", "text": "short\ntext"}}),
            json!({"score": 0.5, "payload": {"asset_id": "longer/b.txt", "segment_id": "chunk-12", "text": "x ".repeat(100)}}),
        ];
        let t = table(&results);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("#  score  asset"), "{t}");
        assert!(
            lines[1].contains("0.912  a.md          chunk-0   short text"),
            "{t}"
        );
        assert!(lines[2].ends_with('…'), "{t}");
    }
}
