//! `heimdex bench …`: measurement harnesses that print figures (recorded in
//! `docs/BENCHMARKS.md`). `ingest`, `ingest-text`, `search` and `quality` drive a running
//! service over its public API; `embed` times the embedder alone; `corpus` writes the shared
//! test texts so that `bench/embedder.sh` can time sentence-transformers on exactly the same
//! input.

mod bound;
mod corpus;
mod embed;
mod lengths;
mod list;
mod mock;
pub mod quality;
mod scale;
mod search;
mod text_ingest;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Subcommand;
use futures::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::settings::Settings;
use heimdex_domain::jobs::{JobStatus, Status};
use heimdex_event_store::jetstream::STATUS_BUCKET;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Post N mock jobs with concurrency C and measure acceptance, completion and latency.
    Ingest {
        /// Base URL of the API.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// Jobs to post.
        #[arg(long, short, default_value_t = 20_000)]
        n: usize,
        /// Requests in flight.
        #[arg(long, short, default_value_t = 32)]
        concurrency: usize,
        /// Sequential single jobs timed end to end after the ingest phase.
        #[arg(long, default_value_t = 200)]
        single: usize,
        /// NATS URL to watch completions on (default: what /readyz reports).
        #[arg(long)]
        nats_url: Option<String>,
        /// Skip the broker's bound (the same jobs' JetStream operations alone, on a scratch
        /// nats-server started for it) and the efficiency against it.
        #[arg(long)]
        no_bound: bool,
    },
    /// Write N synthetic texts (JSON lines `{"text": …}`), deterministic for a seed.
    Corpus {
        #[arg(long, short, default_value_t = 2_000)]
        n: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Time the MiniLM embedder alone on a file of texts; prints one JSON line. With
    /// `--queries N`, the latency of one short text per call instead (the texts `bench search`
    /// sends), as p50/p90/p99.
    Embed {
        /// JSON lines `{"text": …}` (or plain lines).
        #[arg(long, required_unless_present = "queries")]
        texts: Option<PathBuf>,
        /// Embed N short query texts (5-12 words) one per call and report latency percentiles.
        #[arg(long, conflicts_with = "texts")]
        queries: Option<usize>,
        /// Timed runs over all texts (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// The model: `minilm-l6-v2` or `paraphrase-minilm-l3-v2`.
        #[arg(long, default_value = "minilm-l6-v2")]
        model: String,
        /// Model directory (default: HEIMDEX_MODEL_DIR or .tools/models/all-minilm-l6-v2, and
        /// the directory beside it for paraphrase-minilm-l3-v2).
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// The embedder's thread budget (default: every core the process may use).
        #[arg(long)]
        threads: Option<std::num::NonZeroUsize>,
    },
    /// Ingest N texts through POST /vectors/embed/batch and time them to SUCCEEDED.
    IngestText {
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// Texts to ingest (synthetic, see `corpus`).
        #[arg(long, short, default_value_t = 5_000)]
        n: usize,
        /// Segments per batch call.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Batch calls in flight.
        #[arg(long, short, default_value_t = 4)]
        concurrency: usize,
        /// Tenant to ingest into (default: a new one); `bench search` can then query it.
        #[arg(long)]
        org: Option<uuid::Uuid>,
        /// Corpus seed (different seeds give different texts).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Longest text in words (texts have 5 to this many).
        #[arg(long, default_value_t = corpus::MAX_WORDS)]
        max_words: usize,
        #[arg(long)]
        nats_url: Option<String>,
    },
    /// What a page of `GET /jobs?limit=10` costs at two organization sizes, in one run (all
    /// statuses and `status=FAILED`; first page and a page halfway through), and a job's
    /// history against its status, for the oldest job in the log and the newest.
    List {
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// NATS URL to append the seeded jobs to (default: what /readyz reports).
        #[arg(long)]
        nats_url: Option<String>,
        /// Jobs of the small organization.
        #[arg(long, default_value_t = 1_000)]
        small: usize,
        /// Jobs of the large organization.
        #[arg(long, default_value_t = 100_000)]
        large: usize,
        /// One job in this many fails (the dead letters).
        #[arg(long, default_value_t = 50)]
        failed_every: usize,
        /// Timed requests per listing and page.
        #[arg(long, default_value_t = 200)]
        requests: usize,
    },
    /// Search latency, one request at a time: text queries (embedding included) in each mode,
    /// interleaved, and vector queries, over the tenant's points.
    Search {
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// The tenant whose points are searched (as ingested by `ingest-text --org`).
        #[arg(long)]
        org: uuid::Uuid,
        /// Queries of each kind.
        #[arg(long, default_value_t = 500)]
        queries: usize,
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// One collection grown to each size and measured there: load time, index build time,
    /// memory, disk, and searches at each number of concurrent connections. Starts its own
    /// `serve` on a fresh data directory (docs/BENCHMARKS.md, "Scale").
    Scale(scale::Options),
    /// Chunk lengths as BM25 counts them, for text files cut as `POST /vectors/documents`
    /// cuts them: the measurement behind BM25's `avg_len`.
    Lengths {
        /// Text files (each one document).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Retrieval quality on a test collection in SMART format (e.g. CACM, `shared/eval/cacm` beside
    /// the repository):
    /// ingests it through the API, runs every query in every mode, prints nDCG@10, Recall@100
    /// and MRR@10 per mode.
    Quality {
        /// The collection's directory (documents `*.all`, queries `query.text`, judgements
        /// `qrels.text`).
        dir: PathBuf,
        /// The documents file, if not found by name.
        #[arg(long)]
        docs: Option<PathBuf>,
        /// The queries file, if not found by name.
        #[arg(long)]
        queries: Option<PathBuf>,
        /// The relevance judgements, if not found by name.
        #[arg(long)]
        qrels: Option<PathBuf>,
        #[arg(long, env = "HEIMDEX_URL", default_value = "http://127.0.0.1:8000")]
        url: String,
        /// Bearer token; without one, a token for `--org` is signed with `JWT_SECRET`.
        #[arg(long, env = "HEIMDEX_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Tenant to ingest into and search (default: a new one).
        #[arg(long)]
        org: Option<uuid::Uuid>,
        /// Model (default: the service's default).
        #[arg(long)]
        model: Option<String>,
        /// Do not ingest: `--org` already holds the collection from an earlier run.
        #[arg(long, requires = "org")]
        skip_ingest: bool,
        /// Requests in flight.
        #[arg(long, short, default_value_t = 8)]
        concurrency: usize,
    },
}

pub async fn run(command: BenchCommand, settings: &Settings) -> anyhow::Result<()> {
    let jwt = &settings.api.jwt;
    match command {
        BenchCommand::Lengths { files } => lengths::run(&files),
        BenchCommand::Quality {
            dir,
            docs,
            queries,
            qrels,
            url,
            token,
            org,
            model,
            skip_ingest,
            concurrency,
        } => {
            quality::run(
                quality::Options {
                    dir,
                    docs,
                    queries,
                    qrels,
                    connection: crate::client::Connection {
                        url,
                        token,
                        org: org.unwrap_or_else(Uuid::new_v4),
                        model,
                    },
                    skip_ingest,
                    concurrency,
                },
                jwt,
            )
            .await
        }
        BenchCommand::Ingest {
            url,
            n,
            concurrency,
            single,
            nats_url,
            no_bound,
        } => {
            let options = mock::Options {
                n,
                concurrency: concurrency.max(1),
                single,
                nats_url,
                bound: !no_bound,
            };
            mock::ingest(settings, &url, options).await
        }
        BenchCommand::Corpus { n, seed, out } => corpus::write(&out, n, seed),
        BenchCommand::Embed {
            texts,
            queries,
            repeat,
            model,
            model_dir,
            threads,
        } => {
            let load = embed::Load {
                model,
                model_dir,
                threads,
            };
            match (texts, queries) {
                (_, Some(queries)) => embed::queries(queries.max(1), repeat.max(1), load),
                (Some(texts), None) => embed::run(&texts, repeat.max(1), load),
                (None, None) => anyhow::bail!("give --texts or --queries"),
            }
        }
        BenchCommand::IngestText {
            url,
            n,
            batch,
            concurrency,
            org,
            seed,
            max_words,
            nats_url,
        } => {
            text_ingest::run(
                jwt,
                text_ingest::Options {
                    url,
                    n,
                    batch: batch.clamp(1, 1_000),
                    concurrency: concurrency.max(1),
                    org,
                    seed,
                    max_words,
                    nats_url,
                },
            )
            .await
        }
        BenchCommand::List {
            url,
            nats_url,
            small,
            large,
            failed_every,
            requests,
        } => {
            list::run(
                jwt,
                list::Options {
                    url,
                    nats_url,
                    small,
                    large,
                    failed_every,
                    requests: requests.max(1),
                },
            )
            .await
        }
        BenchCommand::Scale(options) => scale::run(jwt, options, &settings.store.collection).await,
        BenchCommand::Search {
            url,
            org,
            queries,
            limit,
        } => search::run(jwt, &url, org, queries.max(1), limit).await,
    }
}

pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The median of a few timings.
pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// The NATS URL a running service reports in `/readyz`.
pub(crate) async fn nats_url_of(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let ready: serde_json::Value = http
        .get(format!("{url}/readyz"))
        .send()
        .await?
        .json()
        .await?;
    Ok(ready["deps"]["nats"]["url"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("/readyz does not report deps.nats.url; pass --nats-url"))?
        .to_owned())
}

/// The SIMD flags of this machine's CPU that decide its speed here (printed with every figure,
/// since machines of the same kind differ: AVX-512 on one, AVX2 only on the next).
pub(crate) fn cpu_flags() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']))
        .unwrap_or_default()
        .split_whitespace()
        .filter(|f| {
            [
                "avx2",
                "fma",
                "avx512f",
                "avx512bw",
                "avx512_vnni",
                "avx512vl",
            ]
            .contains(f)
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!("{model}, {cores} cores, {}", flags.join(" "))
}

/// Waits until the vector store's optimizers (the HNSW builds that follow a load) have been
/// idle for two scrapes of the service's `/metrics` in a row; returns how long that took.
/// Timings taken before then share the cores with a build.
pub(crate) async fn index_settled(http: &reqwest::Client, url: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut idle = 0;
    loop {
        let text = scrape_metrics(http, url).await?;
        let running = samples(&text, "heimdex_vector_store_optimizing")
            .iter()
            .any(|v| *v > 0.0);
        idle = if running { 0 } else { idle + 1 };
        if idle == 2 {
            return Ok(started.elapsed().saturating_sub(Duration::from_secs(1)));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The service's `GET /metrics`: its Prometheus text exposition.
pub(crate) async fn scrape_metrics(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The values of every sample of `name` in a Prometheus text exposition.
pub(crate) fn samples(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// Watches the status bucket for `org`'s jobs (at `nats_url`, or the NATS URL `/readyz`
/// reports) and sends the instant each is first seen SUCCEEDED; FAILED jobs are printed.
pub(crate) async fn watch_completions(
    http: &reqwest::Client,
    url: &str,
    nats_url: Option<String>,
    org: Uuid,
) -> anyhow::Result<(
    String,
    mpsc::UnboundedReceiver<(Uuid, Instant)>,
    tokio::task::JoinHandle<()>,
)> {
    let nats_url = match nats_url {
        Some(url) => url,
        None => nats_url_of(http, url).await?,
    };
    let (done_rx, watcher) = watch_bucket(&nats_url, org).await?;
    Ok((nats_url, done_rx, watcher))
}

/// [`watch_completions`] on the status bucket of the NATS server at `nats_url`.
pub(crate) async fn watch_bucket(
    nats_url: &str,
    org: Uuid,
) -> anyhow::Result<(
    mpsc::UnboundedReceiver<(Uuid, Instant)>,
    tokio::task::JoinHandle<()>,
)> {
    let client = async_nats::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let bucket = js.get_key_value(STATUS_BUCKET).await?;
    let (done_tx, done_rx) = mpsc::unbounded_channel::<(Uuid, Instant)>();
    let mut watch = bucket.watch(format!("{org}.>")).await?;
    let watcher = tokio::spawn(async move {
        let mut seen = HashSet::new();
        while let Some(Ok(entry)) = watch.next().await {
            let Ok(status) = serde_json::from_slice::<JobStatus>(&entry.value) else {
                continue;
            };
            if status.status == Status::Succeeded && seen.insert(status.job_id) {
                if done_tx.send((status.job_id, Instant::now())).is_err() {
                    break;
                }
            } else if status.status == Status::Failed {
                eprintln!("job {} FAILED: {:?}", status.job_id, status.error);
            }
        }
    });
    Ok((done_rx, watcher))
}

/// Counts completions from [`watch_completions`] until `expected` arrived or `timeout` passed;
/// returns how many and when the last one was seen (`started` if none).
pub(crate) async fn await_completions(
    done_rx: &mut mpsc::UnboundedReceiver<(Uuid, Instant)>,
    expected: usize,
    started: Instant,
    timeout: Duration,
) -> (usize, Instant) {
    let deadline = Instant::now() + timeout;
    let (mut completed, mut last) = (0, started);
    while completed < expected {
        match tokio::time::timeout_at(deadline.into(), done_rx.recv()).await {
            Ok(Some((_, at))) => {
                completed += 1;
                last = at;
            }
            Ok(None) | Err(_) => break,
        }
    }
    (completed, last)
}

/// Most times one request is retried after 429 or 503 before the bench counts it as refused.
const MAX_OVERLOAD_RETRIES: u32 = 20;

/// Sends a request, honouring overload answers the way a well-behaved client should: on 429
/// (rate limit) or 503 (backlog full, NATS away) with `Retry-After`, it waits that long and sends
/// it again. Returns the final answer and how many times it was told to wait.
pub(crate) async fn send_honouring_retry_after(
    request: impl Fn() -> reqwest::RequestBuilder,
) -> (reqwest::Result<reqwest::Response>, u32) {
    let mut waits = 0;
    loop {
        let response = request().send().await;
        let retry_after = match &response {
            Ok(r)
                if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE =>
            {
                r.headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
            }
            _ => None,
        };
        match retry_after {
            Some(secs) if waits < MAX_OVERLOAD_RETRIES => {
                waits += 1;
                tokio::time::sleep(Duration::from_secs(secs.clamp(1, 30))).await;
            }
            _ => return (response, waits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_by_exact_name() {
        let text = "# TYPE heimdex_vector_store_points gauge\n\
                    heimdex_vector_store_points{collection=\"a\"} 10\n\
                    heimdex_vector_store_points{collection=\"b\"} 5\n\
                    heimdex_vector_store_points_other 7\n\
                    heimdex_vector_store_optimize_duration_seconds_count{collection=\"a\"} 3\n";
        assert_eq!(
            samples(text, "heimdex_vector_store_points"),
            vec![10.0, 5.0]
        );
        assert_eq!(
            samples(text, "heimdex_vector_store_optimize_duration_seconds_count"),
            vec![3.0]
        );
        assert!(samples(text, "heimdex_vector_store_indexed_vectors").is_empty());
    }
}
