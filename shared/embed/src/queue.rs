//! The process's one embedding queue, shared by the worker (batches of texts to ingest) and by
//! search (a text query's one short text).
//!
//! **The rule.** One forward pass runs at a time, on the model's own threads (its
//! [`ThreadBudget`](crate::ThreadBudget)), driven by the queue's one thread. Queries go first: a
//! waiting query is taken before any batch, and while a batch runs the queue checks for queries
//! after every step of its forward pass (a matrix product, attention or a LayerNorm over at most
//! [`MiniLm::TOKENS_PER_PASS`](crate::MiniLm::TOKENS_PER_PASS) tokens) and runs them there, before
//! the next step. So a query waits for at most the step already running, which passes bounded
//! in tokens bound in turn (the largest step of a full pass is its intermediate product,
//! 2,048 × 384 × 1,536 multiply-adds, 2.4 GFLOP), and never for the rest of a batch. Queries that arrive together share one pass.
//!
//! Batches (priority [`Priority::Bulk`]) are served in arrival order; the ones waiting for the
//! same model are merged, up to [`MAX_TEXTS`] texts, into one call, which the model packs into
//! passes: under load, the batches that waited are embedded together. If a merged call fails,
//! each request is retried alone, so one bad input cannot fail the others.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::{EmbedError, Embedder};

/// Most texts in one merged batch call.
pub const MAX_TEXTS: usize = 1_024;

/// Whose texts these are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A search query: someone is waiting for the answer. Goes before any batch.
    Query,
    /// Texts to ingest.
    Bulk,
}

impl Priority {
    /// The priority's name, as metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Query => "query",
            Priority::Bulk => "bulk",
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>;

struct Request {
    model: Arc<dyn Embedder>,
    texts: Vec<String>,
    reply: Reply,
}

#[derive(Default)]
struct State {
    queries: VecDeque<Request>,
    bulk: VecDeque<Request>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// `!state.queries.is_empty()`, readable without the lock between the steps of a pass.
    queries_waiting: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across a call into a model, so a poisoned lock only means a
        // panic while moving requests between queues: the state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Closes the queue when the last [`EmbedQueue`] handle is dropped.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.wake.notify_all();
    }
}

/// A handle to the embedding queue. Clones share the queue; the queue's thread ends once every
/// handle is dropped and the requests already queued are answered.
#[derive(Clone)]
pub struct EmbedQueue {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for EmbedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedQueue").finish_non_exhaustive()
    }
}

impl EmbedQueue {
    /// Starts the queue's thread.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            queries_waiting: AtomicBool::new(false),
        });
        let runner = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("heimdex-embed-queue".into())
            .spawn(move || run(&runner))?;
        Ok(Self {
            handle: Arc::new(Handle(shared)),
        })
    }

    /// Embeds `texts` with `model`: one vector per text, in order.
    pub async fn embed(
        &self,
        model: Arc<dyn Embedder>,
        texts: Vec<String>,
        priority: Priority,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            model,
            texts,
            reply,
        };
        let shared = &self.handle.0;
        {
            let mut state = shared.lock();
            match priority {
                Priority::Query => {
                    state.queries.push_back(request);
                    shared.queries_waiting.store(true, Ordering::Release);
                }
                Priority::Bulk => state.bulk.push_back(request),
            }
        }
        shared.wake.notify_one();
        answer.await.map_err(|_| EmbedError::Stopped)?
    }
}

