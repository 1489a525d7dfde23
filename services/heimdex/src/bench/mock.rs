//! `heimdex bench ingest`: posts N mock jobs with concurrency C over HTTP to a running service and
//! reports accepted/s, completed/s (SUCCEEDED visible in the status bucket that `GET /jobs`
//! reads) and POST latency percentiles, then the end-to-end latency of single jobs on an idle
//! service: once the backlog has drained and the vector index of what the ingest wrote is built.
//! It measures through the public API only; NATS is used just to watch completions (at the URL
//! `/readyz` reports) instead of polling every job, and to count what the projector wrote per
//! job.
//!
//! Then, unless told not to, it measures the broker's bound for the same N and C
//! ([`super::bound`]), once the service's index build has ended too, and prints the efficiency:
//! completed/s of the service ÷ completed/s of the broker doing the same JetStream operations
//! alone.

use std::time::{Duration, Instant};

use futures::StreamExt;
use uuid::Uuid;

use super::bound::{self, Writes};
use super::{
    await_completions, cpu_flags, ms, percentile, send_honouring_retry_after, watch_completions,
};
use crate::settings::Settings;

pub struct Options {
    /// Jobs to post.
    pub n: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Single jobs timed end to end after the ingest.
    pub single: usize,
    pub nats_url: Option<String>,
    /// Whether to measure the broker's bound too.
    pub bound: bool,
}

pub async fn ingest(settings: &Settings, url: &str, o: Options) -> anyhow::Result<()> {
    let Options {
        n,
        concurrency,
        single,
        nats_url,
        bound,
    } = o;
    let org = Uuid::new_v4();
    let token =
        heimdex_api::auth::issue_token(&settings.api.jwt, org, "bench", Duration::from_secs(3600))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()?;

    let (nats_url, mut done_rx, watcher) = watch_completions(&http, url, nats_url, org).await?;

    let run_id = Uuid::new_v4().simple().to_string();
    let endpoint = format!("{url}/vectors/mock");
    println!("ingest: n={n} concurrency={concurrency} url={url} nats={nats_url}");
    println!("cpu: {}", cpu_flags());
    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await?);
    // A service of another release may lack the listing stream: then the count is left out.
    let writes_before = Writes::read(&js).await.ok();
    let started = Instant::now();
    let posts = futures::stream::iter(0..n)
        .map(|i| {
            let (http, endpoint, token, run_id) = (&http, &endpoint, &token, &run_id);
            async move {
                let sent = Instant::now();
                let body = serde_json::json!({"asset_id": format!("bench-{run_id}"), "segment_id": format!("seg-{i}")});
                let (response, waits) = send_honouring_retry_after(|| {
                    http.post(endpoint).bearer_auth(token).json(&body)
                })
                .await;
                let ok = matches!(&response, Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED);
                (sent.elapsed(), ok, waits)
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let accepted_in = started.elapsed();
    let accepted = posts.iter().filter(|(_, ok, _)| *ok).count();
    let waits: u32 = posts.iter().map(|(_, _, waits)| waits).sum();
    let mut latencies: Vec<Duration> = posts.iter().map(|(latency, _, _)| *latency).collect();
    latencies.sort();

    let (completed, last) =
        await_completions(&mut done_rx, accepted, started, Duration::from_secs(300)).await;
    let completed_in = last.duration_since(started);
    let writes = match (writes_before, Writes::read(&js).await) {
        (Some(before), Ok(after)) => Some(after.since(&before)),
        _ => None,
    };

    println!(
        "  accepted:  {accepted}/{n} in {:.2} s -> {:.0} jobs/s ({} errors, {waits} waits on 429/503 Retry-After)",
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
    if let Some(writes) = writes {
        println!(
            "  projector wrote per job (every writer's, meanwhile): {:.2} status writes, \
             {:.2} listing appends",
            writes.status as f64 / completed.max(1) as f64,
            writes.appended as f64 / completed.max(1) as f64,
        );
    }

    if single > 0 {
        // Let the ingest backlog drain, and the vector index of what it wrote be built, before
        // timing single jobs on an idle service.
        tokio::time::sleep(Duration::from_millis(500)).await;
        settle_index(&http, url).await?;
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

    if bound {
        let completed_per_s = completed as f64 / completed_in.as_secs_f64();
        // The broker alone: not beside the service's index build.
        settle_index(&http, url).await?;
        let bound = bound::measure(settings, n, concurrency).await?;
        println!("  bound operations per job: {}", bound.ops.per_job());
        println!(
            "  efficiency: {completed_per_s:.0} / {:.0} = {:.2} (service completed/s ÷ bound completed/s)",
            bound.completed_per_s,
            completed_per_s / bound.completed_per_s
        );
    }
    Ok(())
}

/// Waits until the service's vector store has indexed what the ingest wrote (the optimizer that
/// builds the HNSW index runs beside the writes; `heimdex_vector_store_optimizing`), and says
/// how long that took when it was not at once.
async fn settle_index(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let waited = match super::index_settled(http, url).await {
        Ok(waited) => waited,
        // A service without `/metrics` (a release before it, run for an A/B) reports no build.
        Err(err)
            if err
                .downcast_ref::<reqwest::Error>()
                .and_then(reqwest::Error::status)
                == Some(reqwest::StatusCode::NOT_FOUND) =>
        {
            println!("  (the service has no /metrics: an index build, if any, is not waited for)");
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    if waited >= Duration::from_millis(500) {
        println!(
            "  (waited {:.1} s for the vector index build to end)",
            waited.as_secs_f64()
        );
    }
    Ok(())
}
