//! Test support: every test gets its own real `nats-server` (random port, temp store, killed on
//! drop) and, when it needs one, the whole service running in-process on port 0 with Qdrant
//! Edge in a temp dir. Helpers speak to it over HTTP exactly as a client would.

pub mod proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use uuid::Uuid;

use heimdex::serve::{self, Roles};
use heimdex::settings::Settings;
use heimdex_event_store::nats_server::{self, NatsServer, NatsServerConfig};
use heimdex_store::VectorStore;
use tokio_util::sync::CancellationToken;

pub const JWT_SECRET: &str = "integration-test-secret-0123456789abcdef";

/// A nats-server of the test's own: [`NatsServer`] (random port, killed on drop) with its store
/// in a temp dir that lives as long as it does. Stop, kill and start it again through `Deref`.
pub struct TestNats {
    server: NatsServer,
    pub dir: TempDir,
}

impl TestNats {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = NatsServer::start(NatsServerConfig::new(
            nats_server::find_binary(None)
                .expect("nats-server: run ./deploy/setup.sh or set NATS_SERVER_BIN"),
            dir.path().join("nats"),
            "127.0.0.1:0".parse().expect("address"),
        ))
        .await
        .expect("nats-server starts");
        Self { server, dir }
    }

    pub fn url(&self) -> String {
        self.server.url().to_owned()
    }
}

impl std::ops::Deref for TestNats {
    type Target = NatsServer;

    fn deref(&self) -> &NatsServer {
        &self.server
    }
}

impl std::ops::DerefMut for TestNats {
    fn deref_mut(&mut self) -> &mut NatsServer {
        &mut self.server
    }
}

/// The embedder's thread budget every test runs with: two threads, so that batches take the
/// pool's path (a query's short pass runs on one thread whatever the budget).
pub const EMBED_THREADS: &str = "2";

