//! The vectors are derived from the log: `POST /admin/index/rebuild` replays it into a new
//! collection that ends equal to the live one (ids, payloads, vectors), writes made during the
//! build reach it, a switch moves reads in one step, the collection left keeps up for a
//! rollback, and a store that was lost comes back exactly. Every admin route takes the admin
//! token only.

use std::time::Duration;

use heimdex_store::{PointFilter, VectorStore};
use heimdex_tests::{TestApp, eventually};

use crate::common::{Differences, Snapshot, differences, snapshot};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const ADMIN: &str = "admin-token-for-the-rebuild-tests";

fn admin_app_vars() -> [(&'static str, &'static str); 1] {
    [("HEIMDEX_ADMIN_TOKEN", ADMIN)]
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str) -> (u16, Value) {
    admin_with(app, method, path, &json!({})).await
}

async fn admin_with(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let mut request = app.http.request(method.clone(), app.url(path));
    if method == reqwest::Method::POST {
        request = request.json(body);
    }
    let response = request.bearer_auth(ADMIN).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn index(app: &TestApp) -> Value {
    let (status, state) = admin(app, reqwest::Method::GET, "/admin/index").await;
    assert_eq!(status, 200, "{state}");
    state
}

/// Waits until the build is built; returns it.
async fn built(app: &TestApp) -> Value {
    let build = eventually(WAIT, || async {
        let state = index(app).await;
        (state["building"]["phase"] == "built").then(|| state["building"].clone())
    })
    .await;
    match build {
        Some(build) => build,
        None => panic!("the build did not finish: {}", index(app).await),
    }
}

/// Posts a switch or rollback (expecting 200) and waits until this process reads from the
/// collection the state now names live; returns the state.
async fn transition(app: &TestApp, path: &str) -> Value {
    let (status, state) = admin(app, reqwest::Method::POST, path).await;
    assert_eq!(status, 200, "{path}: {state}");
    let live = state["live"]
        .as_str()
        .expect("a live collection")
        .to_owned();
    eventually(WAIT, || async {
        (app.collections.live().name == live).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the process follows {path} to {live}"));
    state
}

/// Whether, within [`WAIT`], point `id` of `org` is in `store` (`held`) or gone from it.
async fn eventually_held(
    store: &std::sync::Arc<dyn VectorStore>,
    org: Uuid,
    id: Uuid,
    held: bool,
) -> bool {
    eventually(WAIT, || {
        let store = store.clone();
        async move { (store.get(org, id, false).await.unwrap().is_some() == held).then_some(()) }
    })
    .await
    .is_some()
}

/// `DELETE /vectors/{id}`, waited for.
async fn delete_point(app: &TestApp, token: &str, id: Uuid) {
    let response = app
        .http
        .delete(app.url(&format!("/vectors/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let job = accepted(response).await;
    app.wait_for_job(token, &job, "SUCCEEDED", WAIT).await;
}

/// Writes segments `w0`, `w1`, … of asset `meanwhile` (with `model`, else the default), one
/// every `pause`, until `stop`; returns each job id with its segment.
fn steady_writes(
    app: &std::sync::Arc<TestApp>,
    token: &str,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    model: Option<&'static str>,
    pause: Duration,
) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    let (app, token, stop) = (app.clone(), token.to_owned(), stop.clone());
    tokio::spawn(async move {
        let mut written = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let i = written.len();
            let mut body = json!({"asset_id": "meanwhile", "segment_id": format!("w{i}"),
                                  "text": format!("written meanwhile, number {i}")});
            if let Some(model) = model {
                body["model"] = json!(model);
            }
            let response = app.post_json(&token, "/vectors/embed", &body).await;
            written.push((accepted(response).await, format!("w{i}")));
            tokio::time::sleep(pause).await;
        }
        written
    })
}

/// The job id of a 202.
async fn accepted(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["job_id"].as_str().unwrap().to_owned()
}

async fn put_document(app: &TestApp, token: &str, asset: &str, text: &str) -> String {
    let response = app
        .http
        .put(app.url(&format!("/documents/{asset}")))
        .bearer_auth(token)
        .json(
            &json!({"text": text, "model": "mock", "chunk": {"max_tokens": 8, "overlap": 0},
                      "metadata": {"team": "docs"}}),
        )
        .send()
        .await
        .unwrap();
    accepted(response).await
}

fn sentences(n: usize, changed: Option<usize>) -> String {
    (0..n)
        .map(|i| match Some(i) == changed {
            true => format!("Sentence {i} was rewritten about oceans and tides."),
            false => format!("Sentence {i} talks about planets and distant stars."),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A log with every kind of job: a document and a second version of it (some chunks kept,
/// one rewritten, the last dropped), single segments, mock points, a point delete, an asset
/// written then deleted, and a second org. Returns the orgs.
async fn history(app: &TestApp) -> Vec<Uuid> {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (ta, tb) = (app.token(a), app.token(b));
    let mut jobs: Vec<(String, String)> = Vec::new();
    jobs.push((
        ta.clone(),
        put_document(app, &ta, "handbook", &sentences(6, None)).await,
    ));
    app.wait_for_jobs(&ta, &[jobs[0].1.clone()], "SUCCEEDED", WAIT)
        .await;
    jobs.push((
        ta.clone(),
        put_document(app, &ta, "handbook", &sentences(5, Some(2))).await,
    ));
    for i in 0..3 {
        let response = app
            .post_json(
                &ta,
                "/vectors/embed",
                &json!({"asset_id": "notes", "segment_id": format!("s{i}"), "model": "mock",
                        "text": format!("note {i} on kernels and schedulers")}),
            )
            .await;
        jobs.push((ta.clone(), accepted(response).await));
    }
    for segment in ["m1", "m2", "m3"] {
        let response = app.post_mock(&ta, "mocked", segment).await;
        jobs.push((ta.clone(), accepted(response).await));
    }
    let response = app
        .post_json(
            &ta,
            "/vectors/embed",
            &json!({"asset_id": "gone", "segment_id": "s", "model": "mock", "text": "soon deleted"}),
        )
        .await;
    jobs.push((ta.clone(), accepted(response).await));
    let response = app.post_mock(&tb, "other-org", "x").await;
    jobs.push((tb.clone(), accepted(response).await));
    for (token, job) in &jobs {
        app.wait_for_jobs(token, std::slice::from_ref(job), "SUCCEEDED", WAIT)
            .await;
    }
    // Deletes: one mock point, and the whole `gone` asset.
    let m2 = heimdex_domain::ids::point_id(a, "mocked", "m2", "mock", "v1");
    let deletes = [
        app.delete(&ta, &format!("/vectors/{m2}")).await,
        app.delete(&ta, "/assets/gone").await,
    ];
    for response in deletes {
        let job = accepted(response).await;
        app.wait_for_jobs(&ta, &[job], "SUCCEEDED", WAIT).await;
    }
    vec![a, b]
}

fn assert_same(expected: &Snapshot, got: &Snapshot) {
    assert_eq!(differences(expected, got), Differences::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_take_the_admin_token_and_nothing_else() {
    let app = TestApp::spawn_with(&admin_app_vars()).await;
    let tenant = app.token(Uuid::new_v4());
    for (token, status) in [
        (Some(tenant.as_str()), 401),
        (None, 401),
        (Some(ADMIN), 200),
    ] {
        let mut request = app.http.get(app.url("/admin/index"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        if status != 200 {
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
        }
    }
    let response = app
        .http
        .post(app.url("/admin/index/rebuild"))
        .bearer_auth(&tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "a tenant cannot start a rebuild");
    // Nothing to switch to, roll back to, or drop: 409 problems naming why.
    for path in [
        "/admin/index/switch",
        "/admin/index/rollback",
        "/admin/index/drop",
    ] {
        let (status, problem) = admin(&app, reqwest::Method::POST, path).await;
        assert_eq!(status, 409, "{path}: {problem}");
        assert_eq!(problem["code"], "index_state", "{problem}");
    }
    app.stop().await;

    let app = TestApp::spawn().await;
    let response = app
        .http
        .get(app.url("/admin/index"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "no admin token configured: off");
    app.stop().await;
}

/// Rebuild, switch, write, roll back, drop: the build equals the live collection, a write
/// during the build and one after the switch reach both collections, and reads follow the
/// switch and the rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_is_rebuilt_from_the_log_switched_and_rolled_back() {
    let app = TestApp::spawn_with(&admin_app_vars()).await;
    let orgs = history(&app).await;
    let before = snapshot(app.store.as_ref(), &orgs).await;
    assert_eq!(
        before.len(),
        5 + 3 + 2 + 1,
        "handbook v2, notes, mocked, other org"
    );
    let base = app.collections.configured().to_owned();

    let (status, state) = admin(&app, reqwest::Method::POST, "/admin/index/rebuild").await;
    assert_eq!(status, 202, "{state}");
    let collection = format!("{base}-1");
    assert_eq!(state["building"]["collection"], collection.as_str());
    assert_eq!(state["live"], base.as_str());
    let (status, problem) = admin(&app, reqwest::Method::POST, "/admin/index/rebuild").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("index_state"))
    );

    let build = built(&app).await;
    let comparison = &build["comparison"];
    assert_eq!(comparison["identical"], true, "{build}");
    assert_eq!(comparison["built"], before.len(), "{build}");
    assert_eq!(build["jobs"], 12, "every succeeded job: {build}");
    assert_eq!(build["skipped"], 0, "{build}");
    let rebuilt = app.collections.get(&collection).await.unwrap();
    assert_same(&before, &snapshot(rebuilt.as_ref(), &orgs).await);

    // A write while the build is not live yet reaches it.
    let org = orgs[0];
    let token = app.token(org);
    let during = put_document(&app, &token, "during", "Written while the build waited.").await;
    app.wait_for_jobs(&token, &[during], "SUCCEEDED", WAIT)
        .await;
    let during_id = heimdex_domain::ids::point_id(org, "during", "chunk-0", "mock", "v1");
    let reached = |store: std::sync::Arc<dyn VectorStore>, id: Uuid| async move {
        eventually(WAIT, || {
            let store = store.clone();
            async move { store.get(org, id, false).await.unwrap().map(|_| ()) }
        })
        .await
        .is_some()
    };
    assert!(
        reached(rebuilt.clone(), during_id).await,
        "the write during the build reached it"
    );

    // Switch: reads move to the build.
    let state = transition(&app, "/admin/index/switch").await;
    assert_eq!(
        (state["live"].as_str(), state["previous"].as_str()),
        (Some(collection.as_str()), Some(base.as_str()))
    );
    let search = app
        .search(
            &token,
            &json!({"query": "planets distant stars", "model": "mock", "mode": "keyword", "limit": 20}),
        )
        .await;
    assert!(
        !search["results"].as_array().unwrap().is_empty(),
        "{search}"
    );

    // A write after the switch lands in the new live collection and, through the indexer,
    // in the one kept for a rollback.
    let after = put_document(&app, &token, "after", "Written after the switch.").await;
    let job = app.wait_for_jobs(&token, &[after], "SUCCEEDED", WAIT).await;
    assert_eq!(
        job[0]["result"]["collection"],
        collection.as_str(),
        "{}",
        job[0]
    );
    let after_id = heimdex_domain::ids::point_id(org, "after", "chunk-0", "mock", "v1");
    let old = app.collections.get(&base).await.unwrap();
    assert!(reached(rebuilt.clone(), after_id).await);
    assert!(
        reached(old.clone(), after_id).await,
        "the previous collection keeps up"
    );
    assert!(reached(old.clone(), during_id).await);

    // Roll back: reads go back, and nothing written meanwhile is missing.
    let state = transition(&app, "/admin/index/rollback").await;
    assert_eq!(state["live"], base.as_str());
    let live = snapshot(app.store.as_ref(), &orgs).await;
    assert!(live.contains_key(&after_id) && live.contains_key(&during_id));
    assert_eq!(live.len(), before.len() + 2);

    // Drop the other one: no more writes to it.
    let (status, dropped) = admin(&app, reqwest::Method::POST, "/admin/index/drop").await;
    assert_eq!(status, 200, "{dropped}");
    assert_eq!(dropped["dropped"], collection.as_str());
    assert!(dropped["index"]["previous"].is_null(), "{dropped}");
    app.stop().await;
}

/// The store's directory is lost (deleted while the service was down): the service starts on
/// an empty collection, a rebuild brings back exactly the points it had (ids, payloads,
/// vectors), and a switch serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_comes_back_exactly_from_the_log() {
    let app = TestApp::spawn_with(&admin_app_vars()).await;
    let orgs = history(&app).await;
    let before = snapshot(app.store.as_ref(), &orgs).await;
    let app = app
        .restart(|data| std::fs::remove_dir_all(data.join("qdrant")).expect("the store's dir"))
        .await;
    for &org in &orgs {
        assert_eq!(
            app.store.count(org, PointFilter::default()).await.unwrap(),
            0,
            "the store is lost"
        );
    }
    let (status, state) = admin(&app, reqwest::Method::POST, "/admin/index/rebuild").await;
    assert_eq!(status, 202, "{state}");
    let build = built(&app).await;
    let comparison = &build["comparison"];
    assert_eq!(
        (&comparison["missing"], &comparison["extra"]),
        (&json!(0), &json!(before.len())),
        "{build}"
    );
    transition(&app, "/admin/index/switch").await;
    assert_same(&before, &snapshot(app.store.as_ref(), &orgs).await);
    app.stop().await;
}

/// A rebuild stopped part-way (its process stopped) goes on from where it was when the
/// service is back, and ends as an uninterrupted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_stopped_part_way_resumes_and_ends_the_same() {
    // Batches of one job, so the replay records its progress many times on the way.
    let app = TestApp::spawn_with(&[
        ("HEIMDEX_ADMIN_TOKEN", ADMIN),
        ("HEIMDEX_WORKER_CONCURRENCY", "1"),
    ])
    .await;
    let org = Uuid::new_v4();
    let token = app.token(org);
    let mut jobs = Vec::new();
    for i in 0..400 {
        let response = app
            .post_json(
                &token,
                "/vectors/embed",
                &json!({"asset_id": format!("a{}", i % 40), "segment_id": format!("s{i}"),
                        "model": "mock", "text": format!("text number {i} about rebuilding")}),
            )
            .await;
        jobs.push(accepted(response).await);
    }
    app.wait_for_jobs(&token, &jobs, "SUCCEEDED", WAIT).await;
    let before = snapshot(app.store.as_ref(), &[org]).await;
    assert_eq!(before.len(), 400);

    let (status, _) = admin(&app, reqwest::Method::POST, "/admin/index/rebuild").await;
    assert_eq!(status, 202);
    let part = eventually(WAIT, || async {
        let state = index(&app).await;
        let replayed = state["building"]["replayed"].as_u64().unwrap_or(0);
        (replayed > 0).then_some(state)
    })
    .await
    .expect("the replay records progress");
    assert_eq!(
        part["building"]["phase"], "replaying",
        "stopped part-way: {part}"
    );
    let app = app.restart(|_| {}).await;
    let build = built(&app).await;
    assert_eq!(
        build["comparison"]["identical"], true,
        "{build} after {part}"
    );
    // Resumed, not begun again: every job counted once, from where it was.
    assert_eq!(
        (&build["jobs"], &build["replayed"]),
        (&json!(400), &json!(400)),
        "{build}"
    );
    assert_eq!(build["started_at"], part["building"]["started_at"]);
    let rebuilt = app
        .collections
        .get(build["collection"].as_str().unwrap())
        .await
        .unwrap();
    assert_same(&before, &snapshot(rebuilt.as_ref(), &[org]).await);
    app.stop().await;
}

/// The remote store, started again on an empty collection (with `QDRANT_URL`, a new collection
/// on that Qdrant server; else an empty stand-in server): a rebuild fills it from the log with
/// exactly the points the first one had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_remote_collection_is_filled_again_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let standin = |name: &str| {
        heimdex_qdrant_standin::Standin::start(
            dir.path().join(name),
            "127.0.0.1:0".parse().unwrap(),
        )
    };
    let server = std::env::var("QDRANT_URL")
        .ok()
        .filter(|url| !url.is_empty());
    let (first, second) = match &server {
        Some(_) => (None, None),
        None => (
            Some(standin("first").await.expect("stand-in starts")),
            Some(standin("second").await.expect("stand-in starts")),
        ),
    };
    let url = |standin: &Option<heimdex_qdrant_standin::Standin>| match (standin, &server) {
        (Some(standin), _) => standin.url(),
        (None, Some(url)) => url.clone(),
        (None, None) => unreachable!("a stand-in when there is no server"),
    };
    let (first_url, second_url) = (url(&first), url(&second));
    let name = format!("rebuild_{}", Uuid::new_v4().simple());
    let empty = format!("{name}_empty");
    let app = TestApp::spawn_with(&[
        ("HEIMDEX_ADMIN_TOKEN", ADMIN),
        ("QDRANT_URL", &first_url),
        ("QDRANT_COLLECTION_NAME", &name),
    ])
    .await;
    let orgs = history(&app).await;
    let before = snapshot(app.store.as_ref(), &orgs).await;
    let app = app
        .restart_with(
            &[
                ("HEIMDEX_ADMIN_TOKEN", ADMIN),
                ("QDRANT_URL", &second_url),
                ("QDRANT_COLLECTION_NAME", &empty),
            ],
            |_| {},
        )
        .await;
    drop(first);
    for &org in &orgs {
        assert_eq!(
            app.store.count(org, PointFilter::default()).await.unwrap(),
            0
        );
    }
    let (status, state) = admin(&app, reqwest::Method::POST, "/admin/index/rebuild").await;
    assert_eq!(status, 202, "{state}");
    let build = built(&app).await;
    assert_eq!(build["collection"], format!("{empty}-1"), "{build}");
    assert_eq!(build["comparison"]["extra"], before.len(), "{build}");
    transition(&app, "/admin/index/switch").await;
    assert_same(&before, &snapshot(app.store.as_ref(), &orgs).await);
    app.stop().await;
    drop(second);
}

/// A rebuild, a switch and a rollback under a steady search load and steady writes: no search
/// fails, none comes back empty for a query that matched before, and every write made
/// meanwhile is in both collections at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_and_writes_go_on_through_a_rebuild_a_switch_and_a_rollback() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let app = Arc::new(TestApp::spawn_with(&admin_app_vars()).await);
    let org = Uuid::new_v4();
    let token = app.token(org);
    let topics = [
        "aurora", "basalt", "cobalt", "dune", "ember", "fjord", "glacier", "harbor",
    ];
    let mut seeded = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let response = app
            .post_json(
                &token,
                "/vectors/embed",
                &json!({"asset_id": "seed", "segment_id": format!("s{i}"), "model": "mock",
                        "text": format!("a note about {topic} and nothing else")}),
            )
            .await;
        seeded.push(accepted(response).await);
    }
    app.wait_for_jobs(&token, &seeded, "SUCCEEDED", WAIT).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (searches, failed, empty) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let searching = tokio::spawn({
        let (app, token, stop) = (app.clone(), token.clone(), stop.clone());
        let (searches, failed, empty) = (searches.clone(), failed.clone(), empty.clone());
        async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"query": topics[i % topics.len()], "model": "mock",
                                  "mode": "keyword", "limit": 3});
                let response = app.post_json(&token, "/vectors/search", &body).await;
                searches.fetch_add(1, Ordering::Relaxed);
                if response.status() != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                } else {
                    let results: Value = response.json().await.unwrap();
                    if results["results"].as_array().is_none_or(Vec::is_empty) {
                        empty.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let writing = steady_writes(&app, &token, &stop, Some("mock"), Duration::from_millis(50));

    let base = app.collections.configured().to_owned();
    let collection = format!("{base}-1");
    let (status, _) = admin(&app, reqwest::Method::POST, "/admin/index/rebuild").await;
    assert_eq!(status, 202);
    built(&app).await;
    for (path, live) in [
        ("/admin/index/switch", &collection),
        ("/admin/index/rollback", &base),
    ] {
        let state = transition(&app, path).await;
        assert_eq!(state["live"], live.as_str());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    searching.await.unwrap();
    let written = writing.await.unwrap();
    let jobs: Vec<String> = written.iter().map(|(job, _)| job.clone()).collect();
    app.wait_for_jobs(&token, &jobs, "SUCCEEDED", WAIT).await;

    let searches = searches.load(Ordering::Relaxed);
    assert!(searches > 20, "a steady load: {searches} searches");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no search failed of {searches}"
    );
    assert_eq!(
        empty.load(Ordering::Relaxed),
        0,
        "no search came back empty of {searches}"
    );
    assert!(written.len() > 5, "steady writes: {}", written.len());
    for name in [&base, &collection] {
        let store = app.collections.get(name).await.unwrap();
        for (_, segment) in &written {
            let id = heimdex_domain::ids::point_id(org, "meanwhile", segment, "mock", "v1");
            assert!(
                eventually_held(&store, org, id, true).await,
                "{segment} written meanwhile is in {name}"
            );
        }
    }
    Arc::into_inner(app)
        .expect("the test's own handle")
        .stop()
        .await;
}

/// A model change under a constant search and write load, from the build to the switch to a
/// rollback: texts sent with the default model (and with `model: mock`) are embedded by
/// paraphrase-MiniLM-L3-v2 in the new collection; searches that name no model move to it at
/// the switch and back at the rollback, never failing or coming back empty; every write made
/// meanwhile is in both collections; a point deleted by the id its job named is gone from
/// both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_change_goes_from_build_to_switch_to_rollback_without_a_gap() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    const L6: &str = "minilm-l6-v2";
    const L3: &str = "paraphrase-minilm-l3-v2";
    let registry = heimdex_embed::Registry::load(None, 384, heimdex_embed::ThreadBudget::ONE);
    let version = |model: &str| {
        registry
            .get(Some(model))
            .unwrap_or_else(|err| panic!("{model} installed by deploy/setup.sh: {err}"))
            .model_ver()
            .to_owned()
    };
    let (l6_ver, l3_ver) = (version(L6), version(L3));

    let app = Arc::new(TestApp::spawn_with(&admin_app_vars()).await);
    let org = Uuid::new_v4();
    let token = app.token(org);
    let topics = [
        "volcanoes erupting lava",
        "bread baking in an oven",
        "a football match final",
        "planting tomatoes in spring",
        "compilers and type systems",
        "whales in the ocean",
    ];
    let mut seeded = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let response = app
            .post_json(
                &token,
                "/vectors/embed",
                &json!({"asset_id": "seed", "segment_id": format!("s{i}"),
                        "text": format!("a note about {topic}")}),
            )
            .await;
        seeded.push(accepted(response).await);
    }
    let response = app
        .post_json(
            &token,
            "/vectors/embed",
            &json!({"asset_id": "seed", "segment_id": "with-mock", "model": "mock",
                    "text": "a mock-embedded note about glaciers"}),
        )
        .await;
    seeded.push(accepted(response).await);
    let response = app
        .post_json(
            &token,
            "/vectors/mock",
            &json!({"asset_id": "seed", "segment_id": "no-text"}),
        )
        .await;
    seeded.push(accepted(response).await);
    app.wait_for_jobs(&token, &seeded, "SUCCEEDED", WAIT).await;

    // Searches that name no model, each recorded with when it began and what it answered.
    let stop = Arc::new(AtomicBool::new(false));
    let searching = tokio::spawn({
        let (app, token, stop) = (app.clone(), token.clone(), stop.clone());
        async move {
            let mut seen: Vec<(Instant, u16, Value)> = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"query": topics[i % topics.len()], "limit": 3});
                let began = Instant::now();
                let response = app.post_json(&token, "/vectors/search", &body).await;
                let status = response.status().as_u16();
                seen.push((began, status, response.json().await.unwrap_or(Value::Null)));
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        }
    });
    let writing = steady_writes(&app, &token, &stop, None, Duration::from_millis(150));

    let base = app.collections.configured().to_owned();
    let collection = format!("{base}-1");
    let (status, state) = admin_with(
        &app,
        reqwest::Method::POST,
        "/admin/index/rebuild",
        &json!({"model": L3, "from": [L6, "mock"]}),
    )
    .await;
    assert_eq!(status, 202, "{state}");
    assert_eq!(state["building"]["model_change"]["to"], L3);
    let build = built(&app).await;
    assert_eq!(
        build["not_reembeddable"], 1,
        "the /vectors/mock job: {build}"
    );
    // Compared by the id each point's job named: the same points, the same payloads but for
    // the model. (Under constant writes the live side may be ahead by the last few: `missing`
    // is not asserted; the writes made meanwhile are checked in both collections below.)
    let comparison = &build["comparison"];
    assert_eq!(comparison["extra"], 0, "{build}");
    assert_eq!(comparison["payload_differs"], 0, "{build}");
    assert!(comparison["live"].as_u64().unwrap() >= 8, "{build}");

    let requested_switch = Instant::now();
    let state = transition(&app, "/admin/index/switch").await;
    let switched = Instant::now();
    assert_eq!(state["live"], collection.as_str());
    assert_eq!(state["default_model"], L3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // After the switch a model the change moved is not indexed: naming it is a conflict.
    let response = app
        .post_json(
            &token,
            "/vectors/search",
            &json!({"query": "lava", "model": L6}),
        )
        .await;
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "model_moved", "{problem}");

    // A delete by the id a search of the new collection shows (a re-embedded point's) is a
    // delete of the id its job named: it reaches both collections.
    let s1_new = heimdex_domain::ids::point_id(org, "seed", "s1", L3, &l3_ver);
    let s1_old = heimdex_domain::ids::point_id(org, "seed", "s1", L6, &l6_ver);
    delete_point(&app, &token, s1_new).await;

    let requested_rollback = Instant::now();
    let state = transition(&app, "/admin/index/rollback").await;
    let rolled_back = Instant::now();
    assert_eq!(state["live"], base.as_str());
    assert_eq!(state["default_model"], L6);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = searching.await.unwrap();
    let written = writing.await.unwrap();
    let jobs: Vec<String> = written.iter().map(|(job, _)| job.clone()).collect();
    app.wait_for_jobs(&token, &jobs, "SUCCEEDED", WAIT).await;

    assert!(seen.len() > 20, "a steady load: {} searches", seen.len());
    let (mut before, mut during, mut after) = (0, 0, 0);
    for (began, status, body) in &seen {
        assert_eq!(*status, 200, "no search fails: {body}");
        let results = body["results"].as_array().expect("results");
        assert!(!results.is_empty(), "no search comes back empty: {body}");
        let ver = body["model_ver"].as_str().unwrap();
        for hit in results {
            assert_eq!(
                hit["payload"]["model_ver"], ver,
                "one model per search: {body}"
            );
        }
        if *began >= switched && *began < requested_rollback {
            assert_eq!(ver, l3_ver, "after the switch, the new model: {body}");
            during += 1;
        } else if *began >= rolled_back || *began < requested_switch {
            assert_eq!(
                ver, l6_ver,
                "before the switch and after the rollback: {body}"
            );
            if *began < requested_switch {
                before += 1;
            } else {
                after += 1;
            }
        }
    }
    assert!(
        before > 0 && during > 0 && after > 0,
        "{before}/{during}/{after}"
    );

    // Every write made meanwhile is in both collections: in the new one by paraphrase-MiniLM
    // (embedded by it, or moved to it), in the old one by the model it was written with.
    assert!(written.len() > 5, "steady writes: {}", written.len());
    let (old, new) = (
        app.collections.get(&base).await.unwrap(),
        app.collections.get(&collection).await.unwrap(),
    );
    // (A write whose model was resolved before the switch and written after it is moved in
    // the new collection and kept as sent in the old one: the old one is asked by segment.)
    for (_, segment) in &written {
        let id = heimdex_domain::ids::point_id(org, "meanwhile", segment, L3, &l3_ver);
        assert!(
            eventually_held(&new, org, id, true).await,
            "{segment} written meanwhile is in {collection} by {L3}"
        );
        let filter = PointFilter {
            asset_id: Some("meanwhile".into()),
            segment_id: Some(segment.clone()),
            ..PointFilter::default()
        };
        let found = eventually(WAIT, || {
            let (old, filter) = (old.clone(), filter.clone());
            async move { (old.count(org, filter).await.unwrap() == 1).then_some(()) }
        })
        .await;
        assert!(found.is_some(), "{segment} written meanwhile is in {base}");
    }
    // The seeded texts: moved to paraphrase-MiniLM in the new collection, which records the id
    // each had; the mock job without text keeps its model.
    let moved = heimdex_domain::ids::point_id(org, "seed", "s0", L3, &l3_ver);
    let original = heimdex_domain::ids::point_id(org, "seed", "s0", L6, &l6_ver);
    let point = new
        .get(org, moved, false)
        .await
        .unwrap()
        .expect("moved point");
    assert_eq!(point.payload.moved_from, Some(original));
    let mock = heimdex_domain::ids::point_id(org, "seed", "no-text", "mock", "v1");
    assert!(new.get(org, mock, false).await.unwrap().is_some());

    for (store, id, name) in [(&old, s1_old, &base), (&new, s1_new, &collection)] {
        assert!(
            eventually_held(store, org, id, false).await,
            "s1, deleted by its new id, is gone from {name}"
        );
    }
    // A delete by the id the job named removes the point from both collections.
    delete_point(&app, &token, original).await;
    for (store, id, name) in [(&old, original, &base), (&new, moved, &collection)] {
        assert!(
            eventually_held(store, org, id, false).await,
            "the deleted point is gone from {name}"
        );
    }
    Arc::into_inner(app)
        .expect("the test's own handle")
        .stop()
        .await;
}
