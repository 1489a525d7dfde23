//! `heimdex bench search`: latency of `POST /vectors/search`, one request at a time (the
//! latency a caller sees, not a throughput test), for text queries (the service embeds them)
//! and for vector queries (embedded here beforehand), over the tenant's points.

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
    for (kind, bodies) in [
        (
            "text query (embedding included)",
            texts
                .iter()
                .map(|t| serde_json::json!({"query": t, "limit": limit}))
                .collect::<Vec<_>>(),
        ),
        (
            "vector query",
            vectors
                .iter()
                .map(|v| serde_json::json!({"vector": v, "limit": limit}))
                .collect(),
        ),
    ] {
        let mut latencies = Vec::with_capacity(bodies.len());
        let mut empty = 0;
        for body in bodies {
            let (latency, hits) = count(body).await?;
            latencies.push(latency);
            if hits < limit {
                empty += 1;
            }
        }
        latencies.sort();
        println!(
            "  {kind}: p50 {} p90 {} p99 {} max {} ({} of {} answered fewer than {limit} hits)",
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.90)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default()),
            empty,
            latencies.len()
        );
    }
    Ok(())
}
