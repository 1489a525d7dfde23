//! `heimdex bench search`: latency of `POST /vectors/search`, one request at a time (the
//! latency a caller sees, not a throughput test), for text queries in each mode (the service
//! embeds them for the dense and hybrid modes), interleaved, and for vector queries (embedded
//! here beforehand), over the tenant's points.

use std::time::{Duration, Instant};

use uuid::Uuid;

use heimdex_api::auth::JwtConfig;
use heimdex_embed::{Embedder, MiniLm};

use super::{corpus, ms, percentile};

pub async fn run(
    jwt: &JwtConfig,
    url: &str,
    org: Uuid,
    queries: usize,
    limit: usize,
) -> anyhow::Result<()> {
    let token = heimdex_api::auth::issue_token(jwt, org, "bench", Duration::from_secs(3_600))?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    // Short, query-like texts (a different seed from any ingest).
    let texts: Vec<String> = corpus::texts(queries, 99, 12);
    let model = MiniLm::load_default()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vectors = model.embed(&refs)?;
    let endpoint = format!("{url}/vectors/search");

    let count = |body: serde_json::Value| {
        let (http, endpoint, token) = (&http, &endpoint, &token);
        async move {
            let started = Instant::now();
            let response = http
                .post(endpoint)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "search answered {}",
                response.status()
            );
            let answer: serde_json::Value = response.json().await?;
            let hits = answer["results"].as_array().map_or(0, Vec::len);
            Ok::<_, anyhow::Error>((started.elapsed(), hits))
        }
    };
    // Warm-up (connections, caches).
    for text in texts.iter().take(20) {
        count(serde_json::json!({"query": text, "limit": limit})).await?;
    }

    println!("search: org={org} queries={queries} limit={limit} url={url}");
    // Text queries in every mode, interleaved (each query in each mode, the mode order rotating
    // from one query to the next) so that the modes share the machine's good and bad moments.
    const MODES: [&str; 3] = ["dense", "hybrid", "keyword"];
    let mut by_mode: Vec<Vec<Duration>> = vec![Vec::with_capacity(texts.len()); MODES.len()];
    let mut short = [0usize; MODES.len()];
    for (q, text) in texts.iter().enumerate() {
        for k in 0..MODES.len() {
            let m = (q + k) % MODES.len();
            let body = serde_json::json!({"query": text, "limit": limit, "mode": MODES[m]});
            let (latency, hits) = count(body).await?;
            by_mode[m].push(latency);
            if hits < limit {
                short[m] += 1;
            }
        }
    }
    let mut p99 = [Duration::ZERO; MODES.len()];
    for (m, latencies) in by_mode.iter_mut().enumerate() {
        latencies.sort();
        p99[m] = percentile(latencies, 0.99);
        println!(
            "  text query, {} (embedding included): p50 {} p90 {} p99 {} max {} ({} of {} answered fewer than {limit} hits)",
            MODES[m],
            ms(percentile(latencies, 0.50)),
            ms(percentile(latencies, 0.90)),
            ms(p99[m]),
            ms(latencies.last().copied().unwrap_or_default()),
            short[m],
            latencies.len()
        );
    }
    println!(
        "  hybrid p99 / dense p99: {:.2}",
        p99[1].as_secs_f64() / p99[0].as_secs_f64().max(1e-9)
    );

    let mut latencies = Vec::with_capacity(vectors.len());
    let mut empty = 0;
    for vector in &vectors {
        let (latency, hits) = count(serde_json::json!({"vector": vector, "limit": limit})).await?;
        latencies.push(latency);
        if hits < limit {
            empty += 1;
        }
    }
    latencies.sort();
    println!(
        "  vector query (dense): p50 {} p90 {} p99 {} max {} ({} of {} answered fewer than {limit} hits)",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        empty,
        latencies.len()
    );
    Ok(())
}
