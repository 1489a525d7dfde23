//! `heimdex search "<query>"`: `POST /vectors/search` and a results table.

use clap::{Args, ValueEnum};
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
    /// Only points whose metadata passes this filter: the JSON of the API's
    /// `filter.metadata`, e.g. '{"must": [{"key": "lang", "eq": "en"}], "must_not": [{"key":
    /// "draft", "eq": true}]}'.
    #[arg(long, value_name = "JSON", value_parser = super::json_object)]
    pub filter: Option<Value>,
    /// How to rank (the service's default: hybrid).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Show each hit's rank in the dense and in the keyword ranking.
    #[arg(long)]
    pub explain: bool,
    /// Diversify the results (MMR) with this diversity, 0 (relevance only) to 1.
    #[arg(long, value_name = "DIVERSITY")]
    pub mmr: Option<f64>,
    /// How many of the best results MMR re-ranks (the service's default: 100).
    #[arg(long, requires = "mmr", value_name = "N")]
    pub mmr_candidates: Option<u32>,
    /// Print the raw JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `--mode`: the service's `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Dense and keyword rankings fused.
    Hybrid,
    /// Cosine similarity of the model's vectors.
    Dense,
    /// BM25 over the text.
    Keyword,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Hybrid => "hybrid",
            Mode::Dense => "dense",
            Mode::Keyword => "keyword",
        }
    }
}

/// The request body for these arguments.
fn body(args: &SearchArgs) -> Value {
    let mut body = json!({"query": args.query, "limit": args.limit});
    if let Some(model) = &args.connection.model {
        body["model"] = model.as_str().into();
    }
    if let Some(asset) = &args.asset {
        body["filter"]["asset_id"] = asset.as_str().into();
    }
    if let Some(metadata) = &args.filter {
        body["filter"]["metadata"] = metadata.clone();
    }
    if let Some(mode) = args.mode {
        body["mode"] = mode.as_str().into();
    }
    if args.explain {
        body["explain"] = true.into();
    }
    if let Some(diversity) = args.mmr {
        body["mmr"] = json!({"diversity": diversity});
        if let Some(candidates) = args.mmr_candidates {
            body["mmr"]["candidates"] = candidates.into();
        }
    }
    body
}

pub async fn run(args: SearchArgs, settings: &Settings) -> anyhow::Result<()> {
    let client = Client::new(&args.connection, settings)?;
    let answer = client.post("/vectors/search", &body(&args)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    if results.is_empty() {
        println!("no results");
        return Ok(());
    }
    print!("{}", table(&results, args.explain));
    Ok(())
}

/// `#  score  asset  segment  text`, the text on one line and cut to fit; with `explain`, each
/// hit's dense and keyword rank before the text (`-` where it is not in that ranking).
fn table(results: &[Value], explain: bool) -> String {
    const TEXT: usize = 72;
    let rank = |r: &Value, list: &str| -> String {
        r["explain"][list]["rank"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |rank| rank.to_string())
    };
    let rows: Vec<Vec<String>> = results
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
            let mut row = vec![
                (i + 1).to_string(),
                format!("{:.3}", r["score"].as_f64().unwrap_or(0.0)),
                p["asset_id"].as_str().unwrap_or("").to_owned(),
                p["segment_id"].as_str().unwrap_or("").to_owned(),
            ];
            if explain {
                row.push(rank(r, "dense"));
                row.push(rank(r, "keyword"));
            }
            row.push(text);
            row
        })
        .collect();
    let mut header = vec!["#", "score", "asset", "segment"];
    if explain {
        header.extend(["dense", "keyword"]);
    }
    header.push("text");
    super::table(&header, &rows)
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
        let t = table(&results, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("#  score  asset"), "{t}");
        assert!(
            lines[1].contains("0.912  a.md          chunk-0   short text"),
            "{t}"
        );
        assert!(lines[2].ends_with('…'), "{t}");
    }

    #[test]
    fn explain_columns_show_ranks() {
        let results = vec![
            json!({"score": 0.03, "payload": {"asset_id": "a", "segment_id": "s", "text": "t"},
                   "explain": {"dense": {"rank": 2, "score": 0.5}, "keyword": {"rank": null, "score": null}}}),
        ];
        let t = table(&results, true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("dense  keyword  text"), "{t}");
        assert!(lines[1].ends_with("2      -        t"), "{t}");
    }

    #[test]
    fn flags_become_the_request() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: SearchArgs,
        }
        let cli = Cli::parse_from([
            "search",
            "ring planets",
            "--mode",
            "keyword",
            "--explain",
            "--mmr",
            "0.3",
            "--mmr-candidates",
            "50",
        ]);
        assert_eq!(
            body(&cli.args),
            json!({"query": "ring planets", "limit": 5, "mode": "keyword", "explain": true,
                   "mmr": {"diversity": 0.3, "candidates": 50}})
        );
        let cli = Cli::parse_from(["search", "q"]);
        assert_eq!(body(&cli.args), json!({"query": "q", "limit": 5}));
        let cli = Cli::parse_from([
            "search",
            "q",
            "--asset",
            "a.md",
            "--filter",
            r#"{"must": [{"key": "lang", "eq": "en"}]}"#,
        ]);
        assert_eq!(
            body(&cli.args),
            json!({"query": "q", "limit": 5, "filter": {"asset_id": "a.md",
                   "metadata": {"must": [{"key": "lang", "eq": "en"}]}}})
        );
        assert!(Cli::try_parse_from(["search", "q", "--filter", "[1]"]).is_err());
        assert!(Cli::try_parse_from(["search", "q", "--filter", "{"]).is_err());
    }
}
