//! `GET /metrics` read as Prometheus reads it: scraped over HTTP from real `heimdex` processes
//! (each has its own process-wide recorder, so no other test's traffic shows up in its counts)
//! and parsed with a Prometheus text-format parser. The counters must agree with what was done:
//! every job accepted once, and counted succeeded or failed once it is over.

use std::time::Duration;

use heimdex_domain::jobs::{JobSpec, MockParams};
use heimdex_domain::{AssetId, SegmentId};
use heimdex_telemetry::metrics::{CATALOGUE, Kind};
use heimdex_tests::{JWT_SECRET, ServeProcess, TestNats, eventually, free_port, heimdex_bin};
use prometheus_parse::{Scrape, Value};
use serde_json::json;
use uuid::Uuid;

use crate::common::{job_id_of, matches, poison_job, publish_requested, scrape, value};

const WAIT: Duration = Duration::from_secs(60);

/// Observations of a histogram's series that carry `labels` (their `+Inf` buckets).
fn observations(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && matches(s, labels))
        .map(|s| match &s.value {
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            Value::Counter(_) | Value::Gauge(_) | Value::Untyped(_) | Value::Summary(_) => {
                panic!("{name} is not a histogram")
            }
        })
        .sum()
}

/// Every Heimdex family in the scrape is in the catalogue, with its type and its labels, and
/// has a HELP line.
fn check_against_catalogue(scrape: &Scrape) {
    for sample in &scrape.samples {
        let family = ["_sum", "_count"]
            .iter()
            .find_map(|suffix| sample.metric.strip_suffix(suffix))
            .filter(|base| {
                CATALOGUE
                    .iter()
                    .any(|d| d.name == *base && d.kind == Kind::Histogram)
            })
            .unwrap_or(&sample.metric);
        if !family.starts_with("heimdex_") {
            continue;
        }
        let def = heimdex_telemetry::metrics::lookup(family)
            .unwrap_or_else(|| panic!("{family} is not in the catalogue"));
        let kind_ok = match (&sample.value, def.kind) {
            (Value::Counter(_), Kind::Counter)
            | (Value::Gauge(_), Kind::Gauge)
            | (Value::Histogram(_), Kind::Histogram)
            | (Value::Untyped(_), Kind::Histogram) => true,
            (
                Value::Counter(_)
                | Value::Gauge(_)
                | Value::Histogram(_)
                | Value::Untyped(_)
                | Value::Summary(_),
                _,
            ) => false,
        };
        assert!(
            kind_ok,
            "{} has the wrong type: {:?}",
            sample.metric, sample
        );
        let mut labels: Vec<&str> = sample.labels.keys().map(String::as_str).collect();
        labels.sort_unstable();
        let mut want: Vec<&str> = def.labels.to_vec();
        want.sort_unstable();
        assert_eq!(labels, want, "labels of {}", sample.metric);
        assert!(scrape.docs.contains_key(family), "{family} has no HELP");
    }
}

