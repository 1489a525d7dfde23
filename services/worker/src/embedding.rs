//! Dynamic batching of embeddings across jobs and worker batches. Each worker batch hands its
//! texts to one queue; a single loop takes everything queued (up to [`MAX_TEXTS`]), embeds it in
//! one call on the blocking pool and hands each caller its vectors. So the latency bound is
//! "the forward pass in progress" (an idle worker embeds at once) and the size bound is
//! `MAX_TEXTS`: under load, the batches that waited are merged, and the embedder's
//! length-sorted sub-batches pad less. One forward pass runs at a time: each already uses
//! every core.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use heimdex_embed::{EmbedError, Embedder};

/// Most texts in one embed call.
pub const MAX_TEXTS: usize = 1_024;

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>;

struct Request {
    model: Arc<dyn Embedder>,
    texts: Vec<String>,
    reply: Reply,
}

/// Handle to the embedding loop; the loop ends when every handle is dropped.
#[derive(Clone)]
pub struct EmbedQueue {
    tx: mpsc::UnboundedSender<Request>,
}

impl EmbedQueue {
    /// Starts the loop on the current runtime.
    pub fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx));
        Self { tx }
    }

    /// Embeds `texts` with `model`, together with whatever else is queued.
    pub async fn embed(
        &self,
        model: Arc<dyn Embedder>,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request {
                model,
                texts,
                reply,
            })
            .map_err(|_| EmbedError::Inference("the embedding loop has stopped".into()))?;
        answer
            .await
            .map_err(|_| EmbedError::Inference("the embedding loop dropped the request".into()))?
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut carry: Option<Request> = None;
    loop {
        let first = match carry.take() {
            Some(request) => request,
            None => match rx.recv().await {
                Some(request) => request,
                None => return,
            },
        };
        // Everything already queued for the same model, up to MAX_TEXTS.
        let mut group = vec![first];
        let mut total = group.iter().map(|r| r.texts.len()).sum::<usize>();
        while total < MAX_TEXTS {
            match rx.try_recv() {
                Ok(request) if same_model(&request.model, &group[0].model) => {
                    total += request.texts.len();
                    group.push(request);
                }
                Ok(other) => {
                    carry = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if group.len() > 1 {
            tracing::debug!(
                requests = group.len(),
                texts = total,
                "merged embedding batches"
            );
        }
        let joined = tokio::task::spawn_blocking(move || embed_group(group)).await;
        if let Err(err) = joined {
            tracing::error!(%err, "embedding task failed");
        }
    }
}

fn same_model(a: &Arc<dyn Embedder>, b: &Arc<dyn Embedder>) -> bool {
    a.model() == b.model() && a.model_ver() == b.model_ver()
}

/// One embed call for the group; if it fails, each request alone, so one bad input cannot fail
/// the others.
fn embed_group(group: Vec<Request>) {
    let Some(model) = group.first().map(|r| r.model.clone()) else {
        return;
    };
    if group.len() > 1 {
        let texts: Vec<&str> = group
            .iter()
            .flat_map(|r| r.texts.iter().map(String::as_str))
            .collect();
        if let Ok(vectors) = model.embed(&texts) {
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
        let _ = request.reply.send(request.model.embed(&texts));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heimdex_embed::Mock;

    #[tokio::test]
    async fn concurrent_requests_get_their_own_vectors() {
        let queue = EmbedQueue::start();
        let model: Arc<dyn Embedder> = Arc::new(Mock::new(4));
        let requests = (0..20).map(|i| {
            let (queue, model) = (queue.clone(), model.clone());
            async move {
                let texts: Vec<String> = (0..i + 1).map(|j| format!("text {i} {j}")).collect();
                let got = queue.embed(model.clone(), texts.clone()).await.unwrap();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                assert_eq!(got, model.embed(&refs).unwrap());
            }
        });
        futures::future::join_all(requests).await;
    }

    #[tokio::test]
    async fn a_bad_request_does_not_fail_the_others() {
        let queue = EmbedQueue::start();
        let model: Arc<dyn Embedder> = Arc::new(Mock::new(4));
        let (good, bad) = tokio::join!(
            queue.embed(model.clone(), vec!["fine".into()]),
            queue.embed(model.clone(), vec!["  ".into()]),
        );
        assert_eq!(good.unwrap().len(), 1);
        assert!(matches!(bad, Err(EmbedError::InvalidInput(_))));
    }
}
