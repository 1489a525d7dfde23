//! Tenant isolation, route by route: org A creates jobs, points and assets (mock and real
//! embeddings, a document, a failed job); org B then calls every operation of the live OpenAPI
//! spec with A's ids and must see nothing of A's, and A's data must be unchanged afterwards.
//!
//! The routes come from `/openapi.json`, so a new route without a probe fails this test: add
//! one arm to [`probe`] (or, for a route that carries no tenant data, one entry to
//! [`NO_TENANT_DATA`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::{job_ids, publish_requested};

use heimdex_domain::jobs::{EmbedParams, JobSpec};
use heimdex_store::PointFilter;
use heimdex_tests::TestApp;

const WAIT: Duration = Duration::from_secs(90);

/// Operations that carry no tenant data (`/openapi.json` and `/docs` are not in the spec).
const NO_TENANT_DATA: &[&str] = &["GET /healthz", "GET /readyz"];

const SECRET_TEXT: &str = "Confidential: the northern division merger closes in March.";
const B_TEXT: &str = "Org B writes its own words under the same names.";

/// The metadata of A's points, which B's metadata filters name.
fn a_metadata() -> Value {
    json!({"owner": "iso-a", "year": 2024, "tags": ["merger", "march"], "draft": false})
}

/// What org A owns.
struct Owner {
    org: Uuid,
    token: String,
    jobs: Vec<String>,
    failed_job: String,
    points: Vec<String>,
    assets: Vec<String>,
    /// `(asset_id, segment_id)` of A's points.
    segments: Vec<(String, String)>,
    vector: Vec<f32>,
}

impl Owner {
    /// Strings whose presence in a response to B is a leak: A's org, jobs and points, minus
    /// the ids B itself sent in that request (a 404 may echo them).
    fn leaks(&self, body: &str, sent: &[&str]) -> Vec<String> {
        let org = self.org.to_string();
        std::iter::once(&org)
            .chain(&self.jobs)
            .chain(&self.points)
            .filter(|marker| !sent.contains(&marker.as_str()) && body.contains(marker.as_str()))
            .cloned()
            .collect()
    }
}

async fn create_owner(app: &TestApp) -> Owner {
    let org = Uuid::new_v4();
    let token = app.token(org);
    let mut accepted = Vec::new();
    for (path, body) in [
        (
            "/vectors/mock",
            json!({"asset_id": "iso-a-doc", "segment_id": "s-0"}),
        ),
        (
            "/vectors/embed",
            json!({"asset_id": "iso-a-doc", "segment_id": "s-1", "text": SECRET_TEXT,
                   "metadata": a_metadata()}),
        ),
        (
            "/vectors/embed/batch",
            json!({"asset_id": "iso-a-batch", "model": "mock",
                   "segments": [{"segment_id": "b-0", "text": SECRET_TEXT,
                                 "metadata": a_metadata()}]}),
        ),
        (
            "/vectors/documents",
            json!({"asset_id": "iso-a-report", "text": SECRET_TEXT,
                   "metadata": a_metadata()}),
        ),
    ] {
        let response = app.post_json(&token, path, &body).await;
        assert_eq!(response.status(), 202, "{path}");
        let body: Value = response.json().await.expect("accepted body");
        accepted.extend(job_ids(&body));
    }
    let mut points = Vec::new();
    for job in app
        .wait_for_jobs(&token, &accepted, "SUCCEEDED", WAIT)
        .await
    {
        for p in job["result"]["point_ids"].as_array().expect("point ids") {
            points.push(p.as_str().expect("point id").to_owned());
        }
    }
    let failed_job = publish_poison_job(app, org).await;
    let failed = app.wait_for_job(&token, &failed_job, "FAILED", WAIT).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let mut segments = Vec::new();
    for p in &points {
        let point: Value = app
            .get(&token, &format!("/vectors/{p}"))
            .await
            .json()
            .await
            .expect("point");
        segments.push((
            point["payload"]["asset_id"]
                .as_str()
                .expect("asset")
                .to_owned(),
            point["payload"]["segment_id"]
                .as_str()
                .expect("segment")
                .to_owned(),
        ));
    }
    let vector: Vec<f32> = serde_json::from_value(
        app.get(&token, &format!("/vectors/{}?with_vector=true", points[1]))
            .await
            .json::<Value>()
            .await
            .expect("point")["vector"]
            .clone(),
    )
    .expect("vector");
    let mut jobs = accepted;
    jobs.push(failed_job.clone());
    Owner {
        org,
        token,
        jobs,
        failed_job,
        points,
        assets: vec![
            "iso-a-doc".into(),
            "iso-a-batch".into(),
            "iso-a-report".into(),
        ],
        segments,
        vector,
    }
}

