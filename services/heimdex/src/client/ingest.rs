//! `heimdex ingest <files or dirs>`: every `.txt`/`.md` file goes through `POST
//! /vectors/documents` (its path is the asset id), then the chunks' jobs are followed to the end.
//! With `--sync`, a folder of files is kept equal to the index instead ([`super::sync`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use heimdex::settings::Settings;

use super::{Client, Connection};

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Files and directories (searched recursively for `.txt` and `.md`).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub connection: Connection,
    /// Most tokens per chunk (8–256).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Tokens shared by neighbouring chunks.
    #[arg(long)]
    pub overlap: Option<u32>,
    /// Metadata for every document sent, as a JSON object, e.g. '{"source": "wiki", "year":
    /// 2024}' (searchable with `heimdex search --filter`).
    #[arg(long, value_name = "JSON", value_parser = super::json_object)]
    pub metadata: Option<Value>,
    /// Documents sent at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Return once the documents are accepted, without waiting for their chunks to be embedded.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Make the documents under `--prefix` equal the one directory given: send new and changed
    /// files (PDF, DOCX, HTML, Markdown, text) as documents, skip unchanged ones by content hash
    /// without uploading them, delete the documents whose files are gone.
    #[arg(long)]
    pub sync: bool,
    /// With `--sync`: the asset-id prefix of the folder's documents (default: the directory's
    /// name and `/`). Documents outside it are never touched.
    #[arg(long, requires = "sync")]
    pub prefix: Option<String>,
}

/// A file to send, and the asset id it is stored under.
struct Document {
    path: PathBuf,
    asset_id: String,
}

