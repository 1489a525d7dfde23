//! `heimdex bench list`: what a page of `GET /jobs` costs as an organization grows. Two orgs are
//! seeded in the same run, a small one and a large one, with the same share of failed jobs; then
//! `GET /jobs?limit=10` is timed for both, on the first page and on a page deep in the listing,
//! for every status and for the dead letters (`status=FAILED`). The figure that matters is the
//! ratio large / small, measured in one window.
//!
//! Then a job's history, `GET /jobs/{id}/events`, is timed against its status, `GET /jobs/{id}`
//! (one read of the status bucket), for the small org's first job, the oldest in the log (every
//! job of the large org was appended after it), and for the large org's last, the newest: a
//! history of a few events should cost about what the status costs, wherever the job sits.
//!
//! The jobs are appended to the job log directly (as the API would append them, without HTTP),
//! so seeding 100,000 jobs takes seconds; the service's worker and projector process them as
//! usual. A failed job is a `requested` embedding job naming a model no worker serves: it fails
//! on its first attempt with `invalid_input`.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use uuid::Uuid;

use heimdex_api::auth::JwtConfig;
use heimdex_domain::events::{EventData, JobEvent, Requested};
use heimdex_domain::ids;
use heimdex_domain::jobs::{EmbedParams, JobSpec, MockParams};
use heimdex_domain::{AssetId, SegmentId};
use heimdex_event_store::jetstream::{PROJECTOR_CONSUMER, WORKER_CONSUMER};
use heimdex_event_store::{EventStore, NatsConfig};
use tokio_util::sync::CancellationToken;

use super::{ms, percentile};

pub struct Options {
    pub url: String,
    pub nats_url: Option<String>,
    pub small: usize,
    pub large: usize,
    /// One job in this many fails.
    pub failed_every: usize,
    /// Timed requests per listing and page.
    pub requests: usize,
}

