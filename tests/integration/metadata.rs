//! Metadata: documents and segments carry the client's own keys, stored under the payload's
//! `meta`, searched with `filter.metadata` (equality, any-of, ranges, negation), always within
//! the caller's organization. Changed metadata is a new version; bad shapes are `422` with the
//! reason.

use std::collections::BTreeSet;
use std::time::Duration;

use heimdex_tests::TestApp;
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const QUERY: &str = "planets stars oceans tides";

async fn accepted(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    let response = app.post_json(token, path, &body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{path}: {body}");
    body
}

async fn succeeded(app: &TestApp, token: &str, job_id: &Value) -> Value {
    let job = app
        .wait_for_job(token, job_id.as_str().unwrap(), "SUCCEEDED", WAIT)
        .await;
    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    job
}

/// The `segment_id`s a search with `filter` returns, as `asset/segment`.
async fn found(app: &TestApp, token: &str, mode: &str, filter: Value) -> BTreeSet<String> {
    let response = app
        .post_json(
            token,
            "/vectors/search",
            &json!({"query": QUERY, "model": "mock", "mode": mode, "limit": 100,
                    "score_threshold": -1.0, "filter": filter}),
        )
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{filter}: {body}");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| {
            format!(
                "{}/{}",
                hit["payload"]["asset_id"].as_str().unwrap(),
                hit["payload"]["segment_id"].as_str().unwrap()
            )
        })
        .collect()
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// One org's corpus: two single segments, a batch of two, and a document of two chunks.
async fn corpus(app: &TestApp, token: &str) {
    let mut jobs = Vec::new();
    let single = accepted(
        app,
        token,
        "/vectors/embed",
        json!({"asset_id": "notes", "segment_id": "n1", "model": "mock",
               "text": "Planets circle distant stars.",
               "metadata": {"lang": "en", "year": 2004, "tags": ["astro", "draft"], "draft": true}}),
    )
    .await;
    jobs.push(single["job_id"].clone());
    let bare = accepted(
        app,
        token,
        "/vectors/embed",
        json!({"asset_id": "notes", "segment_id": "n2", "model": "mock",
               "text": "Oceans have tides."}),
    )
    .await;
    jobs.push(bare["job_id"].clone());
    let batch = accepted(
        app,
        token,
        "/vectors/embed/batch",
        json!({"asset_id": "batch", "model": "mock", "segments": [
            {"segment_id": "b1", "text": "Stars burn.", "metadata": {"lang": "de", "year": 1999.5}},
            {"segment_id": "b2", "text": "Tides turn.", "metadata": {"lang": "fr", "year": "2004"}}
        ]}),
    )
    .await;
    for job in batch["jobs"].as_array().unwrap() {
        jobs.push(job["job_id"].clone());
    }
    let response = app
        .http
        .put(app.url("/documents/guide"))
        .bearer_auth(token)
        .json(&json!({"text": "Sentence 0 talks about planets and distant stars. Sentence 1 talks about oceans and rolling tides.",
                      "model": "mock", "chunk": {"max_tokens": 8, "overlap": 0},
                      "metadata": {"lang": "en", "year": 2010, "tags": ["astro", "ocean"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let document: Value = response.json().await.unwrap();
    assert_eq!(
        document["chunks"].as_array().unwrap().len(),
        2,
        "{document}"
    );
    jobs.push(document["job_id"].clone());
    for job in &jobs {
        succeeded(app, token, job).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_stored_under_meta_and_every_operator_filters_search() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    corpus(&app, &token).await;

    // Stored under `meta`, beside (never over) Heimdex's own keys.
    let hits = app
        .search(
            &token,
            &json!({"query": QUERY, "model": "mock", "mode": "keyword", "limit": 100,
                    "filter": {"asset_id": "notes", "segment_id": "n1"}}),
        )
        .await;
    let payload = &hits["results"][0]["payload"];
    assert_eq!(
        payload["meta"],
        json!({"draft": true, "lang": "en", "tags": ["astro", "draft"], "year": 2004}),
        "{payload}"
    );
    let point = hits["results"][0]["point_id"].as_str().unwrap();
    let stored: Value = app
        .get(&token, &format!("/vectors/{point}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored["payload"]["meta"], payload["meta"]);
    let view: Value = app
        .get(&token, "/documents/guide")
        .await
        .json()
        .await
        .unwrap();
    for chunk in view["chunks"].as_array().unwrap() {
        assert_eq!(
            chunk["metadata"],
            json!({"lang": "en", "tags": ["astro", "ocean"], "year": 2010})
        );
    }

    let all = names(&[
        "notes/n1",
        "notes/n2",
        "batch/b1",
        "batch/b2",
        "guide/chunk-0",
        "guide/chunk-1",
    ]);
    let guide = ["guide/chunk-0", "guide/chunk-1"];
    let cases: Vec<(Value, BTreeSet<String>)> = vec![
        // Equality: a string, a number (2004 is not the string "2004"), a boolean, an element
        // of an array of strings.
        (
            json!({"must": [{"key": "lang", "eq": "en"}]}),
            names(&["notes/n1", guide[0], guide[1]]),
        ),
        (
            json!({"must": [{"key": "year", "eq": 2004}]}),
            names(&["notes/n1"]),
        ),
        (
            json!({"must": [{"key": "year", "eq": "2004"}]}),
            names(&["batch/b2"]),
        ),
        (
            json!({"must": [{"key": "year", "eq": 1999.5}]}),
            names(&["batch/b1"]),
        ),
        (
            json!({"must": [{"key": "draft", "eq": true}]}),
            names(&["notes/n1"]),
        ),
        (
            json!({"must": [{"key": "tags", "eq": "ocean"}]}),
            names(&guide),
        ),
        // Any-of.
        (
            json!({"must": [{"key": "lang", "any": ["de", "fr"]}]}),
            names(&["batch/b1", "batch/b2"]),
        ),
        (
            json!({"must": [{"key": "year", "any": [2004, "2004"]}]}),
            names(&["notes/n1", "batch/b2"]),
        ),
        // Ranges: numbers only.
        (
            json!({"must": [{"key": "year", "range": {"gte": 2000, "lt": 2010}}]}),
            names(&["notes/n1"]),
        ),
        (
            json!({"must": [{"key": "year", "range": {"gt": 1999}}]}),
            names(&["notes/n1", "batch/b1", guide[0], guide[1]]),
        ),
        // Negation keeps points without the key.
        (
            json!({"must_not": [{"key": "lang", "eq": "en"}]}),
            names(&["notes/n2", "batch/b1", "batch/b2"]),
        ),
        (
            json!({"must_not": [{"key": "tags", "any": ["astro"]}]}),
            names(&["notes/n2", "batch/b1", "batch/b2"]),
        ),
        // AND-ed with each other and with the asset filter.
        (
            json!({"must": [{"key": "tags", "eq": "astro"}],
                   "must_not": [{"key": "draft", "eq": true}]}),
            names(&guide),
        ),
        // A key no point has: nothing for eq, any and range; everything for must_not.
        (json!({"must": [{"key": "nope", "eq": "x"}]}), names(&[])),
        (
            json!({"must": [{"key": "nope", "any": ["x", 1]}]}),
            names(&[]),
        ),
        (
            json!({"must": [{"key": "nope", "range": {"gte": 0}}]}),
            names(&[]),
        ),
        (
            json!({"must_not": [{"key": "nope", "eq": "x"}]}),
            all.clone(),
        ),
    ];
    for (metadata, expected) in &cases {
        for mode in ["keyword", "dense", "hybrid"] {
            assert_eq!(
                &found(&app, &token, mode, json!({"metadata": metadata})).await,
                expected,
                "{mode} {metadata}"
            );
        }
    }
    assert_eq!(
        found(
            &app,
            &token,
            "keyword",
            json!({"asset_id": "notes", "metadata": {"must_not": [{"key": "nope", "eq": 1}]}})
        )
        .await,
        names(&["notes/n1", "notes/n2"])
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_filters_never_cross_organizations() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.token(Uuid::new_v4()), app.token(Uuid::new_v4()));
    corpus(&app, &a).await;
    corpus(&app, &b).await;
    let b_points: BTreeSet<String> = app
        .search(
            &b,
            &json!({"query": QUERY, "model": "mock", "mode": "keyword", "limit": 100}),
        )
        .await["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| hit["point_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(b_points.len(), 6);
    for metadata in [
        json!({"must_not": [{"key": "nope", "eq": "x"}]}),
        json!({"must": [{"key": "lang", "any": ["en", "de", "fr"]}]}),
        json!({"must": [{"key": "year", "range": {"gte": -1e15}}]}),
    ] {
        for mode in ["keyword", "dense", "hybrid"] {
            let hits = app
                .search(
                    &b,
                    &json!({"query": QUERY, "model": "mock", "mode": mode, "limit": 100,
                            "score_threshold": -1.0, "filter": {"metadata": metadata}}),
                )
                .await;
            for hit in hits["results"].as_array().unwrap() {
                assert!(
                    b_points.contains(hit["point_id"].as_str().unwrap()),
                    "{mode} {metadata}: {hit}"
                );
            }
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_metadata_is_a_new_version_and_a_new_job() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    let text = "Sentence 0 talks about planets and distant stars. Sentence 1 talks about oceans and rolling tides.";
    let put = |metadata: Value| {
        let (app, token) = (&app, &token);
        async move {
            let mut body = json!({"text": text, "model": "mock",
                                  "chunk": {"max_tokens": 8, "overlap": 0}});
            if !metadata.is_null() {
                body["metadata"] = metadata;
            }
            let response = app
                .http
                .put(app.url("/documents/doc"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()
        }
    };
    let plain = put(Value::Null).await;
    succeeded(&app, &token, &plain["job_id"]).await;
    let v1 = put(json!({"rev": 1})).await;
    assert_ne!(
        v1["version"], plain["version"],
        "metadata is part of the version"
    );
    let job = succeeded(&app, &token, &v1["job_id"]).await;
    assert_eq!(job["result"]["written"], 2, "{job}");
    assert_eq!(job["result"]["kept"], 0, "{job}");
    // The same metadata again is the same version and job.
    let again = put(json!({"rev": 1})).await;
    assert_eq!(again["job_id"], v1["job_id"]);
    let v2 = put(json!({"rev": 2})).await;
    assert_ne!(v2["version"], v1["version"]);
    let job = succeeded(&app, &token, &v2["job_id"]).await;
    assert_eq!(job["result"]["written"], 2, "{job}");
    let rev = |n: i64| json!({"metadata": {"must": [{"key": "rev", "eq": n}]}});
    assert!(found(&app, &token, "keyword", rev(1)).await.is_empty());
    assert_eq!(found(&app, &token, "keyword", rev(2)).await.len(), 2);

    // A single segment: changed metadata is a new job that rewrites the point.
    let segment = |metadata: Value| {
        json!({"asset_id": "s", "segment_id": "s1", "model": "mock", "text": "Stars.",
               "metadata": metadata})
    };
    let first = accepted(
        &app,
        &token,
        "/vectors/embed",
        segment(json!({"a": 1, "b": "x"})),
    )
    .await;
    let same = accepted(
        &app,
        &token,
        "/vectors/embed",
        segment(json!({"b": "x", "a": 1})),
    )
    .await;
    assert_eq!(first["job_id"], same["job_id"], "key order does not matter");
    succeeded(&app, &token, &first["job_id"]).await;
    let changed = accepted(&app, &token, "/vectors/embed", segment(json!({"a": 2}))).await;
    assert_ne!(changed["job_id"], first["job_id"]);
    assert_eq!(changed["point_id"], first["point_id"]);
    succeeded(&app, &token, &changed["job_id"]).await;
    let stored: Value = app
        .get(
            &token,
            &format!("/vectors/{}", changed["point_id"].as_str().unwrap()),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored["payload"]["meta"], json!({"a": 2}));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_metadata_and_bad_filters_are_422_with_the_reason() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!(i))).collect();
    let cases = [
        (
            "/vectors/embed",
            json!({"asset_id": "a", "segment_id": "s", "text": "t", "model": "mock",
                   "metadata": {"nested": {"x": 1}}}),
            "metadata value of \"nested\" must be a string, a number, a boolean or an array of strings, got an object",
        ),
        (
            "/vectors/embed",
            json!({"asset_id": "a", "segment_id": "s", "text": "t", "model": "mock",
                   "metadata": many}),
            "metadata has 33 keys; at most 32",
        ),
        (
            "/vectors/embed",
            json!({"asset_id": "a", "segment_id": "s", "text": "t", "model": "mock",
                   "metadata": {"big": "x".repeat(9000)}}),
            "metadata is 9010 bytes as JSON; at most 8192",
        ),
        (
            "/vectors/embed/batch",
            json!({"asset_id": "a", "model": "mock", "segments": [
                {"segment_id": "s0", "text": "t"},
                {"segment_id": "s1", "text": "t", "metadata": {"n": [1, 2]}}]}),
            "segments[1].metadata value of \"n\" is an array that may hold only strings, got a number at [0]",
        ),
        (
            "/vectors/documents",
            json!({"asset_id": "a", "text": "t", "model": "mock", "metadata": {"a.b": 1}}),
            "metadata key \"a.b\" may hold only ASCII letters, digits, `_` and `-`, not '.'",
        ),
        (
            "/vectors/documents",
            json!({"asset_id": "a", "text": "t", "model": "mock", "metadata": ["x"]}),
            "metadata must be an object of keys and values, got an array",
        ),
        (
            "/vectors/search",
            json!({"query": "q", "model": "mock",
                   "filter": {"metadata": {"must": [{"key": "k", "eq": [1]}]}}}),
            "filter.metadata.must[0] `eq` must be a string, a number or a boolean, got an array",
        ),
        (
            "/vectors/search",
            json!({"query": "q", "model": "mock",
                   "filter": {"metadata": {"must_not": [{"key": "k", "eq": 1, "any": [1]}]}}}),
            "filter.metadata.must_not[0] takes only one of `eq`, `any` and `range`",
        ),
        (
            "/vectors/search",
            json!({"query": "q", "model": "mock",
                   "filter": {"metadata": {"must": [{"key": "k", "range": {}}]}}}),
            "filter.metadata.must[0] `range` needs at least one of `gt`, `gte`, `lt` and `lte`",
        ),
    ];
    for (path, body, detail) in cases {
        let response = app.post_json(&token, path, &body).await;
        assert_eq!(response.status(), 422, "{path} {body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "validation_error", "{problem}");
        assert_eq!(problem["detail"], detail, "{path}");
    }
    let response = app
        .http
        .put(app.url("/documents/a"))
        .bearer_auth(&token)
        .json(&json!({"text": "t", "model": "mock", "metadata": {"k": null}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    // A typo in a condition's own fields is an unknown field, like any other typo: 400.
    let response = app
        .post_json(
            &token,
            "/vectors/search",
            &json!({"query": "q", "model": "mock",
                    "filter": {"metadata": {"must": [{"key": "k", "eqq": 1}]}}}),
        )
        .await;
    let status = response.status();
    let problem: Value = response.json().await.unwrap();
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("did you mean `filter.metadata.must[0].eq`"),
        "{problem}"
    );
    app.stop().await;
}
