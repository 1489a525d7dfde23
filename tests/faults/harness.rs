//! What every scenario uses: real processes (`nats-server`, `heimdex` roles) that can be killed
//! and started again, a client that keeps submitting through faults as a careful client would
//! (retrying the same idempotent request until it gets a 2xx), the ledger of what was accepted,
//! and the check that proves "nothing lost": every accepted job terminal, the store holding
//! exactly the expected points, no event recorded twice and no status moving backwards.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use heimdex_domain::jobs::{JobStatus, Status};
use heimdex_event_store::jetstream::{JOBS_STREAM, STATUS_BUCKET, StreamRead};
use heimdex_event_store::nats_server::{self, NatsServer, NatsServerConfig};
use heimdex_store::VectorStore;
use heimdex_tests::JWT_SECRET;
use serde_json::Value;
use tokio::process::{Child, Command};
use uuid::Uuid;

/// `HEIMDEX_FAULTS=full` runs every scenario at the size the reliability issue names (10,000
/// jobs, five kills, a 30 s outage...); otherwise each runs a smaller, faster version of itself,
/// which is what CI runs on every change.
pub fn full() -> bool {
    std::env::var("HEIMDEX_FAULTS").is_ok_and(|v| v == "full")
}

/// `fast` in CI, `full` under `HEIMDEX_FAULTS=full`.
pub fn scale<T>(fast: T, full_size: T) -> T {
    if full() { full_size } else { fast }
}

/// Scenarios start several processes each; one at a time keeps a 2-core machine honest.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(Default::default);
    SERIAL.lock().await
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// The scenarios' nats-server: the same process manager `heimdex serve` uses, on a port that
/// stays the same across kills and restarts so clients reconnect to the same URL.
pub type Nats = NatsServer;

pub async fn start_nats(store_dir: PathBuf, extra_args: Vec<String>) -> Nats {
    start_nats_on(free_port(), store_dir, extra_args).await
}

/// On a port chosen beforehand: the members of a cluster name each other before any starts.
pub async fn start_nats_on(port: u16, store_dir: PathBuf, extra_args: Vec<String>) -> Nats {
    start_nats_with(port, store_dir, extra_args, None).await
}

/// With `jetstream`, one more line for the server's `jetstream { }` block (a `max_file_store`
/// limit, say).
pub async fn start_nats_with(
    port: u16,
    store_dir: PathBuf,
    extra_args: Vec<String>,
    jetstream: Option<&str>,
) -> Nats {
    let mut listen: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
    listen.set_port(port);
    let defaults = heimdex::settings::Settings::from_vars(&HashMap::new()).expect("defaults");
    let mut config = NatsServerConfig::new(
        nats_server::find_binary(None)
            .expect("nats-server: run ./deploy/setup.sh or set NATS_SERVER_BIN"),
        store_dir,
        listen,
    );
    config.extra_args = extra_args;
    // What `heimdex serve` gives its own server.
    config.sync_interval = Some(defaults.embedded_nats.sync_interval);
    config.jetstream = jetstream.map(str::to_owned).into_iter().collect();
    NatsServer::start(config).await.expect("nats-server starts")
}