pub async fn run(args: IngestArgs, settings: &Settings) -> anyhow::Result<()> {
    if args.sync {
        return super::sync::run(args, settings).await;
    }
    let client = Client::new(&args.connection, settings)?;
    let mut skipped: Vec<(String, String)> = Vec::new();
    let documents = collect(&args.paths, &mut skipped)?;
    if documents.is_empty() {
        anyhow::bail!("no .txt or .md files found in {:?}", args.paths);
    }
    let started = Instant::now();

    let bar = ProgressBar::new(documents.len() as u64).with_style(style("documents"));
    let mut chunk_body = serde_json::Map::new();
    if let Some(max) = args.max_tokens {
        chunk_body.insert("max_tokens".into(), max.into());
    }
    if let Some(overlap) = args.overlap {
        chunk_body.insert("overlap".into(), overlap.into());
    }
    let model = args.connection.model.clone();
    let sends = futures::stream::iter(documents)
        .map(|doc| {
            let (client, bar, model, chunk) = (&client, &bar, model.clone(), chunk_body.clone());
            let metadata = args.metadata.clone();
            async move {
                let outcome = send(client, &doc, model, chunk, metadata).await;
                bar.inc(1);
                bar.set_message(doc.asset_id.clone());
                (doc, outcome)
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();

    let mut jobs: Vec<String> = Vec::new();
    let mut failed_files: Vec<(String, String)> = Vec::new();
    let mut files = 0;
    for (doc, outcome) in sends {
        match outcome {
            Ok(Some(ids)) => {
                files += 1;
                jobs.extend(ids);
            }
            Ok(None) => skipped.push((doc.asset_id, "empty".into())),
            Err(err) => failed_files.push((doc.asset_id, format!("{err:#}"))),
        }
    }
    let accepted = started.elapsed();

    let (succeeded, failed_jobs, pending) = if args.no_wait {
        (0, Vec::new(), jobs.len())
    } else {
        follow(&client, &jobs, Duration::from_secs(args.timeout)).await
    };
    let elapsed = started.elapsed();

    println!(
        "ingested {files} file(s) as {} chunk(s) in {:.1} s (accepted in {:.1} s)",
        jobs.len(),
        elapsed.as_secs_f64(),
        accepted.as_secs_f64()
    );
    if !args.no_wait {
        println!(
            "  chunks embedded: {succeeded} · failed: {} · still pending: {pending} · {:.1} chunks/s",
            failed_jobs.len(),
            succeeded as f64 / elapsed.as_secs_f64().max(1e-3)
        );
    }
    for (asset, reason) in &skipped {
        println!("  skipped {asset}: {reason}");
    }
    for (asset, reason) in &failed_files {
        println!("  refused {asset}: {reason}");
    }
    for (job, reason) in &failed_jobs {
        println!("  job {job} failed: {reason}");
    }
    if !failed_files.is_empty() || !failed_jobs.is_empty() || pending > 0 && !args.no_wait {
        anyhow::bail!("not everything was ingested");
    }
    Ok(())
}

pub(crate) fn style(what: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{wide_msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// Sends one document; `None` when it has no text.
async fn send(
    client: &Client,
    doc: &Document,
    model: Option<String>,
    chunk: serde_json::Map<String, Value>,
    metadata: Option<Value>,
) -> anyhow::Result<Option<Vec<String>>> {
    let bytes = tokio::fs::read(&doc.path).await?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", doc.path.display()))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut body = json!({"asset_id": doc.asset_id, "text": text});
    if let Some(model) = model {
        body["model"] = model.into();
    }
    if !chunk.is_empty() {
        body["chunk"] = Value::Object(chunk);
    }
    if let Some(metadata) = metadata {
        body["metadata"] = metadata;
    }
    let accepted = client.post("/vectors/documents", &body).await?;
    Ok(Some(
        accepted["chunks"]
            .as_array()
            .map(|chunks| {
                chunks
                    .iter()
                    .filter_map(|c| c["job_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    ))
}

/// Polls the jobs until each is terminal (or `timeout`): (succeeded, failed with reason,
/// still pending).
pub(crate) async fn follow(
    client: &Client,
    jobs: &[String],
    timeout: Duration,
) -> (usize, Vec<(String, String)>, usize) {
    let bar = ProgressBar::new(jobs.len() as u64).with_style(style("chunks embedded"));
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<String> = jobs.to_vec();
    let mut succeeded = 0;
    let mut failed = Vec::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let polled: Vec<(String, Option<Value>)> = futures::stream::iter(pending.drain(..))
            .map(|id| async move {
                let job = client.get(&format!("/jobs/{id}")).await.ok();
                (id, job)
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for (id, job) in polled {
            match job.as_ref().and_then(|j| j["status"].as_str()) {
                Some("SUCCEEDED") => {
                    succeeded += 1;
                    bar.inc(1);
                }
                Some("FAILED") => {
                    let reason = job
                        .as_ref()
                        .and_then(|j| j["error"]["message"].as_str())
                        .unwrap_or("unknown")
                        .to_owned();
                    failed.push((id, reason));
                    bar.inc(1);
                }
                _ => pending.push(id),
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    bar.finish_and_clear();
    let left = pending.len();
    (succeeded, failed, left)
}

/// The documents under `paths`: directories are walked for `.txt`/`.md` files (sorted, asset id =
/// path relative to the directory); a file named directly is taken if it is `.txt`/`.md` and
/// otherwise skipped with a note.
fn collect(
    paths: &[PathBuf],
    skipped: &mut Vec<(String, String)>,
) -> anyhow::Result<Vec<Document>> {
    let mut out = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, &mut files)?;
            files.sort();
            for file in files {
                let relative = file.strip_prefix(path).unwrap_or(&file);
                out.push(Document {
                    asset_id: asset_id(relative),
                    path: file,
                });
            }
        } else if is_text(path) {
            out.push(Document {
                asset_id: asset_id(Path::new(path.file_name().unwrap_or(path.as_os_str()))),
                path: path.clone(),
            });
        } else {
            skipped.push((path.display().to_string(), "not a .txt or .md file".into()));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else if is_text(&path) {
            files.push(path);
        }
    }
    Ok(())
}

fn is_text(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("txt") || e.eq_ignore_ascii_case("md"))
}

/// `notes/a.md` → `notes/a.md` (with `/` on every platform).
fn asset_id(relative: &Path) -> String {
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
