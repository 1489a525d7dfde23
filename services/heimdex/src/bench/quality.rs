//! `heimdex bench quality <dir>`: retrieval quality on a classic test collection, through the
//! public API only: the documents go in through `POST /vectors/documents`, every query is run
//! in every mode through `POST /vectors/search`, and the rankings are scored against the
//! relevance judgements (nDCG@10, Recall@100, MRR@10).
//!
//! # The collection's format (SMART, as CACM, CISI, MED… ship)
//!
//! * Documents and queries are records: a line `.I <id>` starts one, a line `.<letter>` starts
//!   one of its fields, and the lines after it are that field's text. A document's text is its
//!   title (`.T`) and abstract (`.W`), joined by a newline; a query's is its `.W`. Other fields
//!   (authors, dates, citations…) are not used.
//! * Relevance judgements, one per line: `<query id> <document id> [<grade>]`, more columns
//!   ignored. The grade is a gain (≤ 0: not relevant); without one, or when every third column
//!   is `0` (SMART's placeholder columns, as in CACM's `qrels.text`), judgements are binary.
//!   TREC's layout, `<query id> 0|Q0 <document id> <grade>`, is recognised by its second column.
//!
//! The files are found by name in `<dir>`: documents `*.all` (or `--docs`), queries
//! `query.text` / `*.qry` (or `--queries`), judgements `qrels.text` / `*.rel` (or `--qrels`).
//!
//! # Scoring
//!
//! A document may be several chunks; its rank is that of its best chunk (the first of its chunks
//! in the ranking), and the search is paged until 100 distinct documents are found or the
//! results end. Queries without any relevant document are left out. nDCG uses linear gains
//! (`gain / log2(rank + 1)`, as trec_eval does) and the ideal ordering of all judged documents.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use serde_json::json;

use heimdex_api::auth::JwtConfig;

use crate::client::{Client, Connection};

/// Documents ranked per query (Recall@100).
const DEPTH: usize = 100;
/// Results per search page (the API's most).
const PAGE: usize = 100;
/// The deepest the API pages (`offset + limit`).
const MAX_DEPTH: usize = 10_000;

/// What `bench quality` is told.
pub struct Options {
    pub dir: PathBuf,
    pub docs: Option<PathBuf>,
    pub queries: Option<PathBuf>,
    pub qrels: Option<PathBuf>,
    pub connection: Connection,
    /// Skip the ingest (the org already holds the collection, from an earlier run).
    pub skip_ingest: bool,
    pub concurrency: usize,
}

/// A test collection.
#[derive(Debug, Default)]
pub struct Collection {
    /// (id, text), in file order.
    pub docs: Vec<(String, String)>,
    pub queries: Vec<(String, String)>,
    /// query id → document id → gain (> 0).
    pub qrels: HashMap<String, HashMap<String, f64>>,
}

/// The three metrics, averaged over the judged queries.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scores {
    pub ndcg10: f64,
    pub recall100: f64,
    pub mrr10: f64,
}

