//! `heimdex bench scale`: one collection grown to each of several sizes (10,000, 100,000 and
//! 1,000,000 points by default) and measured at each: how long the load took, how long the
//! index build after it, the service's resident memory and disk, and vector searches at several
//! numbers of concurrent connections (1, 64 and 1,000 by default): queries/s, p50, p99, errors.
//!
//! It starts its own `serve` (this binary) on a fresh data directory, with the embedded
//! nats-server and Qdrant Edge, so that it can read the processes' memory and the store's disk.
//! The points are texts with `model: mock` (a vector derived from each text, no model to run;
//! the keyword vector and payload indexes are built as for any text), loaded in one of two ways:
//!
//! * `--load api` (the default): through the public API, `POST /vectors/embed/batch`, each job
//!   timed to SUCCEEDED in the status bucket, the index build read from the service's metrics
//!   (`heimdex_vector_store_optimizing`). This loads the job pipeline as much as the store;
//! * `--load store`: straight into the embedded store, with the worker's payloads and point
//!   ids, while `serve` is stopped, then indexed by the same optimizer, so that the sizes and
//!   the searches do not depend on how many jobs the broker holds.
//!
//! With `--text-points N`, N texts embedded by the default model are loaded first (through the
//! API), and text queries (embedding included) are measured beside the vector queries at every
//! size: they search only those points, among all the others.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use uuid::Uuid;

use heimdex_api::auth::JwtConfig;
use heimdex_domain::Metadata;
use heimdex_domain::ids::point_id;
use heimdex_embed::{Embedder, Mock};
use heimdex_store::{EmbeddedStore, NewPoint, Payload, VectorStore};

use super::{
    await_completions, corpus, cpu_flags, ms, percentile, samples, send_honouring_retry_after,
    watch_bucket,
};

#[derive(clap::Args)]
pub struct Options {
    /// Collection sizes in mock points, ascending.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub sizes: Vec<usize>,
    /// Concurrent connections of each search round.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1000")]
    pub connections: Vec<usize>,
    /// Searches per round (at least 10 per connection).
    #[arg(long, default_value_t = 5_000)]
    pub queries: usize,
    /// Texts embedded by the default model, loaded first (through the API); text queries are
    /// then measured too (0: vector queries only).
    #[arg(long, default_value_t = 0)]
    pub text_points: usize,
    /// Segments per `POST /vectors/embed/batch`.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Batch calls in flight.
    #[arg(long, short, default_value_t = 8)]
    pub concurrency: usize,
    /// Data directory of the service it starts (default: a temporary one, removed after).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How the mock points are loaded: `api` (as jobs, through `POST /vectors/embed/batch`) or
    /// `store` (straight into the embedded store, `serve` stopped meanwhile).
    #[arg(long, value_enum, default_value = "api")]
    pub load: LoadVia,
}

/// How `bench scale` loads its mock points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadVia {
    /// Through `POST /vectors/embed/batch`, as jobs.
    Api,
    /// Straight into the embedded store while `serve` is stopped.
    Store,
}

/// Vector size of the mock model and of the default one.
const DIM: usize = 384;
/// Results per search.
const LIMIT: usize = 10;
/// How long a `serve` is given to stop after SIGTERM: its store's last flush, and its
/// nats-server's own clean stop (up to 10 s).
const STOP_GRACE: Duration = Duration::from_secs(120);