/// The queue's thread: queries first, then batches, one call at a time.
fn run(shared: &Shared) {
    loop {
        let (group, priority) = {
            let mut state = shared.lock();
            loop {
                if let Some(group) = take_queries(shared, &mut state) {
                    break (group, Priority::Query);
                }
                if let Some(group) = take_group(&mut state.bulk, MAX_TEXTS) {
                    break (group, Priority::Bulk);
                }
                if state.closed {
                    return;
                }
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        match priority {
            Priority::Query => embed_group(group, priority, &mut || {}),
            Priority::Bulk => embed_group(group, priority, &mut || serve_queries(shared)),
        }
    }
}

/// Runs every waiting query; called between the steps of a batch's forward pass.
fn serve_queries(shared: &Shared) {
    while shared.queries_waiting.load(Ordering::Acquire) {
        let Some(group) = take_queries(shared, &mut shared.lock()) else {
            return;
        };
        embed_group(group, Priority::Query, &mut || {});
    }
}

fn take_queries(shared: &Shared, state: &mut State) -> Option<Vec<Request>> {
    let group = take_group(&mut state.queries, MAX_TEXTS);
    if state.queries.is_empty() {
        shared.queries_waiting.store(false, Ordering::Release);
    }
    group
}

/// The first request and every later one for the same model, up to `max_texts` texts (the first
/// is taken whatever its size). The others keep their order.
fn take_group(queue: &mut VecDeque<Request>, max_texts: usize) -> Option<Vec<Request>> {
    let first = queue.pop_front()?;
    let mut total = first.texts.len();
    let mut group = vec![first];
    let mut rest = VecDeque::with_capacity(queue.len());
    while let Some(request) = queue.pop_front() {
        if total + request.texts.len() <= max_texts && same_model(&request.model, &group[0].model) {
            total += request.texts.len();
            group.push(request);
        } else {
            rest.push_back(request);
        }
    }
    *queue = rest;
    Some(group)
}

fn same_model(a: &Arc<dyn Embedder>, b: &Arc<dyn Embedder>) -> bool {
    a.model() == b.model() && a.model_ver() == b.model_ver()
}

/// One call for the group; if it fails, each request alone. A panic in the model answers the
/// group's requests with [`EmbedError::Stopped`] (their replies are dropped) and the queue
/// carries on.
///
/// Each call is measured: its texts in `heimdex_embed_batch_texts`, its duration (for a bulk
/// call, with the queries run between its steps) in `heimdex_embed_duration_seconds`.
fn embed_group(group: Vec<Request>, priority: Priority, between: &mut dyn FnMut()) {
    let texts = group.iter().map(|r| r.texts.len()).sum::<usize>();
    let started = std::time::Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| embed_group_inner(group, between)));
    let priority = priority.as_str();
    metrics::histogram!("heimdex_embed_batch_texts", "priority" => priority).record(texts as f64);
    metrics::histogram!("heimdex_embed_duration_seconds", "priority" => priority)
        .record(started.elapsed().as_secs_f64());
    if outcome.is_err() {
        tracing::error!(
            texts,
            "embedding panicked; its requests were answered with an error"
        );
    }
}