pub async fn run(o: Options, jwt: &JwtConfig) -> anyhow::Result<()> {
    let collection = Collection::load(&o)?;
    let judged: Vec<&(String, String)> = collection
        .queries
        .iter()
        .filter(|(id, _)| collection.qrels.get(id).is_some_and(|r| !r.is_empty()))
        .collect();
    anyhow::ensure!(!judged.is_empty(), "no query has a relevant document");
    let client = Client::with_jwt(&o.connection, jwt)?;
    let name = o.dir.file_name().map_or_else(
        || o.dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    println!(
        "quality: {name}: {} documents, {} queries ({} judged), org {}, url {}",
        collection.docs.len(),
        collection.queries.len(),
        judged.len(),
        o.connection.org,
        o.connection.url
    );
    let bm25_lengths: Vec<usize> = collection
        .docs
        .iter()
        .map(|(_, text)| heimdex_store::keyword::token_count(text))
        .collect();
    println!(
        "  documents: {:.1} BM25 tokens on average (median {}), against BM25's avg_len {}",
        bm25_lengths.iter().sum::<usize>() as f64 / bm25_lengths.len().max(1) as f64,
        median(&bm25_lengths),
        heimdex_store::keyword::AVG_LEN
    );

    if !o.skip_ingest {
        ingest(&client, &collection, &o).await?;
    }

    println!(
        "  {:<8} {:>8} {:>11} {:>8}",
        "mode", "nDCG@10", "Recall@100", "MRR@10"
    );
    let mut by_mode = BTreeMap::new();
    for mode in ["dense", "keyword", "hybrid"] {
        let started = Instant::now();
        let rankings = futures::stream::iter(judged.iter())
            .map(|(id, text)| {
                let client = &client;
                let model = o.connection.model.clone();
                async move {
                    let ranking = rank(client, text, mode, model.as_deref()).await;
                    (id.clone(), ranking)
                }
            })
            .buffered(o.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        let mut per_query = Vec::with_capacity(rankings.len());
        for (id, ranking) in rankings {
            let ranking = ranking.with_context(|| format!("query {id}, mode {mode}"))?;
            let relevant = collection.qrels.get(&id).cloned().unwrap_or_default();
            per_query.push(score(&ranking, &relevant));
        }
        let scores = mean(&per_query);
        println!(
            "  {mode:<8} {:>8.4} {:>11.4} {:>8.4}   ({} queries in {:.1} s)",
            scores.ndcg10,
            scores.recall100,
            scores.mrr10,
            per_query.len(),
            started.elapsed().as_secs_f64()
        );
        by_mode.insert(mode, scores);
    }
    let best_single = by_mode["dense"].ndcg10.max(by_mode["keyword"].ndcg10);
    println!(
        "  hybrid nDCG@10 - best single mode: {:+.4}",
        by_mode["hybrid"].ndcg10 - best_single
    );
    Ok(())
}

fn median(xs: &[usize]) -> usize {
    let mut xs = xs.to_vec();
    xs.sort_unstable();
    xs.get(xs.len() / 2).copied().unwrap_or(0)
}

/// Sends every document as `asset_id = <doc id>` and waits for all chunks to be embedded.
async fn ingest(client: &Client, collection: &Collection, o: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let sends = futures::stream::iter(collection.docs.iter())
        .map(|(id, text)| async move {
            let mut body = json!({"asset_id": id, "text": text});
            if let Some(model) = &o.connection.model {
                body["model"] = model.as_str().into();
            }
            let accepted = client
                .post("/vectors/documents", &body)
                .await
                .with_context(|| format!("document {id}"))?;
            let jobs: Vec<String> = accepted["chunks"]
                .as_array()
                .map(|chunks| {
                    chunks
                        .iter()
                        .filter_map(|c| c["job_id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Ok::<_, anyhow::Error>(jobs)
        })
        .buffer_unordered(o.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut jobs = Vec::new();
    for sent in sends {
        jobs.extend(sent?);
    }
    let accepted = started.elapsed();
    let (succeeded, failed, pending) =
        crate::client::ingest::follow(client, &jobs, Duration::from_secs(3_600)).await;
    println!(
        "  ingest: {} documents as {} chunks, accepted in {:.1} s, embedded in {:.1} s",
        collection.docs.len(),
        jobs.len(),
        accepted.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        failed.is_empty() && pending == 0 && succeeded == jobs.len(),
        "ingest incomplete: {succeeded} succeeded, {} failed (first: {:?}), {pending} pending",
        failed.len(),
        failed.first()
    );
    Ok(())
}

/// The first `DEPTH` distinct documents for `text` in `mode`, best first.
async fn rank(
    client: &Client,
    text: &str,
    mode: &str,
    model: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let mut docs = Vec::with_capacity(DEPTH);
    let mut seen = HashSet::new();
    let mut offset = 0;
    while docs.len() < DEPTH && offset + PAGE <= MAX_DEPTH {
        let mut body = json!({"query": text, "mode": mode, "limit": PAGE, "offset": offset});
        if let Some(model) = model {
            body["model"] = model.into();
        }
        let answer = client.post("/vectors/search", &body).await?;
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        for hit in &results {
            let asset = hit["payload"]["asset_id"].as_str().unwrap_or_default();
            if seen.insert(asset.to_owned()) {
                docs.push(asset.to_owned());
            }
        }
        if results.len() < PAGE {
            break;
        }
        offset += PAGE;
    }
    docs.truncate(DEPTH);
    Ok(docs)
}

/// One query's metrics for `ranking` (document ids, best first) against its judgements.
pub fn score(ranking: &[String], relevant: &HashMap<String, f64>) -> Scores {
    let gain = |doc: &String| relevant.get(doc).copied().unwrap_or(0.0);
    let dcg: f64 = ranking
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, doc)| gain(doc) / (i as f64 + 2.0).log2())
        .sum();
    let mut ideal: Vec<f64> = relevant.values().copied().collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, g)| g / (i as f64 + 2.0).log2())
        .sum();
    let found = ranking.iter().take(100).filter(|d| gain(d) > 0.0).count();
    let first = ranking.iter().take(10).position(|d| gain(d) > 0.0);
    Scores {
        ndcg10: if idcg > 0.0 { dcg / idcg } else { 0.0 },
        recall100: found as f64 / relevant.len().max(1) as f64,
        mrr10: first.map_or(0.0, |i| 1.0 / (i as f64 + 1.0)),
    }
}

pub fn mean(scores: &[Scores]) -> Scores {
    let n = scores.len().max(1) as f64;
    Scores {
        ndcg10: scores.iter().map(|s| s.ndcg10).sum::<f64>() / n,
        recall100: scores.iter().map(|s| s.recall100).sum::<f64>() / n,
        mrr10: scores.iter().map(|s| s.mrr10).sum::<f64>() / n,
    }
}

impl Collection {
    fn load(o: &Options) -> anyhow::Result<Self> {
        let docs = match &o.docs {
            Some(path) => path.clone(),
            None => find(&o.dir, |name| name.ends_with(".all"))?,
        };
        let queries = match &o.queries {
            Some(path) => path.clone(),
            None => find(&o.dir, |name| {
                name == "query.text" || name.ends_with(".qry")
            })?,
        };
        let qrels = match &o.qrels {
            Some(path) => path.clone(),
            None => find(&o.dir, |name| {
                name == "qrels.text" || name.ends_with(".rel")
            })?,
        };
        let read = |path: &Path| {
            std::fs::read(path)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .with_context(|| format!("reading {}", path.display()))
        };
        let docs = parse_records(&read(&docs)?)
            .into_iter()
            .filter_map(|(id, fields)| {
                let id = normal_id(&id);
                let title = fields.get("T").map_or("", String::as_str);
                let text = match fields.get("W") {
                    Some(abstract_) => format!("{title}\n{abstract_}"),
                    None => title.to_owned(),
                };
                let text = text.trim().to_owned();
                (!text.is_empty()).then_some((id, text))
            })
            .collect();
        let queries = parse_records(&read(&queries)?)
            .into_iter()
            .filter_map(|(id, fields)| {
                let id = normal_id(&id);
                let text = fields
                    .get("W")?
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                (!text.is_empty()).then_some((id, text))
            })
            .collect();
        Ok(Self {
            docs,
            queries,
            qrels: parse_qrels(&read(&qrels)?)?,
        })
    }
}

/// The one file in `dir` whose name `matches`.
fn find(dir: &Path, matches: impl Fn(&str) -> bool) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| matches(&n.to_ascii_lowercase()))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => anyhow::bail!(
            "no such file in {} (name it with --docs/--queries/--qrels)",
            dir.display()
        ),
        _ => anyhow::bail!("several candidates in {}: {found:?}", dir.display()),
    }
}