/// Runs the benchmark; `collection` is the one `serve` writes (its `QDRANT_COLLECTION_NAME`).
pub async fn run(jwt: &JwtConfig, o: Options, collection: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.sizes.windows(2).all(|w| w[0] < w[1]),
        "--sizes must be ascending"
    );
    // 1,000 connections need more descriptors than the usual soft limit of 1,024.
    let fd_limit = heimdex_api::connections::raise_fd_limit();
    // Removed at the end; unused when a data directory is given.
    let temp = tempfile::Builder::new().prefix("heimdex-scale").tempdir()?;
    let data_dir = o.data_dir.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let org = Uuid::new_v4();
    let token = heimdex_api::auth::issue_token(jwt, org, "bench", Duration::from_secs(86_400))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    println!(
        "scale: sizes={:?} connections={:?} queries={} text_points={} load={:?} data={}",
        o.sizes,
        o.connections,
        o.queries,
        o.text_points,
        o.load,
        data_dir.display()
    );
    println!("cpu: {}", cpu_flags());
    println!(
        "descriptors: {} (soft limit, raised to the hard one)",
        fd_limit.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
    );
    let (batch, concurrency) = (o.batch.clamp(1, 1_000), o.concurrency.max(1));
    let mut service = Service::start(&data_dir).await?;
    if o.text_points > 0 {
        let load = Load::of(&service, &http, &token, org, batch, concurrency).await?;
        let took = load.run(0, o.text_points, None).await?;
        println!(
            "text points: {} by the default model in {:.1} s ({:.0}/s)",
            o.text_points,
            took.as_secs_f64(),
            o.text_points as f64 / took.as_secs_f64()
        );
        let built = service.index_settled(&http).await?;
        println!("  index settled {:.1} s later", built.as_secs_f64());
    }
    let text_queries = corpus::texts(o.queries.max(1), 99, 12);
    let mut loaded = 0;
    for &size in &o.sizes {
        let added = size - loaded;
        let (took, built) = match o.load {
            LoadVia::Api => {
                let load = Load::of(&service, &http, &token, org, batch, concurrency).await?;
                let took = load.run(loaded, size, Some("mock")).await?;
                (took, service.index_settled(&http).await?)
            }
            LoadVia::Store => {
                service.stop().await;
                let store = data_dir.join("qdrant");
                let (took, built) = load_store(&store, collection, org, loaded, size).await?;
                service = Service::start(&data_dir).await?;
                service.index_settled(&http).await?;
                (took, built)
            }
        };
        loaded = size;
        let metrics = service.store_metrics(&http).await?;
        let memory = service.memory();
        let disk = Disk::of(&data_dir);
        println!("== {size} mock points (+{} texts)", o.text_points);
        println!(
            "  load: {added} in {:.1} s ({:.0} points/s); index settled {:.1} s after",
            took.as_secs_f64(),
            added as f64 / took.as_secs_f64(),
            built.as_secs_f64()
        );
        println!(
            "  store, once its index settled: {} points, {} vectors indexed; \
             {} runs in this serve, {:.1} s in all",
            metrics.points, metrics.indexed, metrics.runs, metrics.run_seconds
        );
        println!(
            "  memory: serve {} MiB resident (peak {} MiB), nats-server {} MiB (peak {} MiB)",
            memory.serve.0 >> 20,
            memory.serve.1 >> 20,
            memory.nats.0 >> 20,
            memory.nats.1 >> 20
        );
        println!(
            "  disk: qdrant {} MiB, nats {} MiB",
            disk.qdrant >> 20,
            disk.nats >> 20
        );
        let url = service.url.clone();
        for &c in &o.connections {
            let queries = o.queries.max(10 * c);
            let round = search_round(&url, &token, c, queries, |i| {
                vector_query(&text_queries[i % text_queries.len()])
            })
            .await?;
            round.print("vector", c);
            if o.text_points > 0 {
                let round = search_round(&url, &token, c, queries, |i| {
                    serde_json::json!({
                        "query": text_queries[i % text_queries.len()],
                        "limit": LIMIT,
                    })
                })
                .await?;
                round.print("text", c);
            }
        }
    }
    service.stop().await;
    Ok(())
}

