//! Helpers several integration test modules share and that need the test-only async-nats
//! dependency (so they cannot live in `tests/support`).

use std::sync::Arc;

use async_nats::jetstream::message::PublishMessage;
use heimdex::serve::{self, Roles};
use heimdex_domain::events::{EventData, JobEvent, Requested};
use heimdex_domain::ids;
use heimdex_domain::jobs::{EmbedParams, JobSpec};
use heimdex_store::VectorStore;
use heimdex_tests::{TestApp, TestNats, settings};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The event store of `app`'s NATS, connected as the service connects to it, for tests that
/// read or append to the log directly.
pub async fn event_store(app: &TestApp, client_name: &str) -> heimdex_event_store::EventStore {
    heimdex_event_store::EventStore::connect(
        &app.settings.nats,
        &app.nats.url(),
        client_name,
        &CancellationToken::new(),
    )
    .await
    .expect("the event store connects")
}

/// Publishes a job's `requested` event straight to the stream, past the API's checks (for jobs
/// the API would refuse, such as an unknown model), exactly as the API would: the job key as
/// `Nats-Msg-Id` and an expected last subject sequence of 0. Returns the job id.
pub async fn publish_requested(
    js: &async_nats::jetstream::Context,
    org: Uuid,
    user_id: &str,
    spec: JobSpec,
) -> Uuid {
    let key = ids::job_key(org, spec.job_type(), &spec.params());
    let job_id = ids::job_id(&key);
    let event = JobEvent::new(
        org,
        job_id,
        EventData::Requested(Requested {
            job_id,
            job_key: key.clone(),
            user_id: user_id.into(),
            spec,
        }),
    );
    js.send_publish(
        event.subject(),
        PublishMessage::build()
            .payload(event.encode().into())
            .message_id(&key)
            .expected_last_subject_sequence(0),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    job_id
}

/// Every `job_id` string anywhere in a JSON document, in document order (the accepted bodies of
/// single, batch and document calls all name their jobs this way).
pub fn job_ids(value: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("job_id", Value::String(id)) => out.push(id.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}

/// Publishes an embedding job for a model no worker serves, past the API's checks: it fails on
/// its first attempt with `invalid_input`. Returns its job id.
pub async fn poison_job(js: &async_nats::jetstream::Context, org: Uuid, segment: &str) -> String {
    let spec = JobSpec::Embedding(EmbedParams {
        asset_id: heimdex_domain::AssetId::parse("poison").unwrap(),
        segment_id: heimdex_domain::SegmentId::parse(segment).unwrap(),
        model: "no-such-model".into(),
        model_ver: "v1".into(),
        text: "some text".into(),
        chunk: None,
        generation: 0,
        metadata: Default::default(),
    });
    publish_requested(js, org, "test", spec).await.to_string()
}

/// Stores a later event of a job (`started`, `succeeded`, `failed`) as the worker or the
/// advisory listener would: with its event id, waiting until it is stored.
pub async fn append(log: &heimdex_event_store::JobLog, org: Uuid, job: Uuid, data: EventData) {
    log.send(&JobEvent::new(org, job, data))
        .await
        .expect("sent")
        .stored()
        .await
        .expect("stored");
}

/// The `succeeded` event a worker records for a mock job's attempt `attempt` of round 0.
pub fn mock_succeeded(attempt: u32) -> EventData {
    EventData::Succeeded(heimdex_domain::events::Succeeded {
        attempt,
        round: 0,
        result: heimdex_domain::jobs::JobResult {
            collection: "c".into(),
            point_ids: vec![Uuid::new_v4()],
            vector_size: 384,
            model: None,
            model_ver: None,
            deleted: None,
            written: None,
            kept: None,
            superseded: false,
        },
    })
}

pub fn job_id_of(body: &Value) -> String {
    body["job_id"].as_str().expect("job_id").to_owned()
}

/// Walks every page of `GET /jobs?<query>` and returns the job ids in order, and the pages.
pub async fn walk(app: &TestApp, token: &str, query: &str) -> (Vec<String>, usize) {
    walk_from(app, token, query, None).await
}

/// [`walk`] from the page `cursor` names (`None`: the first page). `query` holds no cursor.
pub async fn walk_from(
    app: &TestApp,
    token: &str,
    query: &str,
    mut cursor: Option<String>,
) -> (Vec<String>, usize) {
    assert!(
        !query.contains("cursor="),
        "the cursor is an argument: {query}"
    );
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let mut path = format!("/jobs?{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let response = app.get(token, &path).await;
        assert_eq!(response.status(), 200, "{path}");
        let page: Value = response.json().await.unwrap();
        pages += 1;
        ids.extend(page["jobs"].as_array().unwrap().iter().map(job_id_of));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 100, "pagination does not end");
    }
    (ids, pages)
}

/// Services of one process against a NATS that outlives them, as a restart would see it.
pub struct Services {
    pub base: String,
    pub settings: heimdex::settings::Settings,
    pub store: Option<Arc<dyn VectorStore>>,
    pub shutdown: CancellationToken,
    running: tokio::task::JoinHandle<()>,
    _data: tempfile::TempDir,
}

impl Services {
    pub async fn start(nats: &TestNats, roles: Roles, extra: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let s = settings(data.path(), &nats.url(), extra);
        let shutdown = CancellationToken::new();
        let running = serve::start(&s, roles, &nats.url(), shutdown.clone())
            .await
            .expect("services start");
        let base = format!("http://{}", running.api_addr.expect("api runs"));
        let store = running.store.clone();
        Self {
            base,
            settings: s,
            store,
            shutdown,
            running: tokio::spawn(running.wait()),
            _data: data,
        }
    }

    /// A token for `org`, signed with the test secret.
    pub fn token(&self, org: Uuid) -> String {
        heimdex_api::auth::issue_token(
            &self.settings.api.jwt,
            org,
            "tester",
            std::time::Duration::from_secs(600),
        )
        .expect("token")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.running.await;
        drop(self.store);
    }
}

/// Every point of `orgs` in a store, with its payload and vector: what an index rebuild must
/// reproduce.
pub type Snapshot = std::collections::BTreeMap<Uuid, (heimdex_store::Payload, Vec<f32>)>;

/// The points of `orgs` in `store` (a filtered count must equal the scroll).
pub async fn snapshot(store: &dyn VectorStore, orgs: &[Uuid]) -> Snapshot {
    let mut all = Snapshot::new();
    for &org in orgs {
        let points = store
            .scroll_points(org, heimdex_store::PointFilter::default())
            .await
            .expect("scroll");
        let counted = store
            .count(org, heimdex_store::PointFilter::default())
            .await
            .expect("count");
        assert_eq!(counted, points.len() as u64, "count = scroll");
        for point in points {
            let vector = store
                .get(org, point.id, true)
                .await
                .expect("get")
                .and_then(|p| p.vector)
                .expect("the point has its vector");
            all.insert(point.id, (point.payload, vector));
        }
    }
    all
}

/// How `got` differs from `expected`: points missing, points extra, payloads and vectors
/// (beyond 1e-5 a component) that differ.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Differences {
    pub missing: usize,
    pub extra: usize,
    pub payloads: usize,
    pub vectors: usize,
}

