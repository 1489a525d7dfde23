//! `heimdex bench ingest`: posts N mock jobs with concurrency C over HTTP to a running service and
//! reports accepted/s, completed/s (SUCCEEDED visible in the status bucket that `GET /jobs`
//! reads) and POST latency percentiles, then the end-to-end latency of single jobs on an idle
//! service. It measures through the public API only; NATS is used just to watch completions
//! (at the URL `/readyz` reports) instead of polling every job.

use std::time::{Duration, Instant};

use futures::StreamExt;
use uuid::Uuid;

use heimdex_api::auth::JwtConfig;

use super::{await_completions, ms, percentile, send_honouring_retry_after, watch_completions};

pub async fn ingest(
    jwt: &JwtConfig,
    url: &str,
    n: usize,
    concurrency: usize,
    single: usize,
    nats_url: Option<String>,
) -> anyhow::Result<()> {
    let org = Uuid::new_v4();
    let token = heimdex_api::auth::issue_token(jwt, org, "bench", Duration::from_secs(3600))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()?;

    let (nats_url, mut done_rx, watcher) = watch_completions(&http, url, nats_url, org).await?;

    let run_id = Uuid::new_v4().simple().to_string();
    let endpoint = format!("{url}/vectors/mock");
    println!("ingest: n={n} concurrency={concurrency} url={url} nats={nats_url}");
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