/// Writes mock points `from..to` into the embedded store under `root`, as the worker writes
/// them (payload, point id, the mock model's vector of the text), 1,000 a call; then waits for
/// its optimizer. Returns the time of the writes and of the index build after them.
async fn load_store(
    root: &Path,
    collection: &str,
    org: Uuid,
    from: usize,
    to: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let store = EmbeddedStore::open(root.to_owned(), collection.to_owned(), DIM).await?;
    store.ensure_collection().await?;
    let mock = Mock::new(DIM);
    let started = Instant::now();
    for start in (from..to).step_by(1_000) {
        let end = (start + 1_000).min(to);
        let texts = corpus::texts(end - start, start as u64, 12);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = mock.embed(&refs)?;
        let asset_id = format!("scale-mock-{start}");
        let points = texts
            .into_iter()
            .zip(vectors)
            .enumerate()
            .map(|(i, (text, vector))| {
                let segment_id = format!("s-{}", start + i);
                NewPoint {
                    id: point_id(org, &asset_id, &segment_id, Mock::NAME, Mock::VERSION),
                    vector,
                    payload: Payload {
                        org_id: org,
                        asset_id: asset_id.clone(),
                        segment_id,
                        model: Mock::NAME.to_owned(),
                        model_ver: Mock::VERSION.to_owned(),
                        text: Some(text),
                        seq: None,
                        meta: Metadata::default(),
                        moved_from: None,
                        extra: serde_json::Map::new(),
                    },
                }
            })
            .collect();
        store.upsert(points).await?;
    }
    let took = started.elapsed();
    while store.optimizing() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let built = started.elapsed() - took;
    Ok((took, built))
}

/// A vector query: the mock model's vector of a query text, as its points' vectors are made.
fn vector_query(text: &str) -> serde_json::Value {
    let vector = Mock::new(DIM)
        .embed(&[text])
        .ok()
        .and_then(|mut vectors| vectors.pop())
        .unwrap_or_default();
    serde_json::json!({"vector": vector, "model": Mock::NAME, "limit": LIMIT})
}

/// What a loading step posts to.
struct Load<'a> {
    http: &'a reqwest::Client,
    url: &'a str,
    nats_url: String,
    token: &'a str,
    org: Uuid,
    batch: usize,
    concurrency: usize,
}

