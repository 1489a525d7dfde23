//! The scale-out topology on one machine: three nats-server processes in one cluster (the job
//! stream and the status bucket R3), two `heimdex api`, two `heimdex worker` and one
//! `heimdex projector`, every process given all three servers in `NATS_URL`. The stream's leader
//! is killed with `kill -9` while jobs arrive through both APIs, stays down for a while, and is
//! started again on its store; it must catch up, and nothing accepted may be lost.
//!
//! Vectors go to the Qdrant server at `QDRANT_URL` when the environment names one, shared by every
//! process; otherwise each worker has its own embedded store and the check counts their union.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use heimdex_event_store::jetstream::{JOBS_STREAM, STATUS_BUCKET};
use serde_json::Value;
use uuid::Uuid;

use crate::harness::*;

/// The vector store every process shares: `QDRANT_URL` (a Qdrant server) when set, else the
/// test's Qdrant stand-in (Qdrant's gRPC API over the Qdrant engine, tests/qdrant-standin).
async fn shared_store(dir: &std::path::Path) -> (Option<heimdex_qdrant_standin::Standin>, String) {
    match std::env::var("QDRANT_URL")
        .ok()
        .filter(|url| !url.is_empty())
    {
        Some(url) => (None, url),
        None => {
            let standin = heimdex_qdrant_standin::Standin::start(
                dir.join("qdrant"),
                "127.0.0.1:0".parse().expect("address"),
            )
            .await
            .expect("stand-in starts");
            let url = standin.url();
            (Some(standin), url)
        }
    }
}

/// The workers' `ack_wait`. With `max_deliver` 4 a job is given up after four of them: at 5 s,
/// two jobs once ran out of deliveries around a slow election on a 2-core machine (their points
/// written, their `succeeded` refused by the leaderless stream) and were failed by the
/// max-deliveries advisory, 20 s after the kill. Why their later deliveries did not finish them
/// was not found (deliveries lost to pulls during the election would explain it). 10 s leaves
/// the election a wider margin; the service's default is 30 s.
fn ack_wait_ms() -> &'static str {
    scale("10000", "30000")
}

/// One member of the cluster: its nats-server and the monitoring port that reports what this
/// server itself holds (`/jsz`), whoever leads.
struct Node {
    name: String,
    nats: Nats,
    monitor_port: u16,
}

/// Three nats-server processes with JetStream, routed to each other on loopback.
struct Cluster {
    nodes: Vec<Node>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(root: &Path, size: usize) -> Self {
        // Three ports per node (client, route, monitoring), all different.
        let mut ports = HashSet::new();
        while ports.len() < 3 * size {
            ports.insert(free_port());
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        let (client, rest) = ports.split_at(size);
        let (route, monitor) = rest.split_at(size);
        let mut nodes = Vec::new();
        for i in 0..size {
            let name = format!("n{}", i + 1);
            let routes: Vec<String> = (0..size)
                .filter(|&j| j != i)
                .map(|j| format!("nats://127.0.0.1:{}", route[j]))
                .collect();
            let args = [
                "--server_name",
                &name,
                "--cluster_name",
                "heimdex-faults",
                "--cluster",
                &format!("nats://127.0.0.1:{}", route[i]),
                "--routes",
                &routes.join(","),
                "--http_port",
                &monitor[i].to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            let nats = start_nats_on(client[i], root.join(&name), args).await;
            nodes.push(Node {
                name,
                nats,
                monitor_port: monitor[i],
            });
        }
        Self {
            nodes,
            http: reqwest::Client::new(),
        }
    }

    /// `NATS_URL` naming every member.
    fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|node| node.nats.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node named {name}"))
    }

    /// Node `i`'s own view of `stream` (its copy's state, the leader it follows), from its
    /// monitoring endpoint: a follower's copy is read, not the leader's answer.
    async fn stream_detail(&self, i: usize, stream: &str) -> Option<Value> {
        let url = format!(
            "http://127.0.0.1:{}/jsz?accounts=true&streams=true",
            self.nodes[i].monitor_port
        );
        let response = self.http.get(url).timeout(Duration::from_secs(2));
        let jsz: Value = response.send().await.ok()?.json().await.ok()?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|account| {
                account["stream_detail"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|detail| detail["name"] == stream)
    }

    /// What node `i` itself stores of `stream`: (messages, last sequence).
    async fn local_state(&self, i: usize, stream: &str) -> Option<(u64, u64)> {
        let detail = self.stream_detail(i, stream).await?;
        let state = &detail["state"];
        Some((state["messages"].as_u64()?, state["last_seq"].as_u64()?))
    }

    /// The leader of `stream` that a running node other than `not` follows, once there is one.
    async fn new_leader(&self, stream: &str, not: &str) -> Option<String> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.name == not || !node.nats.is_running() {
                continue;
            }
            let detail = self.stream_detail(i, stream).await?;
            if let Some(leader) = detail["cluster"]["leader"].as_str().filter(|l| *l != not) {
                return Some(leader.to_owned());
            }
        }
        None
    }
}

