//! `heimdex bench ingest`: posts N mock jobs with concurrency C over HTTP to a running service and
//! reports accepted/s, completed/s (SUCCEEDED visible in the status bucket that `GET /jobs`
//! reads) and POST latency percentiles, then the end-to-end latency of single jobs on an idle
//! service. It measures through the public API only; NATS is used just to watch completions
//! (at the URL `/readyz` reports) instead of polling every job.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clap::Subcommand;
use futures::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use heimdex_core::Settings;
use heimdex_core::jetstream::STATUS_BUCKET;
use heimdex_core::jobs::{JobStatus, Status};

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
    },
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ingest {
            url,
            n,
            concurrency,
            single,
            nats_url,
        } => ingest(&url, n, concurrency.max(1), single, nats_url).await,
    }
}

async fn ingest(
    url: &str,
    n: usize,
    concurrency: usize,
    single: usize,
    nats_url: Option<String>,
) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let org = Uuid::new_v4();
    let token =
        heimdex_core::auth::issue_token(&settings.jwt, org, "bench", Duration::from_secs(3600))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()?;

    let nats_url = match nats_url {
        Some(url) => url,
        None => {
            let ready: serde_json::Value = http
                .get(format!("{url}/readyz"))
                .send()
                .await?
                .json()
                .await?;
            ready["deps"]["nats"]["url"]
                .as_str()
                .ok_or_else(|| {
                    anyhow::anyhow!("/readyz does not report deps.nats.url; pass --nats-url")
                })?
                .to_owned()
        }
    };
    let client = async_nats::connect(&nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let bucket = js.get_key_value(STATUS_BUCKET).await?;

    // Completion watcher: sends the instant each job of this org is first seen SUCCEEDED.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Uuid, Instant)>();
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

    let run_id = Uuid::new_v4().simple().to_string();
    let endpoint = format!("{url}/vectors/mock");
    println!("ingest: n={n} concurrency={concurrency} url={url} nats={nats_url}");
    let started = Instant::now();
    let posts = futures::stream::iter(0..n)
        .map(|i| {
            let (http, endpoint, token, run_id) = (&http, &endpoint, &token, &run_id);
            async move {
                let sent = Instant::now();
                let response = http
                    .post(endpoint)
                    .bearer_auth(token)
                    .json(&serde_json::json!({"asset_id": format!("bench-{run_id}"), "segment_id": format!("seg-{i}")}))
                    .send()
                    .await;
                let ok = matches!(&response, Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED);
                (sent.elapsed(), ok)
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let accepted_in = started.elapsed();
    let accepted = posts.iter().filter(|(_, ok)| *ok).count();
    let mut latencies: Vec<Duration> = posts.iter().map(|(latency, _)| *latency).collect();
    latencies.sort();

    let mut completed = 0usize;
    let mut last = started;
    let deadline = Instant::now() + Duration::from_secs(300);
    while completed < accepted {
        match tokio::time::timeout_at(deadline.into(), done_rx.recv()).await {
            Ok(Some((_, at))) => {
                completed += 1;
                last = at;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let completed_in = last.duration_since(started);

    println!(
        "  accepted:  {accepted}/{n} in {:.2} s -> {:.0} jobs/s ({} errors)",
        accepted_in.as_secs_f64(),
        accepted as f64 / accepted_in.as_secs_f64(),
        n - accepted
    );
    println!(
        "  completed: {completed}/{accepted} SUCCEEDED in {:.2} s -> {:.0} jobs/s",
        completed_in.as_secs_f64(),
        completed as f64 / completed_in.as_secs_f64()
    );
    println!(
        "  POST latency: p50 {} p90 {} p99 {} max {}",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );

    if single > 0 {
        // Let the ingest backlog drain before timing single jobs.
        tokio::time::sleep(Duration::from_millis(500)).await;
        while done_rx.try_recv().is_ok() {}
        let mut e2e = Vec::with_capacity(single);
        for i in 0..single {
            let sent = Instant::now();
            let response = http
                .post(&endpoint)
                .bearer_auth(&token)
                .json(&serde_json::json!({"asset_id": format!("single-{run_id}"), "segment_id": format!("seg-{i}")}))
                .send()
                .await?;
            anyhow::ensure!(
                response.status() == reqwest::StatusCode::ACCEPTED,
                "POST answered {}",
                response.status()
            );
            let job_id: Uuid = response.json::<serde_json::Value>().await?["job_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("no job_id"))?;
            loop {
                let (done, at) = tokio::time::timeout(Duration::from_secs(30), done_rx.recv())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("watcher ended"))?;
                if done == job_id {
                    e2e.push(at.duration_since(sent));
                    break;
                }
            }
        }
        e2e.sort();
        println!(
            "  single job end to end (POST -> SUCCEEDED visible), n={single}: p50 {} p90 {} p99 {}",
            ms(percentile(&e2e, 0.50)),
            ms(percentile(&e2e, 0.90)),
            ms(percentile(&e2e, 0.99))
        );
    }
    watcher.abort();
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
