//! One deadline for every protocol, and a bound on open connections, seen from raw sockets as
//! a hostile or careless client would use them.

use std::time::{Duration, Instant};

use heimdex_tests::{TestApp, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the server closes (or resets) the connection; returns what it sent, and how long
/// that took, or `None` if it was still open after `within`.
async fn read_until_closed(conn: &mut TcpStream, within: Duration) -> Option<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some((got, started.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_still_open) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_request_is_closed_over_http1_and_refused_over_http2() {
    let app = TestApp::spawn_with(&[
        ("HEIMDEX_HTTP_HEADER_TIMEOUT_MS", "1000"),
        ("HEIMDEX_HTTP_READ_TIMEOUT_MS", "2000"),
    ])
    .await;
    // Generous next to the 1 s header timeout; poem's idle timeout (60 s) must not be the cause.
    let within = Duration::from_secs(10);

    // h2c with prior knowledge: the preface, the client's SETTINGS, and a HEADERS frame on
    // stream 1 without END_HEADERS, whose block never ends.
    let mut h2 = TcpStream::connect(app.addr).await.unwrap();
    let mut opening = PREFACE.to_vec();
    opening.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    opening.extend_from_slice(&[0, 0, 4, 0x1, 0x0, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41]);
    h2.write_all(&opening).await.unwrap();
    let (answer, took) = read_until_closed(&mut h2, within)
        .await
        .expect("an unfinished HTTP/2 header block kept its connection");
    // The server's preface (an empty SETTINGS frame), then GOAWAY with HTTP_1_1_REQUIRED.
    assert!(answer.len() >= 26, "{answer:?}");
    assert_eq!(&answer[..9], &[0, 0, 0, 0x4, 0, 0, 0, 0, 0], "{answer:?}");
    assert_eq!(answer[12], 0x7, "GOAWAY: {answer:?}");
    assert_eq!(
        &answer[22..26],
        &[0, 0, 0, 0xd],
        "HTTP_1_1_REQUIRED: {answer:?}"
    );
    eprintln!("h2c with an unfinished header block: refused after {took:?}");

    // HTTP/1 with an unfinished head: closed at the header timeout.
    let mut h1 = TcpStream::connect(app.addr).await.unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: heimdex\r\n")
        .await
        .unwrap();
    let (answer, took) = read_until_closed(&mut h1, within)
        .await
        .expect("an unfinished HTTP/1 head kept its connection");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    eprintln!("HTTP/1 with an unfinished head: closed after {took:?}");

    // HTTP/1 clients are served as before.
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    app.stop().await;
}

/// Opens a connection and completes one keep-alive request on it, so the server holds it open
/// (between requests only the 60 s idle timeout applies).
async fn held_connection(addr: std::net::SocketAddr) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: heimdex\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    conn
}

/// A fresh client, so no pooled connection hides the bound.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_bound_are_refused_at_once_and_healthz_still_answers() {
    const BOUND: usize = 20;
    let bound = BOUND.to_string();
    let app = TestApp::spawn_with(&[("HEIMDEX_MAX_CONNECTIONS", &bound)]).await;
    let mut held = Vec::with_capacity(BOUND);
    for _ in 0..BOUND {
        held.push(held_connection(app.addr).await);
    }
    let token = app.token(uuid::Uuid::new_v4());

    // Over the bound: refused at once with a problem document, whatever the route…
    for _ in 0..5 {
        let started = Instant::now();
        let response = fresh_client()
            .post(app.url("/vectors/mock"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"asset_id": "a", "segment_id": "s"}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("an answer, not a hang");
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "too_many_connections", "{problem}");
        eprintln!("over the bound: 503 after {:?}", started.elapsed());
    }
    // …and a client that connects and says nothing is closed within a second.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let (answer, took) = read_until_closed(&mut silent, Duration::from_secs(10))
        .await
        .expect("a silent connection over the bound stayed open");
    assert!(answer.is_empty());
    eprintln!("over the bound, silent: closed after {took:?}");

    // Liveness still answers, on new connections.
    for _ in 0..3 {
        let response = fresh_client()
            .get(app.url("/healthz"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ok");
    }

    // The held connections are still served.
    let mut first = held.swap_remove(0);
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: heimdex\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // Once some close, new connections are served again.
    drop(first);
    drop(held.drain(..5));
    let served = eventually(Duration::from_secs(10), || async {
        let response = fresh_client()
            .post(app.url("/vectors/mock"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"asset_id": "a", "segment_id": "s"}))
            .send()
            .await
            .ok()?;
        (response.status() == 202).then_some(())
    })
    .await;
    assert!(served.is_some(), "freed slots were not reused");
    app.stop().await;
}
