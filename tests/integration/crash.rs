//! `kill -9` of a real `heimdex serve` process (with its embedded nats-server) mid-run, then a
//! restart on the same data dir: every accepted job completes, each with exactly one point.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use heimdex_tests::{JWT_SECRET, eventually, heimdex_bin, wait_for_job};
use tokio::process::{Child, Command};
use uuid::Uuid;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_serve(data: &std::path::Path, api_port: u16) -> Child {
    Command::new(heimdex_bin())
        .arg("serve")
        .env_remove("NATS_URL")
        .env_remove("QDRANT_URL")
        .env("HEIMDEX_DATA_DIR", data)
        .env("HEIMDEX_API_ADDR", format!("127.0.0.1:{api_port}"))
        .env("HEIMDEX_NATS_LISTEN", "127.0.0.1:0")
        .env("JWT_SECRET", JWT_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("heimdex serve starts")
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    eventually(Duration::from_secs(60), || async {
        let response = http.get(format!("{base}/readyz")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await
    .expect("service becomes ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_loses_nothing_and_duplicates_nothing() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let org = Uuid::new_v4();
    let jwt = heimdex_api::auth::JwtConfig {
        secret: JWT_SECRET.to_owned().into(),
        public_key_pem: None,
        issuer: None,
        audience: None,
    };
    let token =
        heimdex_api::auth::issue_token(&jwt, org, "crash", Duration::from_secs(600)).unwrap();

    let mut serve = spawn_serve(data.path(), port);
    wait_ready(&http, &base).await;

    const JOBS: usize = 1_500;
    let posts = futures::stream::iter(0..JOBS).map(|i| {
        let (http, base, token) = (&http, &base, &token);
        async move {
            let response = http
                .post(format!("{base}/vectors/mock"))
                .bearer_auth(token)
                .json(&serde_json::json!({"asset_id": "crash", "segment_id": format!("s-{i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            response.json::<serde_json::Value>().await.unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    });
    let jobs: Vec<String> = posts.buffer_unordered(32).collect().await;

    // Kill while the worker is still going: as soon as the first job is visible as done.
    wait_for_job(
        &http,
        &base,
        &token,
        &jobs[0],
        "SUCCEEDED",
        Duration::from_secs(30),
    )
    .await;
    serve.start_kill().unwrap();
    serve.wait().await.unwrap();

    let mut serve = spawn_serve(data.path(), port);
    wait_ready(&http, &base).await;
    for job in &jobs {
        let status = wait_for_job(
            &http,
            &base,
            &token,
            job,
            "SUCCEEDED",
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(status["status"], "SUCCEEDED", "{status}");
    }

    // Graceful stop (SIGTERM), then count the points in the store the service used.
    let pid = serve.id().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), serve.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "graceful shutdown exits 0, got {exit}");

    let store = heimdex_store::open(heimdex_store::StoreConfig {
        backend: heimdex_store::Backend::Embedded {
            path: data.path().join("qdrant"),
        },
        collection: "embeddings".into(),
        vector_size: 384,
    })
    .await
    .unwrap();
    let expected: HashSet<Uuid> = (0..JOBS)
        .map(|i| heimdex_domain::ids::point_id(org, "crash", &format!("s-{i}"), "mock", "v1"))
        .collect();
    let ids: Vec<Uuid> = store.scroll_ids(org, Default::default()).await.unwrap();
    assert_eq!(ids.len(), JOBS, "no point missing, none extra");
    assert_eq!(ids.iter().copied().collect::<HashSet<_>>(), expected);
    assert_eq!(
        store.count(org, Default::default()).await.unwrap(),
        JOBS as u64
    );
}