pub async fn run(jwt: &JwtConfig, o: Options) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let nats_url = match o.nats_url.clone() {
        Some(url) => url,
        None => super::nats_url_of(&http, &o.url).await?,
    };
    let events = EventStore::connect(
        &NatsConfig::new(Some(nats_url.clone())),
        &nats_url,
        "heimdex-bench-list",
        &CancellationToken::new(),
    )
    .await?;
    println!("cpu: {}", super::cpu_flags());
    let (small, large) = (Uuid::new_v4(), Uuid::new_v4());
    let mut seeded = Vec::new();
    for (org, n) in [(small, o.small), (large, o.large)] {
        let started = Instant::now();
        seeded.push(seed(&events, org, n, o.failed_every).await?);
        println!(
            "seeded org {org}: {n} jobs ({} failing) in {:.1} s",
            n / o.failed_every.max(1),
            started.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    settle(&events).await?;
    println!(
        "worker and projector caught up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let build = super::index_settled(&http, &o.url).await?;
    println!(
        "vector index built {:.1} s later (pages are timed after it)",
        build.as_secs_f64()
    );

    println!(
        "| listing | page | {} jobs p50 | p99 | {} jobs p50 | p99 | ratio (p50) |",
        o.small, o.large
    );
    println!("|---|---|---|---|---|---|---|");
    for status in [None, Some("FAILED")] {
        let tokens = [small, large].map(|org| {
            heimdex_api::auth::issue_token(jwt, org, "bench", Duration::from_secs(3_600))
        });
        let [Ok(small_token), Ok(large_token)] = tokens else {
            anyhow::bail!("cannot sign a token");
        };
        for deep in [false, true] {
            let mut p50s = Vec::new();
            let mut row = Vec::new();
            for (token, jobs) in [(&small_token, o.small), (&large_token, o.large)] {
                let listed = match status {
                    None => jobs,
                    Some(_) => jobs / o.failed_every.max(1),
                };
                let cursor = if deep {
                    let cursor = middle_cursor(&http, &o.url, token, status, listed).await?;
                    Some(cursor.context("the listing has a single page: no middle to time")?)
                } else {
                    None
                };
                let timings =
                    time_page(&http, &o.url, token, status, cursor.as_deref(), o.requests).await?;
                p50s.push(percentile(&timings, 0.5).as_secs_f64());
                row.push(format!(
                    "{} | {}",
                    ms(percentile(&timings, 0.5)),
                    ms(percentile(&timings, 0.99))
                ));
            }
            println!(
                "| {} | {} | {} | {:.2} |",
                status.map_or("all".to_owned(), |s| format!("status={s}")),
                if deep { "middle" } else { "first" },
                row.join(" | "),
                p50s[1] / p50s[0].max(f64::EPSILON)
            );
        }
    }

    let oldest = seeded[0].first().context("the small org has no job")?;
    let newest = seeded[1].last().context("the large org has no job")?;
    println!();
    println!(
        "| job | `GET /jobs/{{id}}` p50 | p99 | `GET /jobs/{{id}}/events` p50 | p99 | events ÷ status (p50) |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, org, job) in [("oldest", small, oldest), ("newest", large, newest)] {
        let token = heimdex_api::auth::issue_token(jwt, org, "bench", Duration::from_secs(3_600))?;
        let status = format!("{}/jobs/{job}", o.url);
        let status = time_read(&http, &status, &token, o.requests, |job| {
            anyhow::ensure!(job["status"].is_string(), "a job without a status: {job}");
            Ok(())
        })
        .await?;
        let events = format!("{}/jobs/{job}/events", o.url);
        let events = time_read(&http, &events, &token, o.requests, |history| {
            // `requested`, `started`, and the end: the job ran before the timing began.
            let events = history["events"].as_array().map_or(0, Vec::len);
            anyhow::ensure!(events >= 3, "a history of {events} events: {history}");
            Ok(())
        })
        .await?;
        let (status_p50, events_p50) = (percentile(&status, 0.5), percentile(&events, 0.5));
        println!(
            "| {name} | {} | {} | {} | {} | {:.2} |",
            ms(status_p50),
            ms(percentile(&status, 0.99)),
            ms(events_p50),
            ms(percentile(&events, 0.99)),
            events_p50.as_secs_f64() / status_p50.as_secs_f64().max(f64::EPSILON)
        );
    }
    Ok(())
}

/// `requests` timings of a GET of `url`, one request at a time; `check` vets each answer.
async fn time_read(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    requests: usize,
    check: impl Fn(&serde_json::Value) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    let mut timings = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let body = get_json(http, url, token).await?;
        timings.push(started.elapsed());
        check(&body)?;
    }
    timings.sort();
    Ok(timings)
}

/// `GET url` with the token; the answer must be a 2xx with a JSON body.
async fn get_json(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> anyhow::Result<serde_json::Value> {
    Ok(http
        .get(url)
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Appends `n` jobs of `org`: mock jobs, and every `failed_every`-th one a job that fails.
/// Returns their ids, in the order they were asked for (appends overlap, 512 at a time).
async fn seed(
    events: &EventStore,
    org: Uuid,
    n: usize,
    failed_every: usize,
) -> anyhow::Result<Vec<Uuid>> {
    let run = Uuid::new_v4().simple().to_string();
    let appends = futures::stream::iter(0..n)
        .map(|i| {
            let log = events.log.clone();
            let run = run.clone();
            async move {
                let asset = AssetId::parse(format!("list-{run}"))?;
                let segment = SegmentId::parse(format!("s-{i}"))?;
                let spec = if failed_every > 0 && i % failed_every == failed_every - 1 {
                    JobSpec::Embedding(EmbedParams {
                        asset_id: asset,
                        segment_id: segment,
                        model: "no-such-model".into(),
                        model_ver: "v1".into(),
                        text: "fails".into(),
                        chunk: None,
                        generation: 0,
                        metadata: Default::default(),
                    })
                } else {
                    JobSpec::MockEmbedding(MockParams::new(asset, segment))
                };
                let key = ids::job_key(org, spec.job_type(), &spec.params());
                let job_id = ids::job_id(&key);
                let event = JobEvent::new(
                    org,
                    job_id,
                    EventData::Requested(Requested {
                        job_id,
                        job_key: key,
                        user_id: "bench".into(),
                        spec,
                    }),
                );
                log.request(&event).await?;
                anyhow::Ok(job_id)
            }
        })
        .buffered(512);
    futures::pin_mut!(appends);
    let mut jobs = Vec::with_capacity(n);
    while let Some(appended) = appends.next().await {
        jobs.push(appended?);
    }
    Ok(jobs)
}

/// Waits until the worker and the projector have nothing pending.
async fn settle(events: &EventStore) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1_800);
    loop {
        let mut pending = 0;
        for name in [WORKER_CONSUMER, PROJECTOR_CONSUMER] {
            let info = events.stream.consumer_info(name).await?;
            pending += info.num_pending + info.num_ack_pending as u64;
        }
        if pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{pending} events still pending after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn list_url(base: &str, status: Option<&str>, limit: usize, cursor: Option<&str>) -> String {
    let mut url = format!("{base}/jobs?limit={limit}");
    if let Some(status) = status {
        url.push_str(&format!("&status={status}"));
    }
    if let Some(cursor) = cursor {
        url.push_str(&format!("&cursor={cursor}"));
    }
    url
}

/// The cursor of the page that starts halfway through the listing (`None` if it has one page).
async fn middle_cursor(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    status: Option<&str>,
    listed: usize,
) -> anyhow::Result<Option<String>> {
    // About 20 pages whatever the org's size, so that even the small org has a middle.
    let walk = (listed / 20).clamp(1, 1_000);
    let mut cursors = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = get_json(
            http,
            &list_url(base, status, walk, cursor.as_deref()),
            token,
        )
        .await?;
        match page["next_cursor"].as_str() {
            Some(next) => {
                cursors.push(next.to_owned());
                cursor = Some(next.to_owned());
            }
            None => break,
        }
    }
    Ok(cursors.get(cursors.len() / 2).cloned())
}

/// `requests` timings of one page, one request at a time.
async fn time_page(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    status: Option<&str>,
    cursor: Option<&str>,
    requests: usize,
) -> anyhow::Result<Vec<Duration>> {
    let url = list_url(base, status, 10, cursor);
    time_read(http, &url, token, requests, |page| {
        anyhow::ensure!(
            page["jobs"].as_array().is_some_and(|jobs| !jobs.is_empty()),
            "an empty page: {page}"
        );
        Ok(())
    })
    .await
}