/// `.I <id>` records: id → field letter → text (lines joined with newlines, trimmed).
pub fn parse_records(text: &str) -> Vec<(String, HashMap<String, String>)> {
    let mut records: Vec<(String, HashMap<String, String>)> = Vec::new();
    let mut field: Option<String> = None;
    for line in text.lines() {
        if let Some(id) = line.strip_prefix(".I")
            && (id.is_empty() || id.starts_with(char::is_whitespace))
        {
            records.push((id.trim().to_owned(), HashMap::new()));
            field = None;
            continue;
        }
        let marker = line
            .strip_prefix('.')
            .filter(|rest| rest.len() == 1 && rest.chars().all(|c| c.is_ascii_uppercase()));
        if let Some(letter) = marker {
            field = Some(letter.to_owned());
            continue;
        }
        if let (Some((_, fields)), Some(field)) = (records.last_mut(), &field) {
            let entry = fields.entry(field.clone()).or_default();
            if !entry.is_empty() {
                entry.push('\n');
            }
            entry.push_str(line.trim_end());
        }
    }
    for (_, fields) in &mut records {
        for value in fields.values_mut() {
            *value = value.trim().to_owned();
        }
    }
    records
}

/// Relevance judgements (module docs): query id → document id → gain. Ids are compared as
/// numbers when they are numbers (`01` is query `1`).
pub fn parse_qrels(text: &str) -> anyhow::Result<HashMap<String, HashMap<String, f64>>> {
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| !cols.is_empty())
        .collect();
    anyhow::ensure!(
        rows.iter().all(|cols| cols.len() >= 2),
        "a judgement line has fewer than two columns"
    );
    let trec = rows
        .iter()
        .all(|cols| cols.len() >= 4 && matches!(cols[1], "0" | "Q0"));
    let graded = !trec
        && rows.iter().any(|cols| {
            cols.get(2)
                .is_some_and(|g| g.parse::<f64>().is_ok_and(|g| g != 0.0))
        });
    let mut qrels: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for cols in rows {
        let (query, doc, grade) = if trec {
            (cols[0], cols[2], Some(cols[3]))
        } else {
            (
                cols[0],
                cols[1],
                if graded { cols.get(2).copied() } else { None },
            )
        };
        let gain = match grade {
            None => 1.0,
            Some(g) => g
                .parse::<f64>()
                .with_context(|| format!("grade {g:?} is not a number"))?,
        };
        if gain > 0.0 {
            qrels
                .entry(normal_id(query))
                .or_default()
                .insert(normal_id(doc), gain);
        }
    }
    Ok(qrels)
}