/// A job that fails on its first attempt (an unknown model, published past the API's checks),
/// so A also owns a FAILED job.
async fn publish_poison_job(app: &TestApp, org: Uuid) -> String {
    let js = async_nats::jetstream::new(
        async_nats::connect(app.nats.url())
            .await
            .expect("nats connects"),
    );
    let spec = JobSpec::Embedding(EmbedParams {
        asset_id: heimdex_domain::AssetId::parse("iso-a-doc").unwrap(),
        segment_id: heimdex_domain::SegmentId::parse("poison").unwrap(),
        model: "no-such-model".into(),
        model_ver: "v1".into(),
        text: SECRET_TEXT.into(),
        chunk: None,
        generation: 0,
        metadata: Default::default(),
    });
    publish_requested(&js, org, "owner", spec).await.to_string()
}

/// Everything of A's that B could disturb: points (payload and vector), counts, job statuses.
async fn snapshot(app: &TestApp, a: &Owner) -> BTreeMap<String, Value> {
    let all = || PointFilter {
        asset_id: None,
        segment_id: None,
        model: None,
        model_ver: None,
        moved_from: None,
        before_seq: None,
        meta: heimdex_domain::MetaFilter::default(),
    };
    let mut out = BTreeMap::new();
    let count = app.store.count(a.org, all()).await.expect("count");
    let mut ids = app.store.scroll_ids(a.org, all()).await.expect("scroll");
    ids.sort();
    assert_eq!(count, ids.len() as u64, "count equals scroll");
    out.insert("count".into(), json!(count));
    out.insert("ids".into(), json!(ids));
    for id in ids {
        let point = app
            .store
            .get(a.org, id, true)
            .await
            .expect("get")
            .expect("point exists");
        out.insert(
            format!("point {id}"),
            json!({"payload": serde_json::to_value(&point.payload).expect("payload"),
                   "vector": point.vector}),
        );
    }
    for job in &a.jobs {
        let mut view: Value = app
            .get(&a.token, &format!("/jobs/{job}"))
            .await
            .json()
            .await
            .expect("job");
        view.as_object_mut()
            .expect("job object")
            .remove("updated_at");
        out.insert(format!("job {job}"), view);
    }
    out
}