pub fn differences(expected: &Snapshot, got: &Snapshot) -> Differences {
    let mut diff = Differences {
        missing: expected.keys().filter(|id| !got.contains_key(id)).count(),
        extra: got.keys().filter(|id| !expected.contains_key(id)).count(),
        ..Differences::default()
    };
    for (id, (payload, vector)) in expected {
        if let Some((their_payload, their_vector)) = got.get(id) {
            diff.payloads += usize::from(payload != their_payload);
            let close = vector.len() == their_vector.len()
                && vector
                    .iter()
                    .zip(their_vector)
                    .all(|(x, y)| (x - y).abs() < 1e-5);
            diff.vectors += usize::from(!close);
        }
    }
    diff
}

/// `GET url`, which must answer 200 in Prometheus's text format, parsed.
pub async fn scrape(http: &reqwest::Client, url: &str) -> Option<prometheus_parse::Scrape> {
    let response = http.get(url).send().await.ok()?;
    assert_eq!(response.status(), 200, "GET {url}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.ok()?;
    Some(
        prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
            .expect("parses"),
    )
}

/// Whether `sample` carries every one of `labels`.
pub fn matches(sample: &prometheus_parse::Sample, labels: &[(&str, &str)]) -> bool {
    labels
        .iter()
        .all(|(name, value)| sample.labels.get(name) == Some(*value))
}

/// The sum of a counter's or gauge's series that carry `labels`; `None` if there is none.
pub fn value(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && matches(s, labels))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => {
                panic!("{name} is not a counter or gauge")
            }
        })
        .collect();
    (!found.is_empty()).then(|| found.iter().sum())
}