/// `007` → `7`; other ids as they are.
fn normal_id(id: &str) -> String {
    id.parse::<u64>()
        .map_or_else(|_| id.to_owned(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_title_and_abstract() {
        let text = ".I 1\n.T\nPreliminary Report\n.B\nCACM 1958\n.W\nAn abstract\non two lines.\n.X\n1 5 1\n.I 2\n.T\nTitle only\n";
        let records = parse_records(text);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0, "1");
        assert_eq!(records[0].1["T"], "Preliminary Report");
        assert_eq!(records[0].1["W"], "An abstract\non two lines.");
        assert_eq!(records[1].1["T"], "Title only");
        assert!(!records[1].1.contains_key("W"));
    }

    #[test]
    fn smart_placeholder_columns_are_binary() {
        let qrels = parse_qrels("01 1410  0 0\n01 1572  0 0\n02 7 0 0\n").expect("parse");
        assert_eq!(qrels["1"].len(), 2);
        assert_eq!(qrels["1"]["1410"], 1.0);
        assert_eq!(qrels["2"]["7"], 1.0);
    }

    #[test]
    fn graded_and_trec_judgements() {
        let qrels = parse_qrels("1 10 2\n1 11 0\n1 12 1\n").expect("parse");
        assert_eq!(qrels["1"].len(), 2, "grade 0 is not relevant");
        assert_eq!(qrels["1"]["10"], 2.0);
        let qrels = parse_qrels("1 0 doc-a 3\n1 0 doc-b 0\n2 Q0 doc-c 1\n").expect("parse");
        assert_eq!(qrels["1"]["doc-a"], 3.0);
        assert!(!qrels["1"].contains_key("doc-b"));
        assert_eq!(qrels["2"]["doc-c"], 1.0);
        let qrels = parse_qrels("1 10\n1 11\n").expect("parse");
        assert_eq!(qrels["1"]["11"], 1.0);
    }

    #[test]
    fn metrics_by_hand() {
        let relevant: HashMap<String, f64> = [
            ("a".to_owned(), 1.0),
            ("b".to_owned(), 1.0),
            ("z".to_owned(), 1.0),
        ]
        .into();
        let ranking: Vec<String> = ["x", "a", "y", "b"].map(str::to_owned).to_vec();
        let s = score(&ranking, &relevant);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert!((s.ndcg10 - dcg / idcg).abs() < 1e-12);
        assert!((s.recall100 - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.mrr10 - 0.5).abs() < 1e-12);
        let graded: HashMap<String, f64> = [("a".to_owned(), 3.0), ("b".to_owned(), 1.0)].into();
        let s = score(&["b".to_owned(), "a".to_owned()], &graded);
        let dcg = 1.0 + 3.0 / 3f64.log2();
        let idcg = 3.0 + 1.0 / 3f64.log2();
        assert!((s.ndcg10 - dcg / idcg).abs() < 1e-12);
        assert_eq!(score(&[], &relevant), Scores::default());
    }
}