fn embed_group_inner(group: Vec<Request>, between: &mut dyn FnMut()) {
    let Some(model) = group.first().map(|r| Arc::clone(&r.model)) else {
        return;
    };
    if group.len() > 1 {
        let texts: Vec<&str> = group
            .iter()
            .flat_map(|r| r.texts.iter().map(String::as_str))
            .collect();
        tracing::debug!(
            requests = group.len(),
            texts = texts.len(),
            "merged embedding requests"
        );
        if let Ok(vectors) = model.embed_yielding(&texts, between) {
            let mut vectors = vectors.into_iter();
            for request in group {
                let mine: Vec<Vec<f32>> = vectors.by_ref().take(request.texts.len()).collect();
                let _ = request.reply.send(Ok(mine));
            }
            return;
        }
    }
    for request in group {
        let texts: Vec<&str> = request.texts.iter().map(String::as_str).collect();
        let _ = request
            .reply
            .send(request.model.embed_yielding(&texts, between));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Mock;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_requests_get_their_own_vectors() {
        let queue = EmbedQueue::start().unwrap();
        let model: Arc<dyn Embedder> = Arc::new(Mock::new(4));
        let requests = (0..20).map(|i| {
            let (queue, model) = (queue.clone(), model.clone());
            async move {
                let texts: Vec<String> = (0..i + 1).map(|j| format!("text {i} {j}")).collect();
                let priority = if i % 3 == 0 {
                    Priority::Query
                } else {
                    Priority::Bulk
                };
                let got = queue
                    .embed(model.clone(), texts.clone(), priority)
                    .await
                    .unwrap();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                assert_eq!(got, model.embed(&refs).unwrap());
            }
        });
        futures::future::join_all(requests).await;
    }

    #[tokio::test]
    async fn a_bad_request_does_not_fail_the_others() {
        let queue = EmbedQueue::start().unwrap();
        let model: Arc<dyn Embedder> = Arc::new(Mock::new(4));
        let (good, bad) = tokio::join!(
            queue.embed(model.clone(), vec!["fine".into()], Priority::Bulk),
            queue.embed(model.clone(), vec!["  ".into()], Priority::Bulk),
        );
        assert_eq!(good.unwrap().len(), 1);
        assert!(matches!(bad, Err(EmbedError::InvalidInput(_))));
    }

    /// A model whose "forward pass" is `steps` steps, each waiting for the test's go-ahead, and
    /// which records the order in which calls start and finish.
    struct Stepped {
        steps: usize,
        step_started: std::sync::mpsc::SyncSender<()>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
        log: Mutex<Vec<String>>,
        calls: AtomicUsize,
    }

    impl Embedder for Stepped {
        fn model(&self) -> &str {
            "stepped"
        }
        fn model_ver(&self) -> &str {
            "v1"
        }
        fn dim(&self) -> usize {
            1
        }
        fn max_tokens(&self) -> usize {
            8
        }
        fn special_tokens(&self) -> usize {
            0
        }
        fn token_spans(&self, _: &str) -> Result<Vec<(usize, usize)>, EmbedError> {
            Ok(Vec::new())
        }
        fn embed_yielding(
            &self,
            texts: &[&str],
            between: &mut dyn FnMut(),
        ) -> Result<Vec<Vec<f32>>, EmbedError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let name = texts.join("+");
            self.log.lock().unwrap().push(format!("start {name}"));
            // Only the batch has steps: the test lets each one finish.
            if texts.iter().any(|t| t.starts_with("bulk")) {
                for _ in 0..self.steps {
                    self.step_started.send(()).unwrap();
                    self.go.lock().unwrap().recv().unwrap();
                    between();
                }
            }
            self.log.lock().unwrap().push(format!("end {name}"));
            Ok(texts.iter().map(|_| vec![1.0]).collect())
        }
    }

    /// The stated rule: a query that arrives while a batch's pass is running is answered after
    /// the step in flight, before the batch's remaining steps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_waits_for_one_step_of_a_running_batch_not_for_the_batch() {
        let (step_started, started) = std::sync::mpsc::sync_channel(0);
        let (go, go_rx) = std::sync::mpsc::channel();
        let model = Arc::new(Stepped {
            steps: 3,
            step_started,
            go: Mutex::new(go_rx),
            log: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
        });
        let dynamic: Arc<dyn Embedder> = model.clone();
        let queue = EmbedQueue::start().unwrap();
        let submit = |text: &str, priority| {
            let (queue, model, text) = (queue.clone(), dynamic.clone(), text.to_owned());
            tokio::spawn(async move { queue.embed(model, vec![text], priority).await })
        };
        let step_starts = |started: std::sync::mpsc::Receiver<()>| {
            tokio::task::spawn_blocking(move || {
                started.recv().unwrap();
                started
            })
        };

        let bulk = submit("bulk", Priority::Bulk);
        let started = step_starts(started).await.unwrap(); // the batch is in its first step
        let query = submit("query", Priority::Query);
        while !queue.handle.0.queries_waiting.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        go.send(()).unwrap(); // the first step ends: the query runs before the second
        assert_eq!(query.await.unwrap().unwrap(), vec![vec![1.0]]);
        assert_eq!(
            model.log.lock().unwrap().len(),
            3,
            "the batch has not finished"
        );
        let mut started = started;
        for _ in 0..2 {
            started = step_starts(started).await.unwrap();
            go.send(()).unwrap();
        }
        assert_eq!(bulk.await.unwrap().unwrap().len(), 1);
        let log = model.log.lock().unwrap().clone();
        assert_eq!(log, ["start bulk", "start query", "end query", "end bulk"]);
        assert_eq!(model.calls.load(Ordering::SeqCst), 2);
    }
}
