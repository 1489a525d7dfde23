//! `heimdex ingest <dir> --sync`: makes the documents under one asset-id prefix equal a folder.
//!
//! Every file of a supported format (PDF, DOCX, HTML, Markdown, plain text) is a document whose
//! asset id is the prefix followed by its path relative to the folder. The prefix (by default the
//! folder's own name and a `/`) is what marks the documents as this folder's: the sync lists the
//! org's documents, keeps those under the prefix, and touches no other.
//!
//! - A file whose document's latest version has the same SHA-256, format and metadata (and
//!   model and chunking, where `--model`, `--max-tokens` or `--overlap` are given) is unchanged:
//!   skipped without being uploaded.
//! - Any other file is uploaded (`PUT /documents/{asset_id}`, the raw bytes with their media
//!   type): the service replaces the document's chunks with the new version's.
//! - A document under the prefix whose file left the folder is deleted.
//!
//! Then the jobs are followed to the end, and a summary counts what was sent, skipped, deleted
//! and failed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde_json::Value;

use heimdex_domain::ids::sha256_hex;

use heimdex::settings::Settings;

use super::ingest::{IngestArgs, follow, style};
use super::{Client, documents};

/// A supported file: its extension, the format the service records, and the media type it is
/// sent with.
const FORMATS: &[(&str, &str, &str)] = &[
    ("pdf", "pdf", "application/pdf"),
    (
        "docx",
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    ("html", "html", "text/html"),
    ("htm", "html", "text/html"),
    ("md", "markdown", "text/markdown"),
    ("markdown", "markdown", "text/markdown"),
    ("txt", "text", "text/plain"),
];

/// One file of the folder, as the document it stands for.
struct Local {
    path: PathBuf,
    asset_id: String,
    format: &'static str,
    media_type: &'static str,
}

/// What became of one file or document.
enum Action {
    /// Uploaded; its job.
    Sent(String),
    /// Its document is up to date.
    Skipped,
    /// Its document was deleted; the delete job.
    Deleted(String),
    /// Refused, or its unchanged document had failed: why.
    Failed(String),
}

pub async fn run(args: IngestArgs, settings: &Settings) -> anyhow::Result<()> {
    let [dir] = args.paths.as_slice() else {
        anyhow::bail!("--sync takes exactly one directory");
    };
    if !dir.is_dir() {
        anyhow::bail!("--sync takes a directory; {} is not one", dir.display());
    }
    let prefix = match &args.prefix {
        Some(prefix) => prefix.clone(),
        None => default_prefix(dir)?,
    };
    if prefix.is_empty() {
        anyhow::bail!("--prefix must not be empty: a sync deletes every document under it");
    }
    let client = Client::new(&args.connection, settings)?;
    let started = Instant::now();

    let locals = walk(dir, &prefix)?;
    let indexed: BTreeMap<String, Value> = documents::list(&client)
        .await
        .context("cannot list the documents")?
        .into_iter()
        .filter_map(|doc| {
            let asset = doc["asset_id"].as_str()?.to_owned();
            asset.starts_with(&prefix).then_some((asset, doc))
        })
        .collect();
    let present: BTreeSet<&str> = locals.iter().map(|l| l.asset_id.as_str()).collect();
    let gone: Vec<String> = indexed
        .keys()
        .filter(|asset| !present.contains(asset.as_str()))
        .cloned()
        .collect();

    let bar = ProgressBar::new((locals.len() + gone.len()) as u64).with_style(style("files"));
    let uploads = futures::stream::iter(&locals)
        .map(|local| {
            let (client, bar, args) = (&client, &bar, &args);
            let indexed = indexed.get(&local.asset_id);
            async move {
                let action = match upload(client, args, local, indexed).await {
                    Ok(action) => action,
                    Err(err) => Action::Failed(format!("{err:#}")),
                };
                bar.inc(1);
                bar.set_message(local.asset_id.clone());
                (local.asset_id.clone(), action)
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    let deletes = futures::stream::iter(&gone)
        .map(|asset| {
            let (client, bar) = (&client, &bar);
            async move {
                let action = match client.delete(&document_path(asset)?).await {
                    Ok(answer) => Action::Deleted(job_of(&answer)?),
                    Err(err) => Action::Failed(format!("cannot delete: {err:#}")),
                };
                bar.inc(1);
                anyhow::Ok((asset.clone(), action))
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    let mut actions: Vec<(String, Action)> = uploads.collect().await;
    for deleted in deletes.collect::<Vec<_>>().await {
        actions.push(deleted?);
    }
    bar.finish_and_clear();

    let jobs: Vec<String> = actions
        .iter()
        .filter_map(|(_, action)| match action {
            Action::Sent(job) | Action::Deleted(job) => Some(job.clone()),
            Action::Skipped | Action::Failed(_) => None,
        })
        .collect();
    let (failed_jobs, pending) = if args.no_wait {
        (Vec::new(), 0)
    } else {
        let (_, failed, pending) = follow(&client, &jobs, Duration::from_secs(args.timeout)).await;
        (failed, pending)
    };

    let count = |pick: fn(&Action) -> bool| actions.iter().filter(|(_, a)| pick(a)).count();
    let sent = count(|a| matches!(a, Action::Sent(_)));
    let skipped = count(|a| matches!(a, Action::Skipped));
    let deleted = count(|a| matches!(a, Action::Deleted(_)));
    let failed: Vec<(String, String)> = actions
        .iter()
        .filter_map(|(asset, action)| match action {
            Action::Failed(reason) => Some((asset.clone(), reason.clone())),
            Action::Sent(_) | Action::Skipped | Action::Deleted(_) => None,
        })
        .chain(failed_jobs.into_iter().map(|(job, reason)| {
            let asset = actions
                .iter()
                .find(|(_, a)| matches!(a, Action::Sent(j) | Action::Deleted(j) if *j == job))
                .map_or(job.clone(), |(asset, _)| asset.clone());
            (asset, reason)
        }))
        .collect();
    println!(
        "synced {} as {prefix}*: sent {sent}, skipped {skipped} (unchanged), deleted {deleted}, \
         failed {} in {:.1} s",
        dir.display(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    for (asset, reason) in &failed {
        println!("  failed {asset}: {reason}");
    }
    if pending > 0 {
        println!("  {pending} job(s) still pending after {} s", args.timeout);
    }
    if !failed.is_empty() || pending > 0 {
        anyhow::bail!("the index does not equal the folder yet");
    }
    Ok(())
}

/// Sends `local` unless its document is up to date.
async fn upload(
    client: &Client,
    args: &IngestArgs,
    local: &Local,
    indexed: Option<&Value>,
) -> anyhow::Result<Action> {
    let bytes = tokio::fs::read(&local.path)
        .await
        .with_context(|| format!("cannot read {}", local.path.display()))?;
    let sha256 = sha256_hex(&bytes);
    if let Some(doc) = indexed.filter(|doc| unchanged(doc, args, local, &sha256)) {
        // The same version again would be the same job: a failed one is reported, not resent.
        return Ok(match doc["state"].as_str() {
            Some("failed") => Action::Failed(
                doc["error"]["message"]
                    .as_str()
                    .unwrap_or("failed")
                    .to_owned(),
            ),
            _ => Action::Skipped,
        });
    }
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(name) = local.path.file_name() {
        query.push(("name", name.to_string_lossy().into_owned()));
    }
    if let Some(model) = &args.connection.model {
        query.push(("model", model.clone()));
    }
    if let Some(max) = args.max_tokens {
        query.push(("max_tokens", max.to_string()));
    }
    if let Some(overlap) = args.overlap {
        query.push(("overlap", overlap.to_string()));
    }
    if let Some(metadata) = &args.metadata {
        query.push(("metadata", metadata.to_string()));
    }
    let answer = client
        .put_bytes(
            &document_path(&local.asset_id)?,
            &query,
            local.media_type,
            bytes,
        )
        .await?;
    Ok(Action::Sent(job_of(&answer)?))
}

/// Whether the document's latest version is this file as the sync would send it now.
fn unchanged(doc: &Value, args: &IngestArgs, local: &Local, sha256: &str) -> bool {
    let file = &doc["file"];
    // No metadata is sent as none; a document without any lists none.
    let metadata = Some(&doc["metadata"]).filter(|m| m.as_object().is_some_and(|m| !m.is_empty()));
    let wanted = args
        .metadata
        .as_ref()
        .filter(|m| m.as_object().is_some_and(|m| !m.is_empty()));
    doc["source"] == "file"
        && file["sha256"] == sha256
        && file["format"] == local.format
        && metadata == wanted
        && args
            .connection
            .model
            .as_ref()
            .is_none_or(|model| doc["model"] == model.as_str())
        && args
            .max_tokens
            .is_none_or(|max| file["max_tokens"] == u64::from(max))
        && args
            .overlap
            .is_none_or(|overlap| file["overlap"] == u64::from(overlap))
}

/// The supported files under `dir` (hidden files and directories left out), sorted, as the
/// documents they stand for.
fn walk(dir: &Path, prefix: &str) -> anyhow::Result<Vec<Local>> {
    fn visit(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                visit(&path, files)?;
            } else {
                files.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    visit(dir, &mut files)?;
    files.sort();
    Ok(files
        .into_iter()
        .filter_map(|path| {
            let extension = path.extension()?.to_str()?.to_ascii_lowercase();
            let &(_, format, media_type) = FORMATS.iter().find(|(ext, ..)| *ext == extension)?;
            let relative = path.strip_prefix(dir).ok()?;
            let relative: Vec<_> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            Some(Local {
                asset_id: format!("{prefix}{}", relative.join("/")),
                path,
                format,
                media_type,
            })
        })
        .collect())
}

/// `<folder name>/`.
fn default_prefix(dir: &Path) -> anyhow::Result<String> {
    let absolute = std::fs::canonicalize(dir)?;
    let name = absolute
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !name.is_empty())
        .context("the folder has no name to use as a prefix; pass --prefix")?;
    Ok(format!("{name}/"))
}

/// `/documents/{asset_id}`, the asset id as one path segment (its `/`s encoded).
fn document_path(asset_id: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse("http://h/documents")?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("not a base URL"))?
        .push(asset_id);
    Ok(url.path().to_owned())
}

fn job_of(answer: &Value) -> anyhow::Result<String> {
    answer["job_id"]
        .as_str()
        .map(str::to_owned)
        .context("the answer has no job_id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_ids_are_one_path_segment() {
        assert_eq!(
            document_path("notes/a b.md").unwrap(),
            "/documents/notes%2Fa%20b.md"
        );
    }

    #[test]
    fn the_walk_keeps_supported_visible_files_under_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        for file in [
            "a.PDF",
            "sub/b.docx",
            "sub/c.htm",
            "d.md",
            "e.txt",
            "f.png",
            ".hidden.md",
            ".git/g.txt",
        ] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        let found: Vec<(String, &str)> = walk(root, "docs/")
            .unwrap()
            .into_iter()
            .map(|l| (l.asset_id, l.format))
            .collect();
        assert_eq!(
            found,
            [
                ("docs/a.PDF".to_owned(), "pdf"),
                ("docs/d.md".to_owned(), "markdown"),
                ("docs/e.txt".to_owned(), "text"),
                ("docs/sub/b.docx".to_owned(), "docx"),
                ("docs/sub/c.htm".to_owned(), "html"),
            ]
        );
    }
}
