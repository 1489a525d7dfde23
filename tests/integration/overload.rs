//! Overload behaviour: the per-org rate limit, the bound on work in flight, and the HTTP
//! header/read timeouts. Each refusal must store nothing, and everything accepted must finish.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use heimdex_tests::{TestApp, eventually};

/// How many `requested` events the stream holds for `org`: what was really accepted.
async fn stored_jobs(app: &TestApp, org: Uuid) -> usize {
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());
    let stream = js.get_stream("HEIMDEX_JOBS").await.unwrap();
    let subjects = stream
        .info_with_subjects(format!("heimdex.jobs.{org}.*.requested"))
        .await
        .unwrap();
    subjects
        .map(|subject| subject.unwrap().1)
        .fold(0, |sum, n| async move { sum + n })
        .await
}

/// Asserts an overload refusal: status, problem+json with `code`, and a `Retry-After` ≥ 1 s.
async fn assert_refused(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], code, "{problem}");
    assert_eq!(problem["status"], status);
}

fn mock_batch(asset: &str, n: usize) -> Value {
    let segments: Vec<Value> = (0..n)
        .map(|i| json!({"segment_id": format!("s-{i}"), "text": format!("text {i}")}))
        .collect();
    json!({"asset_id": asset, "segments": segments, "model": "mock"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after_and_stores_nothing() {
    let app = TestApp::spawn_with(&[
        ("HEIMDEX_RATE_LIMIT_JOBS_PER_SEC", "1"),
        ("HEIMDEX_RATE_LIMIT_BURST", "5"),
    ])
    .await;
    let org = Uuid::new_v4();
    let token = app.token(org);

    // A request that could never fit the bucket is a client error, not a wait.
    let too_big = app
        .post_json(&token, "/vectors/embed/batch", &mock_batch("big", 6))
        .await;
    assert_eq!(too_big.status(), 413);
    assert_eq!(stored_jobs(&app, org).await, 0);

    // A token is a job: one batch of five empties the bucket…
    let batch = app
        .post_json(&token, "/vectors/embed/batch", &mock_batch("full", 5))
        .await;
    assert_eq!(batch.status(), 202);
    let batch: Value = batch.json().await.unwrap();
    let mut accepted: Vec<String> = batch["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["job_id"].as_str().unwrap().to_owned())
        .collect();

    // …so single jobs are refused until it refills (one a second). Post until one is refused;
    // on a loaded machine a token may have come back in between, so a few may pass first.
    let mut refused = None;
    for i in 0..20 {
        let response = app.post_mock(&token, "single", &format!("seg-{i}")).await;
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        accepted.push(body["job_id"].as_str().unwrap().to_owned());
    }
    let refused = refused.expect("a burst of single jobs hits the rate limit");
    assert_refused(refused, 429, "rate_limited").await;
    // The refused job was not stored: the stream holds exactly the accepted ones.
    assert_eq!(stored_jobs(&app, org).await, accepted.len());

    // Another org has its own bucket.
    let other = app.token(Uuid::new_v4());
    assert_eq!(app.post_mock(&other, "other", "seg").await.status(), 202);

    // Waiting as told is enough to be accepted again.
    let again = eventually(Duration::from_secs(30), || async {
        let response = app.post_mock(&token, "later", "seg").await;
        (response.status() == 202).then_some(response)
    })
    .await
    .expect("accepted once the bucket refills");
    let again: Value = again.json().await.unwrap();
    accepted.push(again["job_id"].as_str().unwrap().to_owned());

    app.wait_for_jobs(&token, &accepted, "SUCCEEDED", Duration::from_secs(60))
        .await;
    assert_eq!(stored_jobs(&app, org).await, accepted.len());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_bound_refuses_new_jobs_while_workers_lag_and_accepted_jobs_complete() {
    let mut app = TestApp::spawn_without_worker(&[("HEIMDEX_MAX_BACKLOG", "5")]).await;
    let org = Uuid::new_v4();
    let token = app.token(org);

    // No worker: jobs pile up until the cached backlog reaches the bound, then new jobs are
    // refused. The figure is refreshed twice a second, so a few more than 5 may get in.
    let mut accepted = Vec::new();
    let started = Instant::now();
    let refused = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the backlog bound never refused a job ({} accepted)",
            accepted.len()
        );
        let response = app
            .post_mock(&token, "backlog", &format!("seg-{}", accepted.len()))
            .await;
        if response.status() == 503 {
            break response;
        }
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        accepted.push(body["job_id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        accepted.len() >= 5,
        "refused before the bound: {accepted:?}"
    );
    assert_refused(refused, 503, "backlog_full").await;
    // Batches are refused too, whatever their size; nothing of theirs is stored.
    let batch = app
        .post_json(&token, "/vectors/embed/batch", &mock_batch("batch", 3))
        .await;
    assert_refused(batch, 503, "backlog_full").await;
    assert_eq!(stored_jobs(&app, org).await, accepted.len());

    // Reads are not refused by the bound.
    let job = app.get(&token, &format!("/jobs/{}", accepted[0])).await;
    assert_eq!(job.status(), 200);
    let search = app
        .post_json(
            &token,
            "/vectors/search",
            &json!({"vector": vec![0.5_f32; 384], "limit": 3}),
        )
        .await;
    assert_eq!(search.status(), 200);

    // A worker starts: every accepted job completes, and new jobs are welcome again.
    app.start_worker().await;
    app.wait_for_jobs(&token, &accepted, "SUCCEEDED", Duration::from_secs(90))
        .await;
    let after = eventually(Duration::from_secs(30), || async {
        let response = app.post_mock(&token, "after", "seg").await;
        (response.status() == 202).then_some(response)
    })
    .await
    .expect("accepted once the backlog drained");
    let after: Value = after.json().await.unwrap();
    let after = after["job_id"].as_str().unwrap().to_owned();
    app.wait_for_jobs(&token, &[after], "SUCCEEDED", Duration::from_secs(60))
        .await;
    assert_eq!(stored_jobs(&app, org).await, accepted.len() + 1);
    app.stop().await;
}

/// Keeps sending `trickle` one byte at a time after `prefix`, until the server closes the
/// connection; returns whether it did within `within`.
async fn closed_while_trickling(
    addr: std::net::SocketAddr,
    prefix: &[u8],
    trickle: &[u8],
    within: Duration,
) -> bool {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(prefix).await.unwrap();
    let deadline = Instant::now() + within;
    let mut bytes = trickle.iter().cycle();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        let byte = *bytes.next().unwrap();
        if conn.write_all(&[byte]).await.is_err() {
            return true;
        }
        match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await {
            // End of stream or a reset: the server hung up.
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_still_open) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_disconnected_within_the_configured_timeouts() {
    let app = TestApp::spawn_with(&[
        ("HEIMDEX_HTTP_HEADER_TIMEOUT_MS", "1000"),
        ("HEIMDEX_HTTP_READ_TIMEOUT_MS", "2000"),
    ])
    .await;
    // Generous: the bound under test is 1–2 s; the idle timeout (60 s) must not be the cause,
    // and the byte every 200 ms keeps an idle timer from ever firing.
    let within = Duration::from_secs(20);

    // Headers trickled a byte at a time never finish.
    assert!(
        closed_while_trickling(
            app.addr,
            b"GET /healthz HTTP/1.1\r\nHost: heimdex\r\n",
            b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            within,
        )
        .await,
        "a client trickling headers kept its connection"
    );

    // Complete headers, then a body trickled a byte at a time.
    let token = app.token(Uuid::new_v4());
    let head = format!(
        "POST /vectors/mock HTTP/1.1\r\nHost: heimdex\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"asset_id\": \""
    );
    assert!(
        closed_while_trickling(app.addr, head.as_bytes(), b"a", within).await,
        "a client trickling its body kept its connection"
    );

    // A client that connects and says nothing is dropped too.
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(within, silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection stayed open: {read:?}"
    );

    // The server still answers normal clients, on keep-alive connections too.
    for _ in 0..3 {
        let response = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    app.stop().await;
}