impl<'a> Load<'a> {
    /// Loading through `service`, whose NATS URL its `/readyz` reports.
    async fn of(
        service: &'a Service,
        http: &'a reqwest::Client,
        token: &'a str,
        org: Uuid,
        batch: usize,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http,
            url: &service.url,
            nats_url: super::nats_url_of(http, &service.url).await?,
            token,
            org,
            batch,
            concurrency,
        })
    }

    /// Posts segments `from..to` (texts seeded by their number) with `model`, and waits for
    /// every job to be SUCCEEDED; returns the time from the first post to the last success.
    async fn run(&self, from: usize, to: usize, model: Option<&str>) -> anyhow::Result<Duration> {
        let (mut done_rx, watcher) = watch_bucket(&self.nats_url, self.org).await?;
        let endpoint = format!("{}/vectors/embed/batch", self.url);
        let tag = model.unwrap_or("default");
        let batches: Vec<(usize, usize)> = (from..to)
            .step_by(self.batch)
            .map(|start| (start, (start + self.batch).min(to)))
            .collect();
        let started = Instant::now();
        let accepted: Vec<anyhow::Result<usize>> = futures::stream::iter(batches)
            .map(|(start, end)| {
                let endpoint = &endpoint;
                async move {
                    let texts = corpus::texts(end - start, start as u64, 12);
                    let segments: Vec<serde_json::Value> = texts
                        .iter()
                        .enumerate()
                        .map(|(i, text)| {
                            serde_json::json!({"segment_id": format!("s-{}", start + i), "text": text})
                        })
                        .collect();
                    let mut body = serde_json::json!({
                        "asset_id": format!("scale-{tag}-{start}"),
                        "segments": segments,
                    });
                    if let Some(model) = model {
                        body["model"] = model.into();
                    }
                    let (response, _waits) = send_honouring_retry_after(|| {
                        self.http
                            .post(endpoint)
                            .bearer_auth(self.token)
                            .json(&body)
                    })
                    .await;
                    let response = response?;
                    anyhow::ensure!(
                        response.status() == reqwest::StatusCode::ACCEPTED,
                        "batch at {start} answered {}: {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                    Ok(end - start)
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let accepted = accepted
            .into_iter()
            .collect::<anyhow::Result<Vec<usize>>>()?
            .into_iter()
            .sum::<usize>();
        let (completed, last) =
            await_completions(&mut done_rx, accepted, started, Duration::from_secs(7_200)).await;
        watcher.abort();
        anyhow::ensure!(
            completed == accepted,
            "{completed} of {accepted} jobs completed"
        );
        Ok(last.duration_since(started))
    }
}

/// One round of searches: `queries` requests over `connections` connections, each its own
/// client with one connection, sending one request after another.
async fn search_round(
    url: &str,
    token: &str,
    connections: usize,
    queries: usize,
    body: impl Fn(usize) -> serde_json::Value,
) -> anyhow::Result<Round> {
    let endpoint = format!("{url}/vectors/search");
    let bodies: Vec<serde_json::Value> = (0..queries).map(&body).collect();
    let clients = (0..connections)
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(60))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Warm-up: every connection opened and used once.
    let warm = futures::future::join_all(
        clients
            .iter()
            .enumerate()
            .map(|(i, client)| send(client, &endpoint, token, &bodies[i % bodies.len()])),
    )
    .await;
    let warm_errors = warm.iter().filter(|r| r.is_err()).count();

    let started = Instant::now();
    let per_connection =
        futures::future::join_all(clients.iter().enumerate().map(|(c, client)| {
            let (endpoint, bodies) = (&endpoint, &bodies);
            async move {
                let mut outcomes = Vec::new();
                for i in (c..queries).step_by(connections) {
                    outcomes.push(send(client, endpoint, token, &bodies[i]).await);
                }
                outcomes
            }
        }))
        .await;
    let elapsed = started.elapsed();
    let mut round = Round {
        elapsed,
        warm_errors,
        ..Round::default()
    };
    for outcome in per_connection.into_iter().flatten() {
        match outcome {
            Ok((latency, hits)) => {
                round.latencies.push(latency);
                if hits == 0 {
                    round.empty += 1;
                }
            }
            Err(err) => {
                if round.first_error.is_none() {
                    round.first_error = Some(format!("{err:#}"));
                }
                round.errors += 1;
            }
        }
    }
    round.latencies.sort();
    Ok(round)
}

/// One search: its latency and number of hits, or why it failed (transport or non-2xx).
async fn send(
    client: &reqwest::Client,
    endpoint: &str,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(Duration, usize)> {
    let sent = Instant::now();
    let response = client
        .post(endpoint)
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    let status = response.status();
    anyhow::ensure!(
        status.is_success(),
        "search answered {status}: {}",
        response.text().await.unwrap_or_default()
    );
    let answer: serde_json::Value = response.json().await?;
    let hits = answer["results"].as_array().map_or(0, Vec::len);
    Ok((sent.elapsed(), hits))
}

#[derive(Default)]
struct Round {
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: usize,
    warm_errors: usize,
    empty: usize,
    first_error: Option<String>,
}

impl Round {
    fn print(&self, kind: &str, connections: usize) {
        let done = self.latencies.len() + self.errors;
        println!(
            "  {kind} queries, {connections} connections: {done} in {:.1} s -> {:.0} queries/s; \
             p50 {} p99 {} max {}; {} errors ({} in the warm-up), {} empty",
            self.elapsed.as_secs_f64(),
            self.latencies.len() as f64 / self.elapsed.as_secs_f64(),
            ms(percentile(&self.latencies, 0.50)),
            ms(percentile(&self.latencies, 0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
            self.errors,
            self.warm_errors,
            self.empty
        );
        if let Some(error) = &self.first_error {
            println!("    first error: {error}");
        }
    }
}

/// The `serve` this bench runs.
struct Service {
    child: tokio::process::Child,
    url: String,
}

/// The store's figures from the service's metrics.
struct StoreMetrics {
    points: f64,
    indexed: f64,
    runs: f64,
    run_seconds: f64,
}

/// Resident and peak resident bytes of `serve` and of its nats-server.
struct Memory {
    serve: (u64, u64),
    nats: (u64, u64),
}

/// Bytes on disk (allocated blocks) under the data directory.
struct Disk {
    qdrant: u64,
    nats: u64,
}

impl Service {
    async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log_path = data_dir.join("serve.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("serve")
            .env("HEIMDEX_DATA_DIR", data_dir)
            .env("HEIMDEX_API_ADDR", format!("127.0.0.1:{port}"))
            .env("HEIMDEX_NATS_LISTEN", "127.0.0.1:0")
            // One tenant loads a million jobs: the per-org rate limit is for shared services.
            .env("HEIMDEX_RATE_LIMIT_JOBS_PER_SEC", "0")
            .env_remove("HEIMDEX_METRICS_ADDR")
            // The embedded store: its memory and disk are what is measured.
            .env_remove("QDRANT_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = http.get(format!("{url}/readyz")).send().await;
            if matches!(&ready, Ok(r) if r.status().is_success()) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "serve did not become ready; see {}",
                data_dir.join("serve.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self { child, url })
    }

    /// Stops `serve` with SIGTERM, for a clean shutdown, and waits for it. If it has not
    /// stopped within [`STOP_GRACE`], kills it and its nats-server: a killed `serve` cannot
    /// stop its nats-server itself, which would outlive the bench.
    async fn stop(&mut self) {
        let Some(pid) = self.child.id() else {
            return;
        };
        let started = Instant::now();
        signal(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            println!(
                "  serve did not stop within {} s of SIGTERM: killing it and its nats-server",
                STOP_GRACE.as_secs()
            );
            self.kill_nats();
            let _ = self.child.kill().await;
        } else if started.elapsed() > Duration::from_secs(5) {
            println!(
                "  serve took {:.1} s to stop",
                started.elapsed().as_secs_f64()
            );
        }
    }

    /// SIGKILLs `serve`'s nats-server, if `serve` is running and has one.
    fn kill_nats(&self) {
        if let Some(nats) = self.nats_pid() {
            signal(nats, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// The nats-server `serve` started, while `serve` runs.
    fn nats_pid(&self) -> Option<u32> {
        children_of(self.child.id()?).into_iter().find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "nats-server")
        })
    }

    /// See [`super::index_settled`].
    async fn index_settled(&self, http: &reqwest::Client) -> anyhow::Result<Duration> {
        super::index_settled(http, &self.url).await
    }

    async fn store_metrics(&self, http: &reqwest::Client) -> anyhow::Result<StoreMetrics> {
        let text = super::scrape_metrics(http, &self.url).await?;
        let sum = |name: &str| samples(&text, name).iter().sum::<f64>();
        Ok(StoreMetrics {
            points: sum("heimdex_vector_store_points"),
            indexed: sum("heimdex_vector_store_indexed_vectors"),
            runs: sum("heimdex_vector_store_optimize_duration_seconds_count"),
            run_seconds: sum("heimdex_vector_store_optimize_duration_seconds_sum"),
        })
    }

    fn memory(&self) -> Memory {
        let serve = self.child.id().unwrap_or_default();
        let nats = self.nats_pid().unwrap_or_default();
        Memory {
            serve: resident(serve),
            nats: resident(nats),
        }
    }
}

/// A bench that ends early (an error) drops its `Service`, and `kill_on_drop` SIGKILLs
/// `serve`: its nats-server goes first, as a clean stop would take it.
impl Drop for Service {
    fn drop(&mut self) {
        self.kill_nats();
    }
}

/// Sends `signal` to process `pid`, which may have gone meanwhile.
fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// `VmRSS` and `VmHWM` of a process, in bytes (0 if it cannot be read).
fn resident(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib << 10)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // `pid (comm) state ppid …`: the fields after the last ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

impl Disk {
    fn of(data_dir: &Path) -> Self {
        Self {
            qdrant: allocated(&data_dir.join("qdrant")),
            nats: allocated(&data_dir.join("nats")),
        }
    }
}

/// Allocated bytes of every file under `path` (sparse and preallocated files as they sit).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| allocated(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.blocks() * 512
    }
}