/// `heimdex serve` (against a nats-server of the test's own, so the test can also publish jobs
/// the API would refuse): N distinct jobs through the API, a duplicate, jobs that fail, searches
/// of every kind and a 404. Once idle, accepted = N = succeeded, failed = the failing jobs, each
/// counted once, and no label names an org, a job or a raw path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_job_once_and_parse() {
    let nats = TestNats::start().await;
    let nats_url = nats.url();
    let serve = ServeProcess::start(&[("NATS_URL", nats_url.as_str())]).await;
    let http = reqwest::Client::new();
    let org = Uuid::new_v4();
    let token = serve.token(org);
    let metrics_url = format!("{}/metrics", serve.base);

    // N distinct jobs through the API: mock points, texts embedded by the `mock` model (through
    // the embedding queue), and a delete.
    let mut jobs = Vec::new();
    let mut points = Vec::new();
    for i in 0..4 {
        let body = http
            .post(format!("{}/vectors/mock", serve.base))
            .bearer_auth(&token)
            .json(&json!({"asset_id": "doc", "segment_id": format!("m-{i}")}))
            .send()
            .await
            .expect("POST /vectors/mock");
        assert_eq!(body.status(), 202);
        jobs.push(job_id_of(&body.json().await.expect("body")));
        points.push(heimdex_domain::ids::point_id(
            org,
            "doc",
            &format!("m-{i}"),
            "mock",
            "v1",
        ));
    }
    let batch = http
        .post(format!("{}/vectors/embed/batch", serve.base))
        .bearer_auth(&token)
        .json(&json!({
            "asset_id": "notes",
            "model": "mock",
            "segments": [
                {"segment_id": "e-0", "text": "rings of ice around a giant planet"},
                {"segment_id": "e-1", "text": "bread rises in a warm kitchen"},
                {"segment_id": "e-2", "text": "a red desert world with thin air"},
            ],
        }))
        .send()
        .await
        .expect("POST /vectors/embed/batch");
    assert_eq!(batch.status(), 202);
    let batch: serde_json::Value = batch.json().await.expect("body");
    jobs.extend(crate::common::job_ids(&batch));
    // A delete of a point written before it (a delete of a point that is not there, or that
    // was written after it, leaves the store alone).
    let delete = http
        .delete(format!("{}/vectors/{}", serve.base, points[3]))
        .bearer_auth(&token)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(delete.status(), 202);
    jobs.push(job_id_of(&delete.json().await.expect("body")));
    let accepted = jobs.len();
    assert_eq!(accepted, 8);

    // The same job again is a duplicate: not a new job, not counted.
    let again = http
        .post(format!("{}/vectors/mock", serve.base))
        .bearer_auth(&token)
        .json(&json!({"asset_id": "doc", "segment_id": "m-0"}))
        .send()
        .await
        .expect("POST again");
    assert_eq!(job_id_of(&again.json().await.expect("body")), jobs[0]);

    // Jobs that fail on their first attempt (a model no worker serves), published past the API
    // that would refuse them.
    let client = async_nats::connect(&nats_url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let poisoned = 2;
    let mut failing = Vec::new();
    for i in 0..poisoned {
        failing.push(poison_job(&js, org, &format!("p-{i}")).await);
    }

    for job in &jobs {
        let status =
            heimdex_tests::wait_for_job(&http, &serve.base, &token, job, "SUCCEEDED", WAIT).await;
        assert_eq!(status["status"], "SUCCEEDED", "{status}");
    }
    for job in &failing {
        let status =
            heimdex_tests::wait_for_job(&http, &serve.base, &token, job, "FAILED", WAIT).await;
        assert_eq!(status["status"], "FAILED", "{status}");
    }

    // Searches of each kind, and a path no route has.
    let searches = [
        json!({"query": "icy rings", "model": "mock", "limit": 3}),
        json!({"query": "icy rings", "model": "mock", "mode": "keyword", "limit": 3}),
        json!({"vector": vec![0.5_f32; 384], "model": "mock", "limit": 3}),
    ];
    for search in &searches {
        let response = http
            .post(format!("{}/vectors/search", serve.base))
            .bearer_auth(&token)
            .json(search)
            .send()
            .await
            .expect("search");
        assert_eq!(response.status(), 200, "{search}");
    }
    let missing = http
        .get(format!("{}/no/such/{}", serve.base, Uuid::new_v4()))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);

    // The worker counts a job once its end is stored, which may be just after the status shows
    // it: wait until every job is counted (idle), then check the counts exactly.
    let total = (accepted + poisoned) as f64;
    let scrape = eventually(WAIT, || async {
        let scrape = scrape(&http, &metrics_url).await?;
        let ended = value(&scrape, "heimdex_jobs_succeeded_total", &[]).unwrap_or(0.0)
            + value(&scrape, "heimdex_jobs_failed_total", &[]).unwrap_or(0.0);
        let backlog = value(&scrape, "heimdex_worker_backlog_jobs", &[]);
        (ended >= total && backlog == Some(0.0)).then_some(scrape)
    })
    .await
    .expect("every job counted and the backlog drained");
    let scrape = scrape_again_after_a_sample(&http, &metrics_url, scrape).await;

    assert_eq!(
        value(&scrape, "heimdex_jobs_accepted_total", &[]),
        Some(accepted as f64),
        "accepted: created jobs, not the duplicate"
    );
    assert_eq!(
        value(
            &scrape,
            "heimdex_jobs_accepted_total",
            &[("job_type", "mock_embedding")]
        ),
        Some(4.0)
    );
    assert_eq!(
        value(
            &scrape,
            "heimdex_jobs_accepted_total",
            &[("job_type", "embedding")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(&scrape, "heimdex_jobs_succeeded_total", &[]),
        Some(accepted as f64),
        "every accepted job succeeded, once"
    );
    assert_eq!(
        value(
            &scrape,
            "heimdex_jobs_failed_total",
            &[("job_type", "embedding"), ("code", "invalid_input")]
        ),
        Some(poisoned as f64)
    );
    assert_eq!(
        value(&scrape, "heimdex_jobs_failed_total", &[]),
        Some(poisoned as f64)
    );
    assert_eq!(
        observations(&scrape, "heimdex_job_duration_seconds", &[]),
        total,
        "one latency per ended job"
    );
    assert_eq!(value(&scrape, "heimdex_job_retries_total", &[]), None);

    // Searches by the mode that ran and the query's kind.
    for (mode, query) in [("hybrid", "text"), ("keyword", "text"), ("dense", "vector")] {
        assert_eq!(
            observations(
                &scrape,
                "heimdex_search_duration_seconds",
                &[("mode", mode), ("query", query)]
            ),
            1.0,
            "{mode} {query}"
        );
    }
    // HTTP: by route template, never the raw path.
    let http_count = |route: &str, method: &str, status: &str| {
        observations(
            &scrape,
            "heimdex_http_request_duration_seconds",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(http_count("/vectors/mock", "POST", "202"), 5.0);
    assert_eq!(http_count("/vectors/search", "POST", "200"), 3.0);
    assert_eq!(
        http_count("/vectors/:param0", "DELETE", "202"),
        1.0,
        "{:?}",
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "heimdex_http_request_duration_seconds")
            .map(|s| s.labels.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(http_count("unmatched", "GET", "404"), 1.0);
    assert!(http_count("/jobs/:param0", "GET", "200") >= jobs.len() as f64);

    // Embedding: the batch's texts through the bulk queue, the text queries through the query
    // queue (the keyword search embeds nothing).
    assert!(
        observations(
            &scrape,
            "heimdex_embed_batch_texts",
            &[("priority", "bulk")]
        ) >= 1.0
    );
    assert_eq!(
        observations(
            &scrape,
            "heimdex_embed_batch_texts",
            &[("priority", "query")]
        ),
        1.0
    );
    let bulk_texts: f64 = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "heimdex_embed_batch_texts_sum" && matches(s, &[("priority", "bulk")])
        })
        .map(|s| match s.value {
            Value::Untyped(v) | Value::Counter(v) | Value::Gauge(v) => v,
            Value::Histogram(_) | Value::Summary(_) => 0.0,
        })
        .sum();
    assert_eq!(bulk_texts, 3.0, "each text of the batch embedded once");
    // The vector store: the points written, the searches run.
    let store = |operation: &str| {
        observations(
            &scrape,
            "heimdex_vector_store_operation_duration_seconds",
            &[
                ("operation", operation),
                ("backend", "embedded"),
                ("outcome", "ok"),
            ],
        )
    };
    assert!(store("upsert") >= 1.0);
    assert_eq!(store("search"), 3.0);
    // The delete reads the point first (a delete never removes a write that came after it in
    // the log); whether it then deletes, or the write it follows in the same batch is never
    // made, depends on how the two were batched. Either way the point is gone.
    assert!(store("get") >= 1.0, "the delete's read");
    assert!(store("delete_points") + store("delete_by_filter") <= 1.0);
    let deleted = http
        .get(format!("{}/vectors/{}", serve.base, points[3]))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(deleted.status(), 404, "the deleted point is gone");
    let kept = http
        .get(format!("{}/vectors/{}", serve.base, points[0]))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(kept.status(), 200, "the others stay");

    assert_eq!(value(&scrape, "heimdex_nats_up", &[]), Some(1.0));
    assert_eq!(
        value(
            &scrape,
            "heimdex_vector_store_up",
            &[("backend", "embedded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape, "heimdex_projector_lag_events", &[]),
        Some(0.0)
    );
    // The store's write-ahead log, measured at its open.
    let wal = value(
        &scrape,
        "heimdex_vector_store_wal_bytes",
        &[("collection", "embeddings")],
    );
    assert!(wal.is_some_and(|bytes| bytes > 0.0), "{wal:?}");
    // No optimizer run holds a write once the jobs are done.
    assert_eq!(
        value(
            &scrape,
            "heimdex_vector_store_held_writes",
            &[("collection", "embeddings")]
        ),
        Some(0.0)
    );
    // What the store holds, once the sampler has read it after the last write: the four mock
    // points and the batch's three, less the deleted one. No optimizer run has ended since the
    // one at the open, on the empty store, so a gauge set only by the runs would stay at 0.
    let held = eventually(WAIT, || async {
        let now = self::scrape(&http, &metrics_url).await?;
        let held = value(
            &now,
            "heimdex_vector_store_points",
            &[("collection", "embeddings")],
        );
        (held == Some(6.0)).then_some(())
    })
    .await;
    assert!(held.is_some(), "heimdex_vector_store_points never read 6");
    assert_eq!(value(&scrape, "heimdex_requests_refused_total", &[]), None);

    check_against_catalogue(&scrape);
    // Bounded labels: no org, job or point id, no raw path anywhere.
    let ids: Vec<String> = std::iter::once(org.to_string())
        .chain(jobs.iter().cloned())
        .chain(failing.iter().cloned())
        .collect();
    for sample in &scrape.samples {
        for (name, value) in sample.labels.iter() {
            assert!(
                !ids.iter().any(|id| value.contains(id.as_str())) && !value.contains("/no/such"),
                "{}: label {name}={value}",
                sample.metric
            );
            assert!(
                Uuid::parse_str(value).is_err(),
                "{}: label {name}={value} is an id",
                sample.metric
            );
        }
    }
}

/// Scrapes once more after the sampler's next round and checks that nothing moved while the
/// service was idle (a counter counted late would show here).
async fn scrape_again_after_a_sample(http: &reqwest::Client, url: &str, first: Scrape) -> Scrape {
    tokio::time::sleep(heimdex::metrics::SAMPLE_INTERVAL).await;
    let second = scrape(http, url).await.expect("scrape");
    for name in [
        "heimdex_jobs_accepted_total",
        "heimdex_jobs_succeeded_total",
        "heimdex_jobs_failed_total",
    ] {
        assert_eq!(
            value(&first, name, &[]),
            value(&second, name, &[]),
            "{name}"
        );
    }
    second
}

/// A child `heimdex` process, killed on drop.
struct Child(tokio::process::Child);

impl Child {
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().expect("pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits")),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        tokio::time::timeout(WAIT, self.0.wait())
            .await
            .expect("stops after SIGTERM")
            .expect("wait")
    }
}

/// `heimdex worker` has no API: it serves `/metrics` on `HEIMDEX_METRICS_ADDR`, and counts the
/// jobs it does there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_metrics_on_its_own_address() {
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let log = data.path().join("worker.log");
    let child = tokio::process::Command::new(heimdex_bin())
        .arg("worker")
        .env_remove("QDRANT_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("NATS_URL", nats.url())
        .env("HEIMDEX_DATA_DIR", data.path().join("data"))
        .env("HEIMDEX_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("JWT_SECRET", JWT_SECRET)
        .env("HEIMDEX_EMBED_THREADS", heimdex_tests::EMBED_THREADS)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("heimdex worker starts");
    let child = Child(child);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}/metrics");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Up once its sampler has read the worker consumer.
    let first = eventually(WAIT, || async {
        let scrape = scrape(&http, &url).await?;
        value(&scrape, "heimdex_worker_backlog_jobs", &[]).map(|_| scrape)
    })
    .await
    .unwrap_or_else(|| panic!("no /metrics on {url}:\n{}", read_log()));
    assert_eq!(value(&first, "heimdex_nats_up", &[]), Some(1.0));
    assert_eq!(value(&first, "heimdex_jobs_succeeded_total", &[]), None);
    // Only /metrics: the API is not there.
    let healthz = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("GET");
    assert_eq!(healthz.status(), 404);

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let org = Uuid::new_v4();
    for i in 0..3 {
        let spec = JobSpec::MockEmbedding(MockParams::new(
            AssetId::parse("doc").expect("asset"),
            SegmentId::parse(format!("s-{i}")).expect("segment"),
        ));
        publish_requested(&js, org, "test", spec).await;
    }
    let done = eventually(WAIT, || async {
        let scrape = scrape(&http, &url).await?;
        (value(
            &scrape,
            "heimdex_jobs_succeeded_total",
            &[("job_type", "mock_embedding")],
        ) == Some(3.0))
        .then_some(scrape)
    })
    .await
    .unwrap_or_else(|| panic!("the worker's jobs were not counted:\n{}", read_log()));
    // This process accepted nothing (it has no API), and its vector store answers.
    assert_eq!(value(&done, "heimdex_jobs_accepted_total", &[]), None);
    assert_eq!(
        value(&done, "heimdex_vector_store_up", &[("backend", "embedded")]),
        Some(1.0)
    );
    assert!(
        observations(
            &done,
            "heimdex_vector_store_operation_duration_seconds",
            &[("operation", "upsert")]
        ) >= 1.0
    );
    check_against_catalogue(&done);

    let status = child.terminate().await;
    assert!(status.success(), "{status}\n{}", read_log());
}