/// Settings for a test: its own data dir, port 0, a fixed JWT secret, [`EMBED_THREADS`].
pub fn settings(data_dir: &std::path::Path, nats_url: &str, extra: &[(&str, &str)]) -> Settings {
    let mut vars: HashMap<String, String> = [
        ("HEIMDEX_DATA_DIR", data_dir.to_str().expect("utf-8 path")),
        ("HEIMDEX_API_ADDR", "127.0.0.1:0"),
        ("NATS_URL", nats_url),
        ("JWT_SECRET", JWT_SECRET),
        ("PROBE_CACHE_SEC", "1"),
        ("NATS_PUBLISH_TIMEOUT_MS", "1500"),
        ("HEIMDEX_EMBED_THREADS", EMBED_THREADS),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    Settings::from_vars(&vars).expect("test settings are valid")
}

/// The whole service (api, worker, projector) in this process, against a [`TestNats`].
pub struct TestApp {
    pub nats: TestNats,
    pub base: String,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub settings: Settings,
    pub store: Arc<dyn VectorStore>,
    /// Every collection of the store the app opened, and which one is live.
    pub collections: Arc<heimdex_store::Collections>,
    shutdown: CancellationToken,
    /// The settings the test gave beyond [`settings`]'s, for a restart.
    extra: Vec<(String, String)>,
    /// Cancels `shutdown` when the app is dropped without [`TestApp::stop`].
    _stop_on_drop: tokio_util::sync::DropGuard,
    running: Option<tokio::task::JoinHandle<Option<TempDir>>>,
    /// Workers started later by [`TestApp::start_worker`].
    late_workers: Vec<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        Self::spawn_roles(extra, Roles::ALL).await
    }

    /// The API and the projector without a worker: jobs are accepted and wait in the stream
    /// until [`TestApp::start_worker`].
    pub async fn spawn_without_worker(extra: &[(&str, &str)]) -> Self {
        Self::spawn_roles(
            extra,
            Roles {
                worker: false,
                ..Roles::ALL
            },
        )
        .await
    }

    /// The whole service on a data dir the test prepared (e.g. one an older version wrote).
    pub async fn spawn_in(data: TempDir, extra: &[(&str, &str)]) -> Self {
        Self::spawn_roles_in(data, extra, Roles::ALL).await
    }

    async fn spawn_roles(extra: &[(&str, &str)], roles: Roles) -> Self {
        Self::spawn_roles_in(tempfile::tempdir().expect("temp dir"), extra, roles).await
    }

    async fn spawn_roles_in(data: TempDir, extra: &[(&str, &str)], roles: Roles) -> Self {
        let nats = TestNats::start().await;
        let settings = settings(data.path(), &nats.url(), extra);
        Self::start_on(nats, settings, data, roles, extra).await
    }

    async fn start_on(
        nats: TestNats,
        settings: Settings,
        data: TempDir,
        roles: Roles,
        extra: &[(&str, &str)],
    ) -> Self {
        let shutdown = CancellationToken::new();
        let running = serve::start(&settings, roles, &nats.url(), shutdown.clone())
            .await
            .expect("services start");
        let addr = running.api_addr.expect("api runs");
        let store = running.store.clone().expect("store is open");
        let collections = running.collections.clone().expect("store is open");
        // The task owns the data dir and drops it only after the services (and the store's
        // shard, which flushes on drop) are gone, even when the runtime drops the task.
        let running = tokio::spawn(OutlivedBy {
            services: Box::pin(running.wait()),
            data: Some(data),
        });
        Self {
            nats,
            base: format!("http://{addr}"),
            addr,
            http: reqwest::Client::new(),
            settings,
            store,
            collections,
            extra: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            running: Some(running),
            late_workers: Vec::new(),
        }
    }

    /// Starts a worker in this process on the app's vector store and NATS, as `heimdex serve`
    /// would have; it stops with the app.
    pub async fn start_worker(&mut self) {
        let nats = heimdex::infra::connect_nats(
            &self.settings,
            &self.nats.url(),
            "test-worker",
            &self.shutdown,
        )
        .await
        .expect("worker connects");
        let (dir, size) = (
            self.settings.model_dir.clone(),
            self.settings.store.vector_size,
        );
        let threads = heimdex_embed::ThreadBudget::new(
            self.settings
                .embed_threads
                .expect("tests set HEIMDEX_EMBED_THREADS"),
        );
        let models = tokio::task::spawn_blocking(move || {
            heimdex_embed::Registry::load(dir.as_deref(), size, threads)
        })
        .await
        .expect("models load");
        // A worker of its own, as another process would be: its own models and queue.
        let queue = heimdex_embed::EmbedQueue::start().expect("embedding queue starts");
        let (worker, indexer) = serve::build_worker(
            &self.settings,
            &nats,
            self.collections.clone(),
            Arc::new(models),
            queue,
            &self.shutdown,
        )
        .await
        .expect("worker builds");
        self.late_workers
            .push(tokio::spawn(worker.run(self.shutdown.clone())));
        self.late_workers
            .push(tokio::spawn(indexer.run(self.shutdown.clone())));
    }

    /// Stops the services, lets `prepare` change their data dir (delete the vector store, say)
    /// and starts them again on it, against the same NATS.
    pub async fn restart(self, prepare: impl FnOnce(&std::path::Path)) -> Self {
        let extra = self.extra.clone();
        let extra: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.restart_with(&extra, prepare).await
    }

    /// [`TestApp::restart`] with the settings `extra` instead of the first start's (another
    /// `QDRANT_URL`, say).
    pub async fn restart_with(
        self,
        extra: &[(&str, &str)],
        prepare: impl FnOnce(&std::path::Path),
    ) -> Self {
        let TestApp {
            nats,
            store,
            collections,
            shutdown,
            running,
            late_workers,
            ..
        } = self;
        // The store's shard closes (and flushes) with the last handle on it.
        drop((store, collections));
        shutdown.cancel();
        for worker in late_workers {
            let _ = worker.await;
        }
        let data = match running {
            Some(running) => running.await.ok().flatten(),
            None => None,
        }
        .expect("the services hand their data dir back");
        prepare(data.path());
        let settings = self::settings(data.path(), &nats.url(), extra);
        Self::start_on(nats, settings, data, Roles::ALL, extra).await
    }

    /// Stops the services gracefully and waits for them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for worker in self.late_workers.drain(..) {
            let _ = worker.await;
        }
        if let Some(running) = self.running.take() {
            let _ = running.await;
        }
    }

    pub fn token(&self, org: Uuid) -> String {
        heimdex_api::auth::issue_token(
            &self.settings.api.jwt,
            org,
            "tester",
            Duration::from_secs(600),
        )
        .expect("token")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_mock(&self, token: &str, asset: &str, segment: &str) -> reqwest::Response {
        self.http
            .post(self.url("/vectors/mock"))
            .bearer_auth(token)
            .json(&serde_json::json!({"asset_id": asset, "segment_id": segment}))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_json(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn delete(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    /// The CloudEvents `type`s of a job's history (`GET /jobs/{id}/events`), oldest first.
    pub async fn event_types(&self, token: &str, job_id: &str) -> Vec<String> {
        let events: Value = self
            .get(token, &format!("/jobs/{job_id}/events"))
            .await
            .json()
            .await
            .expect("events body");
        events["events"]
            .as_array()
            .expect("events list")
            .iter()
            .map(|e| e["event"]["type"].as_str().expect("event type").to_owned())
            .collect()
    }

    /// `POST /vectors/search`, expecting 200; returns the body.
    pub async fn search(&self, token: &str, body: &Value) -> Value {
        let response = self.post_json(token, "/vectors/search", body).await;
        assert_eq!(response.status(), 200, "search {body}");
        response.json().await.expect("search results")
    }

    /// Waits for every job id in `ids` to reach `status`; returns their final bodies.
    pub async fn wait_for_jobs(
        &self,
        token: &str,
        ids: &[String],
        status: &str,
        timeout: Duration,
    ) -> Vec<Value> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let job = self.wait_for_job(token, id, status, timeout).await;
            assert_eq!(job["status"], status, "job {id}: {job}");
            out.push(job);
        }
        out
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    /// Polls `GET /jobs/{id}` until the job reaches `status` (or any terminal status), with a
    /// deadline; returns the last body.
    pub async fn wait_for_job(
        &self,
        token: &str,
        job_id: &str,
        status: &str,
        timeout: Duration,
    ) -> Value {
        wait_for_job(&self.http, &self.base, token, job_id, status, timeout).await
    }
}

/// A future that keeps `_data` alive until `services` has been dropped: fields drop in
/// declaration order, whether the future completes or the runtime drops it mid-flight.
struct OutlivedBy<F> {
    services: std::pin::Pin<Box<F>>,
    data: Option<TempDir>,
}

impl<F: std::future::Future<Output = ()>> std::future::Future for OutlivedBy<F> {
    /// The data dir, handed back once the services are gone.
    type Output = Option<TempDir>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<TempDir>> {
        self.services.as_mut().poll(cx).map(|()| self.data.take())
    }
}

pub async fn wait_for_job(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    job_id: &str,
    status: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(response) = http
            .get(format!("{base}/jobs/{job_id}"))
            .bearer_auth(token)
            .send()
            .await
            && response.status() == reqwest::StatusCode::OK
        {
            last = response.json().await.unwrap_or(Value::Null);
            let current = last["status"].as_str().unwrap_or_default();
            if current == status || current == "SUCCEEDED" || current == "FAILED" {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    last
}

/// The `heimdex` binary next to the running test executable (built by `deploy/test.sh` or any
/// `cargo build -p heimdex` of the same profile).
pub fn heimdex_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("heimdex");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build --release -p heimdex`, as deploy/test.sh does)",
        bin.display()
    );
    bin
}

/// Condition poll with a deadline: returns as soon as `check` yields `Some`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A port nobody listens on right now, for a child process that must be told its address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// A real `heimdex serve` child process, with its own embedded nats-server, data dir and API
/// port, its stderr (the log) kept in a file. Killed on drop.
pub struct ServeProcess {
    child: Option<tokio::process::Child>,
    pub base: String,
    log: PathBuf,
    _dir: TempDir,
}

impl ServeProcess {
    /// Starts `heimdex serve` with the test JWT secret and `env` on top, and waits until
    /// `/readyz` answers 200.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("serve.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(heimdex_bin())
            .arg("serve")
            .env_remove("NATS_URL")
            .env_remove("QDRANT_URL")
            .env_remove("RUST_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("HEIMDEX_DATA_DIR", dir.path().join("data"))
            .env("HEIMDEX_API_ADDR", format!("127.0.0.1:{port}"))
            .env("HEIMDEX_NATS_LISTEN", "127.0.0.1:0")
            .env("JWT_SECRET", JWT_SECRET)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("heimdex serve starts");
        let process = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let ready = eventually(Duration::from_secs(60), || async {
            let response = http
                .get(format!("{}/readyz", process.base))
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
        assert!(ready.is_some(), "serve not ready:\n{}", process.log());
        process
    }

    /// A token for `org`, signed with the secret the process was given.
    pub fn token(&self, org: Uuid) -> String {
        let jwt = heimdex_api::auth::JwtConfig {
            secret: JWT_SECRET.to_owned().into(),
            public_key_pem: None,
            issuer: None,
            audience: None,
        };
        heimdex_api::auth::issue_token(&jwt, org, "tester", Duration::from_secs(600))
            .expect("token")
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as an orchestrator stops it, and waits (at most 60 s) for it to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits")),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("serve stops within 60 s of SIGTERM")
            .expect("wait")
    }
}