/// The stream's cluster view as its leader reports it: the leader's name and, per other
/// member, whether it is current.
async fn cluster_info(
    js: &jetstream::Context,
    stream: &str,
) -> Option<jetstream::stream::ClusterInfo> {
    let mut stream = js.get_stream(stream).await.ok()?;
    stream.info().await.ok()?.cluster.clone()
}

async fn leader(js: &jetstream::Context, stream: &str) -> Option<String> {
    cluster_info(js, stream).await?.leader
}

/// Whether `node` is a current, online replica of `stream` with nothing left to apply.
async fn caught_up(js: &jetstream::Context, stream: &str, node: &str) -> bool {
    cluster_info(js, stream).await.is_some_and(|cluster| {
        cluster.leader.as_deref() == Some(node)
            || cluster.replicas.iter().any(|peer| {
                peer.name == node && peer.current && !peer.offline && peer.lag.unwrap_or(0) == 0
            })
    })
}

/// The longest stretch without a newly accepted job while submissions run: how long the
/// service stopped accepting around the kill.
struct AcceptGap {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl AcceptGap {
    fn watch(ledger: Arc<Ledger>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut count, mut since, mut longest) =
                    (ledger.accepted(), Instant::now(), Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let now = ledger.accepted();
                    if now > count {
                        longest = longest.max(since.elapsed());
                        (count, since) = (now, Instant::now());
                    }
                }
                longest
            }
        });
        Self { stop, task }
    }

    async fn longest(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("gap watch")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_stream_leader_kill_9_loses_nothing() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let mut cluster = Cluster::start(root, 3).await;
    let url = cluster.url();
    let (_standin, store_url) = shared_store(root).await;
    // Started at once, before the cluster has a JetStream meta leader: start-up must wait for it.
    let env = |name: &str| {
        let mut env = heimdex_env(&root.join(name), Some(&url));
        set_env(&mut env, "NATS_REPLICAS", "3");
        set_env(&mut env, "NATS_WORKER_ACK_WAIT_MS", ack_wait_ms());
        set_env(&mut env, "QDRANT_URL", store_url.clone());
        env
    };
    let mut apis = Vec::new();
    let mut bases = Vec::new();
    for name in ["api-1", "api-2"] {
        let port = free_port();
        let mut api_env = env(name);
        set_env(
            &mut api_env,
            "HEIMDEX_API_ADDR",
            format!("127.0.0.1:{port}"),
        );
        apis.push(Heimdex::spawn(name, &["api"], api_env, root));
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    let mut workers: Vec<Heimdex> = ["worker-1", "worker-2"]
        .into_iter()
        .map(|name| Heimdex::spawn(name, &["worker"], env(name), root))
        .collect();
    let mut projector = Heimdex::spawn("projector", &["projector"], env("projector"), root);
    let ledger = Ledger::new(Uuid::new_v4());
    let client = Client::new(bases.clone(), ledger.clone());
    for base in &bases {
        wait_ready(&client.http, base, Duration::from_secs(60)).await;
    }
    let watch = StatusWatch::start(&url, ledger.org).await;
    let js = jetstream(&url).await;
    let kv_stream = format!("KV_{STATUS_BUCKET}");

    // Down for longer than a leader election takes (5 to 8 s here), so that the service is seen
    // serving on two nodes, and back before the submissions end.
    let (jobs, rate, outage) = scale(
        (1_500, 100.0, Duration::from_secs(10)),
        (10_000, 300.0, Duration::from_secs(20)),
    );
    let run = Duration::from_secs_f64(jobs as f64 / rate);
    let gap = AcceptGap::watch(ledger.clone());
    let submitting = tokio::spawn({
        let client = client.clone();
        async move { submit_mock_jobs(&client, "cluster", jobs, 32, rate).await }
    });
    tokio::time::sleep(run / 4).await;

    // The hardest node to lose: the one every publish goes through.
    let victim_name = leader(&js, JOBS_STREAM).await.expect("stream leader");
    let kv_leader = leader(&js, &kv_stream).await.expect("bucket leader");
    let victim = cluster.index(&victim_name);
    let accepted_at_kill = ledger.accepted();
    let killed = Instant::now();
    cluster.nodes[victim].nats.kill().await;
    let elected = heimdex_tests::eventually(Duration::from_secs(60), || {
        cluster.new_leader(JOBS_STREAM, &victim_name)
    })
    .await
    .expect("a new stream leader");
    let election = killed.elapsed();
    tokio::time::sleep(outage.saturating_sub(killed.elapsed())).await;
    let accepted_while_down = ledger.accepted() - accepted_at_kill;
    let down = killed.elapsed();

    cluster.nodes[victim]
        .nats
        .start_again()
        .await
        .expect("nats-server starts again");
    let restarted = Instant::now();
    heimdex_tests::eventually(Duration::from_secs(120), || async {
        (caught_up(&js, JOBS_STREAM, &victim_name).await
            && caught_up(&js, &kv_stream, &victim_name).await)
            .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{victim_name} did not catch up within 120 s"));
    let catch_up = restarted.elapsed();

    assert_eq!(
        submitting.await.expect("submitter"),
        jobs,
        "every job accepted"
    );
    let longest_pause = gap.longest().await;
    let (statuses, _) = wait_terminal(&js, &ledger, Duration::from_secs(180)).await;
    let recovery = restarted.elapsed();

    // Every member, the restarted one included, holds the same log and the same bucket.
    let mut same = Vec::new();
    for stream in [JOBS_STREAM, kv_stream.as_str()] {
        let states = heimdex_tests::eventually(Duration::from_secs(30), || async {
            let mut states = Vec::new();
            for i in 0..cluster.nodes.len() {
                states.push(cluster.local_state(i, stream).await?);
            }
            states.windows(2).all(|w| w[0] == w[1]).then_some(states)
        })
        .await
        .unwrap_or_else(|| panic!("the three nodes do not agree on {stream}"));
        same.push(format!(
            "{stream}: {} messages, last seq {} on every node",
            states[0].0, states[0].1
        ));
    }

    let mut outcome = tally_jobs(
        "kill -9 NATS stream leader (3-node cluster)",
        &ledger,
        &statuses,
        &js,
        Some(&watch),
    )
    .await;
    for worker in &mut workers {
        worker.stop_cleanly().await;
    }
    outcome
        .count_points(&[open_remote_store(&store_url).await])
        .await;
    outcome.recovery = recovery;
    outcome.note(format!(
        "killed {victim_name} (stream leader{}) after {accepted_at_kill} jobs, down {:.1} s; \
         new leader {elected} in {:.1} s; {accepted_while_down} accepted while down; longest \
         pause in acceptances {:.1} s; caught up {:.1} s after restart; {}",
        if kv_leader == victim_name {
            ", bucket leader too"
        } else {
            ""
        },
        down.as_secs_f64(),
        election.as_secs_f64(),
        longest_pause.as_secs_f64(),
        catch_up.as_secs_f64(),
        same.join("; "),
    ));
    outcome.note(format!(
        "2 api, 2 workers, 1 projector; vectors {}",
        if _standin.is_some() {
            "in one shared Qdrant stand-in"
        } else {
            "in one shared Qdrant server"
        }
    ));
    for api in &mut apis {
        api.stop_cleanly().await;
    }
    projector.stop_cleanly().await;
    let mut logs: Vec<&Heimdex> = apis.iter().chain(&workers).collect();
    logs.push(&projector);
    outcome.attach_logs(&logs);
    outcome.report_and_assert();
}