/// The environment every `heimdex` process of a scenario gets: its own data dir, the test JWT
/// secret, quick probes and no vector-store URL unless the scenario names one.
pub fn heimdex_env(data_dir: &Path, nats_url: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![
        ("HEIMDEX_DATA_DIR", data_dir.display().to_string()),
        ("HEIMDEX_API_ADDR", "127.0.0.1:0".to_owned()),
        // Several workers and projectors share the host: each gets a metrics port of its own.
        ("HEIMDEX_METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("HEIMDEX_NATS_LISTEN", "127.0.0.1:0".to_owned()),
        ("JWT_SECRET", JWT_SECRET.to_owned()),
        ("PROBE_CACHE_SEC", "1".to_owned()),
        ("NATS_PUBLISH_TIMEOUT_MS", "1500".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    if let Some(url) = nats_url {
        env.push(("NATS_URL", url.to_owned()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Sets (or replaces) one variable of an environment built by [`heimdex_env`].
pub fn set_env(env: &mut Vec<(String, String)>, key: &str, value: impl Into<String>) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.into()));
}

/// One `heimdex <role>` process. Its output is appended to `<log_dir>/<name>.log`, across
/// restarts, so a failing scenario can show what each process said.
pub struct Heimdex {
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
}

impl Heimdex {
    pub fn spawn(name: &str, args: &[&str], env: Vec<(String, String)>, log_dir: &Path) -> Self {
        let mut process = Self {
            name: name.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        };
        process.start();
        process
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = Command::new(heimdex_tests::heimdex_bin());
        command
            .args(&self.args)
            .env_remove("NATS_URL")
            .env_remove("QDRANT_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(command.spawn().expect("heimdex starts"));
        self.starts += 1;
    }

    /// Sets (or replaces) a variable of the environment the next [`Self::start`] gives.
    pub fn set_env(&mut self, key: &str, value: impl Into<String>) {
        set_env(&mut self.env, key, value);
    }

    /// SIGKILL: no shutdown hook runs, nothing is flushed or acked.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill -9");
        }
    }

    /// SIGTERM and wait: the graceful stop an orchestrator does. Returns the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within 60 s of SIGTERM", self.name))
            .expect("wait")
    }

    /// [`Self::terminate`], and the process must exit 0; if not, the panic names its exit status
    /// and shows the tail of its log.
    pub async fn stop_cleanly(&mut self) {
        let status = self.terminate().await;
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// The last lines of this process's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- {} ({})\n{tail}", self.name, self.log.display())
    }
}

/// A token for `org`, signed with the test secret.
pub fn token(org: Uuid) -> String {
    let jwt = heimdex_api::auth::JwtConfig {
        secret: JWT_SECRET.to_owned().into(),
        public_key_pem: None,
        issuer: None,
        audience: None,
    };
    heimdex_api::auth::issue_token(&jwt, org, "faults", Duration::from_secs(3600)).expect("token")
}

/// What a mock job for `segment` of `asset` stores: one point with a deterministic id.
pub fn mock_point(org: Uuid, asset: &str, segment: &str) -> Uuid {
    heimdex_domain::ids::point_id(org, asset, segment, "mock", "v1")
}

impl Drop for Heimdex {
    /// `kill_on_drop` ends this process when a scenario panics, but a `serve` without
    /// `NATS_URL` has a nats-server child of its own, which would outlive the test and take
    /// the CPU the next scenarios need. Its pid file (in the data dir) names it; it is ended if
    /// it is still a nats-server on that data dir.
    fn drop(&mut self) {
        // `serve` first: running, it would start a new nats-server in place of the one ended.
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
        }
        let var = |key: &str| self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if var("NATS_URL").is_some() {
            return;
        }
        let Some(data_dir) = var("HEIMDEX_DATA_DIR") else {
            return;
        };
        let pid_file = Path::new(data_dir).join("nats/run/nats-server.pid");
        let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
        else {
            return;
        };
        let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("nats-server") && cmdline.contains(data_dir.as_str())
        });
        if ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Waits until `GET {base}/readyz` answers 200.
pub async fn wait_ready(http: &reqwest::Client, base: &str, timeout: Duration) {
    heimdex_tests::eventually(timeout, || async {
        let response = http.get(format!("{base}/readyz")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{base} not ready within {timeout:?}"));
}

/// Every job a client was told was accepted, with the points it must leave in the store, and
/// every refusal it saw on the way.
pub struct Ledger {
    pub org: Uuid,
    inner: Mutex<LedgerInner>,
}

#[derive(Default)]
struct LedgerInner {
    /// job id → the points it must leave in the store once SUCCEEDED.
    jobs: BTreeMap<Uuid, Vec<Uuid>>,
    /// Jobs that must end FAILED (poison).
    must_fail: HashSet<Uuid>,
    /// Delete jobs → the point each must remove once SUCCEEDED.
    deletes: HashMap<Uuid, Uuid>,
    /// `503`, `429`, `507`, `connection refused`... → how many times.
    refusals: BTreeMap<String, u64>,
    /// Refusals that came without a `Retry-After` although their status requires one.
    refusals_without_retry_after: u64,
}

impl Ledger {
    pub fn new(org: Uuid) -> Arc<Self> {
        Arc::new(Self {
            org,
            inner: Mutex::default(),
        })
    }

    pub fn accept(&self, job: Uuid, points: Vec<Uuid>) {
        self.inner.lock().unwrap().jobs.insert(job, points);
    }

    /// A delete job: it leaves no point, and once it succeeded `point` must be gone, even if a
    /// job that wrote it succeeds (again) after it.
    pub fn delete(&self, job: Uuid, point: Uuid) {
        let mut inner = self.inner.lock().unwrap();
        inner.jobs.insert(job, Vec::new());
        inner.deletes.insert(job, point);
    }

    pub fn must_fail(&self, job: Uuid) {
        let mut inner = self.inner.lock().unwrap();
        inner.jobs.insert(job, Vec::new());
        inner.must_fail.insert(job);
    }

    pub fn refused(&self, why: impl Into<String>, has_retry_after: bool) {
        let why = why.into();
        let mut inner = self.inner.lock().unwrap();
        if (why.starts_with("503") || why.starts_with("429")) && !has_retry_after {
            inner.refusals_without_retry_after += 1;
        }
        *inner.refusals.entry(why).or_default() += 1;
    }

    pub fn accepted(&self) -> usize {
        self.inner.lock().unwrap().jobs.len()
    }

    pub fn jobs(&self) -> Vec<Uuid> {
        self.inner.lock().unwrap().jobs.keys().copied().collect()
    }

    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.inner.lock().unwrap().refusals.clone()
    }

    pub fn refusals_without_retry_after(&self) -> u64 {
        self.inner.lock().unwrap().refusals_without_retry_after
    }
}

/// A client of the service that retries exactly as the API asks: the same request again after a
/// connection error, a `503`, `429` or `507`, until it gets a 2xx or `give_up` passes.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub bases: Arc<Vec<String>>,
    pub token: String,
    pub ledger: Arc<Ledger>,
    pub give_up: Duration,
}

impl Client {
    pub fn new(bases: Vec<String>, ledger: Arc<Ledger>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            bases: Arc::new(bases),
            token: token(ledger.org),
            ledger,
            give_up: Duration::from_secs(180),
        }
    }

    /// Posts until accepted; returns the job ids of the answer (records nothing: the caller
    /// knows which points they stand for). `None` if it never got a 2xx.
    pub async fn post_until_accepted(&self, n: usize, path: &str, body: &Value) -> Option<Value> {
        self.send_until_accepted(n, path, |http, url| http.post(url).json(body))
            .await
    }

    /// Sends the request `request` builds (from the client and the URL of `path` on one of the
    /// API processes) until it gets a 2xx, as [`Self::post_until_accepted`] does.
    async fn send_until_accepted(
        &self,
        n: usize,
        path: &str,
        request: impl Fn(&reqwest::Client, String) -> reqwest::RequestBuilder,
    ) -> Option<Value> {
        let started = Instant::now();
        let mut attempt = 0usize;
        while started.elapsed() < self.give_up {
            // Spread over the API processes, and move to the next one after a failure.
            let base = &self.bases[(n + attempt) % self.bases.len()];
            attempt += 1;
            let sent = request(&self.http, format!("{base}{path}"))
                .bearer_auth(&self.token)
                .send()
                .await;
            let pause = match sent {
                Ok(response) if response.status().is_success() => {
                    return Some(response.json().await.expect("accepted body is JSON"));
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    let problem: Value = response.json().await.unwrap_or(Value::Null);
                    assert!(
                        matches!(status, 429 | 503 | 507),
                        "{path}: unexpected {status}: {problem}"
                    );
                    let code = problem["code"].as_str().unwrap_or("?");
                    self.ledger
                        .refused(format!("{status} {code}"), retry_after.is_some());
                    Duration::from_millis(retry_after.unwrap_or(1).min(2) * 250)
                }
                Err(err) => {
                    let kind = if err.is_connect() {
                        "connection refused"
                    } else if err.is_timeout() {
                        "timeout"
                    } else {
                        "connection broken"
                    };
                    self.ledger.refused(kind, true);
                    Duration::from_millis(200)
                }
            };
            tokio::time::sleep(pause).await;
        }
        None
    }

    /// Submits mock job `segment` of `asset` until accepted and records it in the ledger.
    pub async fn submit_mock(&self, n: usize, asset: &str, segment: &str) -> Option<Uuid> {
        let body = serde_json::json!({"asset_id": asset, "segment_id": segment});
        let answer = self.post_until_accepted(n, "/vectors/mock", &body).await?;
        let job: Uuid = answer["job_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("job_id");
        self.ledger
            .accept(job, vec![mock_point(self.ledger.org, asset, segment)]);
        Some(job)
    }

    /// Deletes `point` (`DELETE /vectors/{point}`, one `Idempotency-Key` for every retry) until
    /// accepted, and records in the ledger that it must be gone once the job succeeded.
    pub async fn delete_point(&self, n: usize, point: Uuid) -> Option<Uuid> {
        let key = format!("delete-{point}");
        let path = format!("/vectors/{point}");
        let answer = self
            .send_until_accepted(n, &path, |http, url| {
                http.delete(url).header("Idempotency-Key", &key)
            })
            .await?;
        let job: Uuid = answer["job_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("job_id");
        self.ledger.delete(job, point);
        Some(job)
    }
}

/// `n` mock jobs (`asset`, segments `s-0`…), `concurrency` at a time, at most `per_sec` a
/// second. Returns how many were accepted.
pub async fn submit_mock_jobs(
    client: &Client,
    asset: &str,
    n: usize,
    concurrency: usize,
    per_sec: f64,
) -> usize {
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| async move {
            let due = started + Duration::from_secs_f64(i as f64 / per_sec);
            tokio::time::sleep_until(due.into()).await;
            client.submit_mock(i, asset, &format!("s-{i}")).await
        })
        .buffer_unordered(concurrency)
        .filter(|job| std::future::ready(job.is_some()))
        .count()
        .await
}

/// A JetStream context on `url` that rides out server restarts.
pub async fn jetstream(url: &str) -> jetstream::Context {
    let client = heimdex_event_store::jetstream::connect(url, "faults-checker")
        .await
        .expect("connect");
    heimdex_event_store::jetstream::context(client, Duration::from_secs(5))
}

/// Every message of `stream` under `filter` (the last per subject, or all), in stream order.
async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    filter: String,
    deliver_policy: consumer::DeliverPolicy,
) -> Result<Vec<async_nats::jetstream::Message>, String> {
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let mut read = StreamRead::open(&stream, filter, deliver_policy, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(message) = read.next().await.map_err(|e| e.to_string())? {
        out.push(message);
    }
    Ok(out)
}

/// The org's job statuses, straight from the projection bucket.
pub async fn statuses(
    js: &jetstream::Context,
    org: Uuid,
) -> Result<HashMap<Uuid, JobStatus>, String> {
    let messages = read_stream(
        js,
        &format!("KV_{STATUS_BUCKET}"),
        format!("$KV.{STATUS_BUCKET}.{org}.*"),
        consumer::DeliverPolicy::LastPerSubject,
    )
    .await?;
    Ok(messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<JobStatus>(&m.payload).ok())
        .map(|status| (status.job_id, status))
        .collect())
}

/// Polls the projection until every accepted job is SUCCEEDED or FAILED, or `timeout` passes.
/// Returns the statuses and how long it took.
pub async fn wait_terminal(
    js: &jetstream::Context,
    ledger: &Ledger,
    timeout: Duration,
) -> (HashMap<Uuid, JobStatus>, Duration) {
    let started = Instant::now();
    let jobs = ledger.jobs();
    loop {
        let current = statuses(js, ledger.org).await.unwrap_or_default();
        let done = jobs
            .iter()
            .all(|job| current.get(job).is_some_and(|s| s.status.is_terminal()));
        if done || started.elapsed() > timeout {
            return (current, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Watches every status change of one org's jobs as it is written and records any that moves
/// backwards: an earlier round, an earlier stage within a round, an older event, or one terminal
/// status replaced by another within a round. Rides out NATS restarts by resuming after the
/// last revision it saw.
pub struct StatusWatch {
    violations: Arc<Mutex<Vec<String>>>,
    changes: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn rank(status: Status) -> u8 {
    match status {
        Status::Queued => 0,
        Status::Running => 1,
        Status::Succeeded | Status::Failed => 2,
    }
}

impl StatusWatch {
    pub async fn start(nats_url: &str, org: Uuid) -> Self {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let js = jetstream(nats_url).await;
        let task = tokio::spawn({
            let (violations, changes) = (violations.clone(), changes.clone());
            async move {
                let mut last: HashMap<Uuid, JobStatus> = HashMap::new();
                let mut revision = 0u64;
                loop {
                    let Ok(bucket) = js.get_key_value(STATUS_BUCKET).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let Ok(mut watch) = bucket
                        .watch_from_revision(format!("{org}.*"), revision + 1)
                        .await
                    else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    while let Some(Ok(entry)) = watch.next().await {
                        revision = revision.max(entry.revision);
                        let Ok(new) = serde_json::from_slice::<JobStatus>(&entry.value) else {
                            continue;
                        };
                        changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Some(old) = last.get(&new.job_id) {
                            let backwards = (new.retries, rank(new.status))
                                < (old.retries, rank(old.status))
                                || new.last_event_seq < old.last_event_seq
                                || (new.retries == old.retries
                                    && old.status.is_terminal()
                                    && new.status != old.status);
                            if backwards {
                                violations.lock().unwrap().push(format!(
                                    "{}: {:?}/round {} (seq {}) -> {:?}/round {} (seq {})",
                                    new.job_id,
                                    old.status,
                                    old.retries,
                                    old.last_event_seq,
                                    new.status,
                                    new.retries,
                                    new.last_event_seq
                                ));
                            }
                        }
                        last.insert(new.job_id, new);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self {
            violations,
            changes,
            task,
        }
    }

    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many events of each kind every job of the org has in the stream.
pub async fn event_tally(
    js: &jetstream::Context,
    org: Uuid,
) -> HashMap<Uuid, BTreeMap<String, u32>> {
    let messages = read_stream(
        js,
        JOBS_STREAM,
        format!("heimdex.jobs.{org}.>"),
        consumer::DeliverPolicy::All,
    )
    .await
    .expect("read the job stream");
    let mut tally: HashMap<Uuid, BTreeMap<String, u32>> = HashMap::new();
    for message in messages {
        let mut parts = message.subject.split('.').skip(3);
        let (Some(job), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(job) = job.parse() else { continue };
        *tally
            .entry(job)
            .or_default()
            .entry(kind.to_owned())
            .or_default() += 1;
    }
    tally
}

/// The figures of one scenario: what the issue's "nothing lost" means, counted.
#[derive(Default)]
pub struct Outcome {
    pub scenario: String,
    pub accepted: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Accepted jobs that never reached SUCCEEDED or FAILED.
    pub not_terminal: usize,
    /// Jobs that should have failed but succeeded, or the other way round.
    pub wrong_outcome: usize,
    /// Expected points not in the store.
    pub missing_points: usize,
    /// Points in the store that no succeeded job accounts for, or that a succeeded delete
    /// removed.
    pub extra_points: usize,
    /// Points held twice (by two stores without a redelivery to explain it, or twice in a
    /// scroll), and filtered count ≠ scroll.
    pub duplicate_points: usize,
    /// Points held by two workers' own stores because their job was delivered to both (see
    /// [`Outcome::count_points`]); not a duplicate within any store.
    pub copies_across_stores: usize,
    /// A job with two `requested` events, or two terminal events in one round.
    pub duplicate_events: usize,
    pub status_regressions: Vec<String>,
    pub status_changes_seen: u64,
    /// From the end of the last fault until every accepted job was terminal.
    pub recovery: Duration,
    pub refusals: BTreeMap<String, u64>,
    /// 503s and 429s that came without a `Retry-After`.
    pub refusals_without_retry_after: u64,
    /// Free-form figures of the scenario (kills, 503s during the outage...).
    pub notes: Vec<String>,
    /// The points the succeeded jobs must have left.
    expected: HashSet<Uuid>,
    /// How many times each expected point's job was delivered to a worker.
    deliveries: HashMap<Uuid, u32>,
    org: Uuid,
    /// The processes' last log lines, shown when the scenario fails.
    logs: Vec<String>,
}

impl Outcome {
    pub fn lost(&self) -> usize {
        self.not_terminal + self.missing_points + self.wrong_outcome
    }

    /// Succeeded jobs that were delivered to a worker more than once.
    pub fn redelivered(&self) -> usize {
        self.deliveries.values().filter(|n| **n > 1).count()
    }

    pub fn duplicates(&self) -> usize {
        self.extra_points + self.duplicate_points + self.duplicate_events
    }

    fn details(&self) -> String {
        format!(
            "{}: accepted {}, succeeded {}, failed {}, not terminal {}, wrong outcome {}, \
             missing points {}, extra points {}, duplicate points {}, copies across stores {}, \
             duplicate events {}, status changes seen {}, regressions {}",
            self.scenario,
            self.accepted,
            self.succeeded,
            self.failed,
            self.not_terminal,
            self.wrong_outcome,
            self.missing_points,
            self.extra_points,
            self.duplicate_points,
            self.copies_across_stores,
            self.duplicate_events,
            self.status_changes_seen,
            self.status_regressions.len()
        )
    }

    /// Keeps the processes' last log lines for the failure message.
    pub fn attach_logs(&mut self, processes: &[&Heimdex]) {
        self.logs.extend(processes.iter().map(|p| p.log_tail()));
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Prints the figures (and appends them to `$HEIMDEX_FAULTS_REPORT` when set, which is how
    /// `deploy/faults.sh` collects the RELIABILITY.md table), then asserts nothing was lost or
    /// duplicated and no status moved backwards.
    pub fn report_and_assert(&self) {
        let refusals = self
            .refusals
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let line = format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} s | {} | {} |",
            self.scenario,
            self.accepted,
            self.succeeded,
            self.failed,
            self.lost(),
            self.duplicates(),
            self.recovery.as_secs_f64(),
            if refusals.is_empty() {
                "none".into()
            } else {
                refusals
            },
            self.notes.join("; ")
        );
        println!("RELIABILITY {line}");
        println!("  {}", self.details());
        if let Ok(path) = std::env::var("HEIMDEX_FAULTS_REPORT") {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("report file");
            writeln!(file, "{line}").expect("report written");
        }
        let ok = self.lost() == 0 && self.duplicates() == 0 && self.status_regressions.is_empty();
        if !ok {
            for log in &self.logs {
                eprintln!("{log}");
            }
        }
        assert_eq!(self.lost(), 0, "lost: {}", self.details());
        assert_eq!(self.duplicates(), 0, "duplicated: {}", self.details());
        assert_eq!(
            self.refusals_without_retry_after, 0,
            "every 503 and 429 carries Retry-After"
        );
        assert!(
            self.status_regressions.is_empty(),
            "statuses moved backwards: {:?}",
            self.status_regressions
        );
    }
}

/// Waits (up to 4 minutes) until every accepted job is terminal, then counts the jobs' side of
/// the outcome ([`tally_jobs`]), with the recovery time counted from `fault_over`.
pub async fn settle(
    scenario: &str,
    ledger: &Ledger,
    js: &jetstream::Context,
    watch: &StatusWatch,
    fault_over: Instant,
) -> Outcome {
    let (statuses, _) = wait_terminal(js, ledger, Duration::from_secs(240)).await;
    let recovery = fault_over.elapsed();
    let mut outcome = tally_jobs(scenario, ledger, &statuses, js, Some(watch)).await;
    outcome.recovery = recovery;
    outcome
}

/// Counts the jobs' side of [`Outcome`] for the ledger's org: statuses from the projection,
/// events from the stream, status regressions from `watch`. The points are counted by
/// [`Outcome::count_points`], which may need the processes stopped first (an embedded store).
pub async fn tally_jobs(
    scenario: &str,
    ledger: &Ledger,
    statuses: &HashMap<Uuid, JobStatus>,
    js: &jetstream::Context,
    watch: Option<&StatusWatch>,
) -> Outcome {
    let mut outcome = Outcome {
        scenario: scenario.to_owned(),
        refusals: ledger.refusals(),
        refusals_without_retry_after: ledger.refusals_without_retry_after(),
        org: ledger.org,
        ..Default::default()
    };
    let (jobs, must_fail, deletes) = {
        let inner = ledger.inner.lock().unwrap();
        (
            inner.jobs.clone(),
            inner.must_fail.clone(),
            inner.deletes.clone(),
        )
    };
    outcome.accepted = jobs.len();
    for (job, points) in &jobs {
        match statuses.get(job).map(|s| s.status) {
            Some(Status::Succeeded) => {
                outcome.succeeded += 1;
                outcome.wrong_outcome += usize::from(must_fail.contains(job));
                outcome.expected.extend(points.iter().copied());
                let attempts = statuses[job].attempts;
                outcome
                    .deliveries
                    .extend(points.iter().map(|point| (*point, attempts)));
            }
            Some(Status::Failed) => {
                outcome.failed += 1;
                outcome.wrong_outcome += usize::from(!must_fail.contains(job));
            }
            Some(Status::Queued | Status::Running) | None => outcome.not_terminal += 1,
        }
    }
    for (job, point) in &deletes {
        if statuses.get(job).map(|s| s.status) == Some(Status::Succeeded) {
            outcome.expected.remove(point);
            outcome.deliveries.remove(point);
        }
    }

    let events = event_tally(js, ledger.org).await;
    for job in jobs.keys() {
        let kinds = events.get(job).cloned().unwrap_or_default();
        let n = |kind: &str| kinds.get(kind).copied().unwrap_or(0);
        let rounds = 1 + n("retried");
        if n("requested") != 1 || n("succeeded") > 1 || n("failed") > rounds {
            outcome.duplicate_events += 1;
        }
    }

    let redelivered = statuses.values().filter(|s| s.attempts > 1).count();
    if redelivered > 0 {
        outcome.note(format!("{redelivered} jobs delivered more than once"));
    }
    if let Some(watch) = watch {
        outcome.status_regressions = watch.violations();
        outcome.status_changes_seen = watch.changes();
    }
    outcome
}

impl Outcome {
    /// The points' side: `stores` (one per worker when each has its own embedded store) must
    /// together hold exactly the expected points, and each store's filtered count must equal
    /// its filtered scroll. A point may be in several stores only if its job was delivered at
    /// least that many times: a worker that upserted and then lost its NATS server before its
    /// `succeeded` event or ack was stored leaves the job to be redelivered, perhaps to another
    /// worker. One shared store absorbs that second upsert (same point id); separate stores
    /// each keep a copy, counted as `copies_across_stores`. Any other second copy is a duplicate.
    pub async fn count_points(&mut self, stores: &[Arc<dyn VectorStore>]) {
        let mut held: HashMap<Uuid, usize> = HashMap::new();
        for store in stores {
            let ids = store
                .scroll_ids(self.org, Default::default())
                .await
                .expect("scroll");
            let count = store
                .count(self.org, Default::default())
                .await
                .expect("count");
            self.duplicate_points += (count as usize).abs_diff(ids.len());
            for id in ids {
                *held.entry(id).or_default() += 1;
            }
        }
        for (point, n) in &held {
            let delivered = self.deliveries.get(point).copied().unwrap_or(1) as usize;
            if *n <= delivered {
                self.copies_across_stores += n - 1;
            } else {
                self.duplicate_points += n - 1;
            }
        }
        if self.copies_across_stores > 0 {
            self.note(format!(
                "{} points also in a second worker's store (their jobs were redelivered)",
                self.copies_across_stores
            ));
        }
        self.missing_points = self
            .expected
            .iter()
            .filter(|id| !held.contains_key(id))
            .count();
        self.extra_points = held.keys().filter(|id| !self.expected.contains(id)).count();
    }
}

/// Opens the embedded vector store a stopped `heimdex` process left in `data_dir`.
pub async fn open_embedded_store(data_dir: &Path) -> Arc<dyn VectorStore> {
    heimdex_store::open(heimdex_store::StoreConfig {
        backend: heimdex_store::Backend::Embedded {
            path: data_dir.join("qdrant"),
        },
        collection: "embeddings".into(),
        vector_size: 384,
    })
    .await
    .expect("open the store")
}

/// Opens the Qdrant server at `url` every process of a scenario shares, with the same
/// `QDRANT_*` settings (API key, collection) the processes read from the environment.
pub async fn open_remote_store(url: &str) -> Arc<dyn VectorStore> {
    let mut vars: HashMap<String, String> = std::env::vars()
        .filter(|(key, _)| key.starts_with("QDRANT_"))
        .collect();
    vars.insert("QDRANT_URL".into(), url.to_owned());
    let settings = heimdex::settings::Settings::from_vars(&vars).expect("QDRANT_* settings");
    heimdex::infra::open_store(&settings)
        .await
        .expect("open the store")
}

/// A `heimdex serve` just started and ready, and one org's client, ledger and status watch.
struct Served {
    serve: Heimdex,
    base: String,
    ledger: Arc<Ledger>,
    client: Client,
    watch: StatusWatch,
    js: jetstream::Context,
}

impl Served {
    /// Spawns `serve` with `env` (whose API listens on `api_port`, and whose NATS is at
    /// `nats_url`), and waits until it is ready.
    async fn start(root: &Path, env: Vec<(String, String)>, api_port: u16, nats_url: &str) -> Self {
        let serve = Heimdex::spawn("serve", &["serve"], env, root);
        let base = format!("http://127.0.0.1:{api_port}");
        let ledger = Ledger::new(Uuid::new_v4());
        let client = Client::new(vec![base.clone()], ledger.clone());
        wait_ready(&client.http, &base, Duration::from_secs(60)).await;
        let watch = StatusWatch::start(nats_url, ledger.org).await;
        let js = jetstream(nats_url).await;
        Self {
            serve,
            base,
            ledger,
            client,
            watch,
            js,
        }
    }
}

/// `heimdex serve` (API, worker and projector in one process, Qdrant Edge in its data dir)
/// against a nats-server process of the scenario's own, which the scenario may break; plus the
/// client, ledger and status watch of one org.
pub struct Deployment {
    pub nats: Nats,
    pub serve: Heimdex,
    pub base: String,
    pub data_dir: PathBuf,
    pub ledger: Arc<Ledger>,
    pub client: Client,
    pub watch: StatusWatch,
    pub js: jetstream::Context,
    /// `QDRANT_URL` when the scenario gave one; else the store is Qdrant Edge in `data_dir`.
    qdrant_url: Option<String>,
}

impl Deployment {
    pub async fn start(root: &Path, env: &[(&str, &str)], nats_args: Vec<String>) -> Self {
        Self::start_on(root, env, start_nats(root.join("nats"), nats_args).await).await
    }

    /// On a nats-server the scenario started itself.
    pub async fn start_on(root: &Path, env: &[(&str, &str)], nats: Nats) -> Self {
        let api_port = free_port();
        let data_dir = root.join("data");
        let mut serve_env = heimdex_env(&data_dir, Some(nats.url()));
        set_env(
            &mut serve_env,
            "HEIMDEX_API_ADDR",
            format!("127.0.0.1:{api_port}"),
        );
        for (k, v) in env {
            set_env(&mut serve_env, k, *v);
        }
        let qdrant_url = serve_env
            .iter()
            .find(|(k, _)| k == "QDRANT_URL")
            .map(|(_, v)| v.clone());
        let Served {
            serve,
            base,
            ledger,
            client,
            watch,
            js,
        } = Served::start(root, serve_env, api_port, nats.url()).await;
        Self {
            nats,
            serve,
            base,
            data_dir,
            ledger,
            client,
            watch,
            js,
            qdrant_url,
        }
    }

    /// Waits until every accepted job is terminal (recovery is counted from `fault_over`),
    /// stops `serve` gracefully and counts everything.
    pub async fn finish(mut self, scenario: &str, fault_over: Instant) -> Outcome {
        let mut outcome = settle(scenario, &self.ledger, &self.js, &self.watch, fault_over).await;
        let exit = self.serve.terminate().await;
        outcome.attach_logs(&[&self.serve]);
        assert!(exit.success(), "serve exits 0 on SIGTERM, got {exit}");
        let store = match &self.qdrant_url {
            Some(url) => open_remote_store(url).await,
            None => open_embedded_store(&self.data_dir).await,
        };
        outcome.count_points(&[store]).await;
        self.nats.stop().await;
        outcome
    }
}

/// `heimdex serve` with the nats-server it starts itself, Qdrant Edge in `<root>/data`; its
/// ports are fixed for the scenario, so that `serve` started again (after a kill) serves the
/// same clients on the same stream. Plus the client, ledger and status watch of one org.
pub struct Standalone {
    pub serve: Heimdex,
    pub base: String,
    pub data_dir: PathBuf,
    pub ledger: Arc<Ledger>,
    pub client: Client,
    pub watch: StatusWatch,
    pub js: jetstream::Context,
}

impl Standalone {
    pub async fn start(root: &Path, env: &[(&str, &str)]) -> Self {
        let (api_port, nats_port) = (free_port(), free_port());
        let data_dir = root.join("data");
        let mut serve_env = heimdex_env(&data_dir, None);
        set_env(
            &mut serve_env,
            "HEIMDEX_API_ADDR",
            format!("127.0.0.1:{api_port}"),
        );
        set_env(
            &mut serve_env,
            "HEIMDEX_NATS_LISTEN",
            format!("127.0.0.1:{nats_port}"),
        );
        for (k, v) in env {
            set_env(&mut serve_env, k, *v);
        }
        let nats_url = format!("nats://127.0.0.1:{nats_port}");
        let Served {
            serve,
            base,
            ledger,
            client,
            watch,
            js,
        } = Served::start(root, serve_env, api_port, &nats_url).await;
        Self {
            serve,
            base,
            data_dir,
            ledger,
            client,
            watch,
            js,
        }
    }

    /// Starts the stopped `serve` again and waits until it is ready.
    pub async fn restart(&mut self) {
        self.serve.start();
        wait_ready(&self.client.http, &self.base, Duration::from_secs(60)).await;
    }

    /// Waits until every accepted job is terminal (recovery is counted from `fault_over`),
    /// stops `serve` gracefully and counts everything.
    pub async fn finish(mut self, scenario: &str, fault_over: Instant) -> Outcome {
        let mut outcome = settle(scenario, &self.ledger, &self.js, &self.watch, fault_over).await;
        self.serve.stop_cleanly().await;
        outcome
            .count_points(&[open_embedded_store(&self.data_dir).await])
            .await;
        outcome.attach_logs(&[&self.serve]);
        outcome
    }
}

/// The roles as separate processes, `heimdex api`, `heimdex projector` and `heimdex worker`
/// (the worker with Qdrant Edge in its own data dir), against a nats-server of the scenario's
/// own; so that one role can be killed while the others run on.
pub struct Split {
    pub nats: Nats,
    pub api: Heimdex,
    pub projector: Heimdex,
    pub worker: Heimdex,
    worker_dir: PathBuf,
    pub ledger: Arc<Ledger>,
    pub client: Client,
    pub watch: StatusWatch,
    pub js: jetstream::Context,
}

impl Split {
    /// `env` goes to every process.
    pub async fn start(root: &Path, env: &[(&str, &str)]) -> Self {
        let nats = start_nats(root.join("nats"), Vec::new()).await;
        let role_env = |name: &str| {
            let mut vars = heimdex_env(&root.join(name), Some(nats.url()));
            for (k, v) in env {
                set_env(&mut vars, k, *v);
            }
            vars
        };
        let api_port = free_port();
        let mut api_env = role_env("api");
        set_env(
            &mut api_env,
            "HEIMDEX_API_ADDR",
            format!("127.0.0.1:{api_port}"),
        );
        let api = Heimdex::spawn("api", &["api"], api_env, root);
        let projector = Heimdex::spawn("projector", &["projector"], role_env("projector"), root);
        let worker = Heimdex::spawn("worker", &["worker"], role_env("worker"), root);
        let base = format!("http://127.0.0.1:{api_port}");
        let ledger = Ledger::new(Uuid::new_v4());
        let client = Client::new(vec![base.clone()], ledger.clone());
        wait_ready(&client.http, &base, Duration::from_secs(60)).await;
        let watch = StatusWatch::start(nats.url(), ledger.org).await;
        let js = jetstream(nats.url()).await;
        Self {
            nats,
            api,
            projector,
            worker,
            worker_dir: root.join("worker"),
            ledger,
            client,
            watch,
            js,
        }
    }

    /// Waits until every accepted job is terminal (recovery counted from `fault_over`), stops
    /// every process gracefully and counts everything.
    pub async fn finish(self, scenario: &str, fault_over: Instant) -> Outcome {
        self.finish_with(scenario, fault_over, &[]).await
    }

    /// [`Split::finish`], counting the points of more workers' stores (already stopped) too.
    pub async fn finish_with(
        mut self,
        scenario: &str,
        fault_over: Instant,
        more_stores: &[Arc<dyn VectorStore>],
    ) -> Outcome {
        let mut outcome = settle(scenario, &self.ledger, &self.js, &self.watch, fault_over).await;
        let exits = [
            self.worker.terminate().await,
            self.api.terminate().await,
            self.projector.terminate().await,
        ];
        outcome.attach_logs(&[&self.api, &self.projector, &self.worker]);
        assert!(
            exits.iter().all(ExitStatus::success),
            "graceful exits: {exits:?}"
        );
        let mut stores = vec![open_embedded_store(&self.worker_dir).await];
        stores.extend(more_stores.iter().cloned());
        outcome.count_points(&stores).await;
        self.nats.stop().await;
        outcome
    }
}

/// Waits until the durable consumer `name` has nothing pending and nothing unacknowledged
/// (for the projector: the projection has caught up with the stream). Returns how long it took.
pub async fn wait_consumer_drained(
    js: &jetstream::Context,
    name: &str,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    heimdex_tests::eventually(timeout, || async {
        let mut consumer: consumer::PullConsumer = js
            .get_stream(JOBS_STREAM)
            .await
            .ok()?
            .get_consumer(name)
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("consumer {name} still busy after {timeout:?}"));
    started.elapsed()
}
