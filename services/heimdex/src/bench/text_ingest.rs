//! `heimdex bench ingest-text`: N synthetic texts through `POST /vectors/embed/batch` with the
//! default model, timed from the first POST to the last job seen SUCCEEDED — the end-to-end
//! ingest rate to set against the embedder's raw rate (`bench embed`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use uuid::Uuid;

use heimdex_api::auth::JwtConfig;

use super::{
    await_completions, corpus, ms, percentile, send_honouring_retry_after, watch_completions,
};

pub struct Options {
    pub url: String,
    pub n: usize,
    pub batch: usize,
    pub concurrency: usize,
    pub org: Option<Uuid>,
    pub seed: u64,
    pub max_words: usize,
    pub nats_url: Option<String>,
}

pub async fn run(jwt: &JwtConfig, o: Options) -> anyhow::Result<()> {
    let org = o.org.unwrap_or_else(Uuid::new_v4);
    let token = heimdex_api::auth::issue_token(jwt, org, "bench", Duration::from_secs(86_400))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let (nats_url, mut done_rx, watcher) =
        watch_completions(&http, &o.url, o.nats_url.clone(), org).await?;

    let texts = corpus::texts(o.n, o.seed, o.max_words);
    let run_id = Uuid::new_v4().simple().to_string();
    let endpoint = format!("{}/vectors/embed/batch", o.url);
    println!(
        "ingest-text: n={} batch={} concurrency={} org={org} url={} nats={nats_url}",
        o.n, o.batch, o.concurrency, o.url
    );
    let batches: Vec<(usize, &[String])> = texts.chunks(o.batch).enumerate().collect();
    let started = Instant::now();
    let posts = futures::stream::iter(batches)
        .map(|(b, chunk)| {
            let (http, endpoint, token, run_id) = (&http, &endpoint, &token, &run_id);
            let segments: Vec<serde_json::Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, text)| serde_json::json!({"segment_id": format!("s-{b}-{i}"), "text": text}))
                .collect();
            async move {
                let sent = Instant::now();
                let body = serde_json::json!({"asset_id": format!("bench-{run_id}-{b}"), "segments": segments});
                let (response, _waits) = send_honouring_retry_after(|| {
                    http.post(endpoint).bearer_auth(token).json(&body)
                })
                .await;
                let ok = matches!(&response, Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED);
                if !ok {
                    eprintln!("batch {b} refused: {:?}", response.map(|r| r.status()));
                }
                (sent.elapsed(), if ok { segments.len() } else { 0 })
            }
        })
        .buffer_unordered(o.concurrency)
        .collect::<Vec<_>>()
        .await;
    let accepted_in = started.elapsed();
    let accepted: usize = posts.iter().map(|(_, n)| n).sum();
    let mut latencies: Vec<Duration> = posts.iter().map(|(l, _)| *l).collect();
    latencies.sort();

    let (completed, last) =
        await_completions(&mut done_rx, accepted, started, Duration::from_secs(3_600)).await;
    watcher.abort();
    let completed_in = last.duration_since(started).as_secs_f64();
    println!(
        "  accepted:  {accepted}/{} texts in {:.2} s ({} batch calls, call p50 {} p99 {})",
        o.n,
        accepted_in.as_secs_f64(),
        posts.len(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
    );
    println!(
        "  completed: {completed}/{accepted} SUCCEEDED in {completed_in:.2} s -> {:.1} texts/s end to end",
        completed as f64 / completed_in
    );
    anyhow::ensure!(completed == accepted, "not every job completed");
    Ok(())
}