/// What B saw on one request, checked against A's markers.
async fn expect(
    a: &Owner,
    label: &str,
    response: reqwest::Response,
    statuses: &[u16],
    sent: &[&str],
) -> Value {
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    assert!(
        statuses.contains(&status),
        "{label}: status {status}, want one of {statuses:?}: {body}"
    );
    let leaked = a.leaks(&body, sent);
    assert!(leaked.is_empty(), "{label}: leaked {leaked:?} in {body}");
    assert!(
        !body.contains(SECRET_TEXT),
        "{label}: leaked the text in {body}"
    );
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// B's jobs finish; a delete of A's point removes nothing (`deleted: Some(0)`).
async fn b_jobs_finish(
    app: &TestApp,
    b: &str,
    accepted: &Value,
    label: &str,
    deleted: Option<u64>,
) {
    let ids = job_ids(accepted);
    assert!(!ids.is_empty(), "{label}: no job in {accepted}");
    for id in ids {
        let job = app.wait_for_job(b, &id, "SUCCEEDED", WAIT).await;
        assert_eq!(job["status"], "SUCCEEDED", "{label}: {job}");
        if let Some(deleted) = deleted {
            assert_eq!(job["result"]["deleted"], deleted, "{label}: {job}");
        }
    }
}

/// Probes one operation as B with A's ids. `None`: no probe for this operation yet.
async fn probe(app: &TestApp, a: &Owner, b: &str, label: &str) -> Option<usize> {
    let mut requests = 0;
    match label {
        // The operator's routes: a tenant's token is never the admin credential (403 here,
        // where no admin token is configured; 401 where one is).
        "GET /admin/index"
        | "POST /admin/index/rebuild"
        | "POST /admin/index/switch"
        | "POST /admin/index/rollback"
        | "POST /admin/index/drop" => {
            let (method, path) = label.split_once(' ').expect("METHOD /path");
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let r = app
                .http
                .request(method, app.url(path))
                .bearer_auth(b)
                .send()
                .await
                .expect("request sent");
            expect(a, label, r, &[401, 403], &[]).await;
            requests += 1;
        }
        "GET /vectors/{point_id}" => {
            for p in &a.points {
                for query in ["", "?with_vector=true", "?with_vector=false"] {
                    let r = app.get(b, &format!("/vectors/{p}{query}")).await;
                    expect(a, label, r, &[404], &[p]).await;
                    requests += 1;
                }
            }
        }
        "DELETE /vectors/{point_id}" => {
            for p in &a.points {
                let r = app.delete(b, &format!("/vectors/{p}")).await;
                let accepted = expect(a, label, r, &[202], &[p]).await;
                b_jobs_finish(app, b, &accepted, label, Some(0)).await;
                requests += 1;
            }
        }
        "DELETE /assets/{asset_id}" => {
            for asset in &a.assets {
                let r = app.delete(b, &format!("/assets/{asset}")).await;
                // Removes B's own points of that asset name, if any; A's are checked at the end.
                let accepted = expect(a, label, r, &[202], &[]).await;
                b_jobs_finish(app, b, &accepted, label, None).await;
                requests += 1;
            }
        }
        "GET /documents/{asset_id}" => {
            for asset in &a.assets {
                let r = app.get(b, &format!("/documents/{asset}")).await;
                // B sent documents under A's asset names (the write probes): B sees only its
                // own points, never A's.
                let view = expect(a, label, r, &[200, 404], &[]).await;
                for chunk in view["chunks"].as_array().cloned().unwrap_or_default() {
                    assert!(
                        !a.points
                            .contains(&chunk["point_id"].as_str().unwrap_or("").to_owned()),
                        "{label}: {chunk}"
                    );
                }
                requests += 1;
            }
        }
        "PUT /documents/{asset_id}" => {
            for asset in &a.assets {
                let r = app
                    .http
                    .put(app.url(&format!("/documents/{asset}")))
                    .bearer_auth(b)
                    .json(&json!({"text": B_TEXT, "model": "mock"}))
                    .send()
                    .await
                    .expect("request sent");
                let accepted = expect(a, label, r, &[202], &[]).await;
                b_jobs_finish(app, b, &accepted, label, None).await;
                requests += 1;
            }
        }
        "DELETE /documents/{asset_id}" => {
            for asset in &a.assets {
                let r = app.delete(b, &format!("/documents/{asset}")).await;
                let accepted = expect(a, label, r, &[202], &[]).await;
                b_jobs_finish(app, b, &accepted, label, None).await;
                requests += 1;
            }
        }
        "GET /jobs/{job_id}" | "GET /jobs/{job_id}/events" => {
            for job in &a.jobs {
                let path = label.trim_start_matches("GET ").replace("{job_id}", job);
                let r = app.get(b, &path).await;
                expect(a, label, r, &[404], &[job]).await;
                requests += 1;
            }
        }
        // Added by the dead-letter work (issue 4): B's list never shows A's jobs.
        "GET /jobs" => {
            for query in [
                "",
                "?status=FAILED",
                "?status=SUCCEEDED&limit=100",
                "?status=QUEUED",
            ] {
                let r = app.get(b, &format!("/jobs{query}")).await;
                // B's own delete jobs name A's point ids because B sent them (the DELETE probe
                // above); A's org, A's job ids and A's text must never appear.
                let sent: Vec<&str> = a.points.iter().map(String::as_str).collect();
                let page = expect(a, label, r, &[200], &sent).await;
                let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
                for job in &jobs {
                    assert_ne!(job["org_id"], a.org.to_string(), "{label}{query}: {job}");
                }
                requests += 1;
            }
        }
        "GET /documents" => {
            for query in ["", "?limit=1"] {
                let r = app.get(b, &format!("/documents{query}")).await;
                // B's listing holds only the documents B sent under A's asset names (the write
                // probes): never A's jobs, versions or metadata.
                let page = expect(a, label, r, &[200], &[]).await;
                for document in page["documents"].as_array().cloned().unwrap_or_default() {
                    assert!(
                        document.get("metadata").is_none(),
                        "{label}{query}: {document}"
                    );
                }
                requests += 1;
            }
        }
        // Added by the dead-letter work (issue 4): B cannot retry A's jobs.
        "POST /jobs/{job_id}/retry" => {
            for job in &a.jobs {
                let r = app
                    .post_json(b, &format!("/jobs/{job}/retry"), &json!({}))
                    .await;
                expect(a, label, r, &[404], &[job]).await;
                requests += 1;
            }
            assert!(a.jobs.contains(&a.failed_job));
        }
        "POST /vectors/search" => {
            let mut bodies = vec![
                json!({"query": SECRET_TEXT, "limit": 100, "score_threshold": -1.0}),
                json!({"vector": a.vector, "limit": 100, "with_vector": true}),
                json!({"query": SECRET_TEXT, "model": "mock", "limit": 100}),
            ];
            // Metadata filters that A's points match, and ones that match every point (a
            // negation on a key no point has): still only B's own points come back.
            let metadata_filters = [
                json!({"must": [{"key": "owner", "eq": "iso-a"}]}),
                json!({"must": [{"key": "tags", "any": ["merger", "x"]}]}),
                json!({"must": [{"key": "year", "range": {"gte": 2000}}],
                       "must_not": [{"key": "draft", "eq": true}]}),
                json!({"must_not": [{"key": "no-such-key", "eq": "x"}]}),
                json!({"must_not": [{"key": "org_id", "eq": a.org.to_string()}]}),
            ];
            for metadata in &metadata_filters {
                for mode in ["hybrid", "dense", "keyword"] {
                    bodies.push(json!({"query": SECRET_TEXT, "mode": mode, "limit": 100,
                                       "score_threshold": -1.0, "explain": true,
                                       "filter": {"metadata": metadata}}));
                }
                bodies.push(
                    json!({"vector": a.vector, "limit": 100, "score_threshold": -1.0,
                                   "filter": {"metadata": metadata}}),
                );
            }
            for (asset, segment) in &a.segments {
                bodies.push(json!({"vector": a.vector, "filter": {"asset_id": asset},
                                   "with_vector": true, "score_threshold": -1.0}));
                bodies.push(json!({"vector": a.vector, "score_threshold": -1.0,
                                   "filter": {"asset_id": asset,
                                              "metadata": metadata_filters[3]}}));
                bodies.push(json!({"query": SECRET_TEXT,
                                   "filter": {"asset_id": asset, "segment_id": segment}}));
            }
            for body in bodies {
                let r = app.post_json(b, "/vectors/search", &body).await;
                let results = expect(a, label, r, &[200], &[]).await;
                for hit in results["results"].as_array().expect("results") {
                    assert_ne!(
                        hit["payload"]["org_id"],
                        a.org.to_string(),
                        "{label}: {hit}"
                    );
                }
                requests += 1;
            }
        }
        // Writes naming A's assets and segments make B's own jobs and points, never A's (B's
        // text differs from A's, so A's text showing up anywhere is a leak).
        "POST /vectors/mock"
        | "POST /vectors/embed"
        | "POST /vectors/embed/batch"
        | "POST /vectors/documents" => {
            for (asset, segment) in &a.segments {
                let body = match label {
                    "POST /vectors/mock" => json!({"asset_id": asset, "segment_id": segment}),
                    "POST /vectors/embed" => json!({"asset_id": asset, "segment_id": segment,
                                                   "text": B_TEXT, "model": "mock"}),
                    "POST /vectors/embed/batch" => json!({"asset_id": asset, "model": "mock",
                        "segments": [{"segment_id": segment, "text": B_TEXT}]}),
                    _ => json!({"asset_id": asset, "text": B_TEXT, "model": "mock"}),
                };
                let path = label.trim_start_matches("POST ");
                let r = app.post_json(b, path, &body).await;
                let status = r.status().as_u16();
                let text = r.text().await.expect("body");
                assert_eq!(status, 202, "{label}: {text}");
                let leaked = a.leaks(&text, &[]);
                assert!(leaked.is_empty(), "{label}: leaked {leaked:?} in {text}");
                let accepted: Value = serde_json::from_str(&text).expect("json");
                b_jobs_finish(app, b, &accepted, label, None).await;
                requests += 1;
            }
        }
        _ => return None,
    }
    Some(requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_org_sees_and_changes_nothing_on_any_route() {
    let app = TestApp::spawn().await;
    let a = create_owner(&app).await;
    let b = app.token(Uuid::new_v4());
    let before = snapshot(&app, &a).await;
    assert!(a.points.len() >= 4, "A has points: {:?}", a.points);

    let spec: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("spec")
        .json()
        .await
        .expect("spec is JSON");
    let mut labels = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            labels.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    let mut unprobed = Vec::new();
    let mut probed = BTreeMap::new();
    for label in &labels {
        if NO_TENANT_DATA.contains(&label.as_str()) {
            continue;
        }
        match probe(&app, &a, &b, label).await {
            Some(requests) => {
                assert!(requests > 0, "{label}: the probe sent nothing");
                probed.insert(label.clone(), requests);
            }
            None => unprobed.push(label.clone()),
        }
    }
    assert!(
        unprobed.is_empty(),
        "routes without a tenant-isolation probe (add an arm to `probe`): {unprobed:?}"
    );

    // A's data is exactly as it was.
    let after = snapshot(&app, &a).await;
    assert_eq!(before.len(), after.len());
    for (key, value) in &before {
        assert_eq!(Some(value), after.get(key), "{key} changed");
    }
    println!(
        "isolation: {} routes probed with {} requests, {} of A's points and {} jobs intact, 0 leaks: {probed:?}",
        probed.len(),
        probed.values().sum::<usize>(),
        a.points.len(),
        a.jobs.len()
    );
    app.stop().await;
}
