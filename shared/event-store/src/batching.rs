//! Dynamic batching for the consumers, bounded by size and by latency. An idle service handles
//! what arrives at once; a busy one (the first chunk is already large) lingers a few
//! milliseconds for more, so one status write covers a job's requested/started/succeeded events
//! and one vector-store flush covers more jobs.

use std::time::Duration;

use futures::{Stream, StreamExt};

#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// Largest batch.
    pub max: usize,
    /// A first chunk at least this large means the service is busy: linger for more.
    pub busy: usize,
    /// How long a busy batch waits for more.
    pub linger: Duration,
}

/// The next batch from a stream of chunks, given its first chunk `batch`: extended (while busy)
/// until `max` items or `linger` has passed. Taking the first chunk (`chunks.next()`) is left to
/// the caller because it is cancel-safe (nothing leaves the stream until it is returned), so it
/// can be raced against other events; a batch being gathered cannot.
pub async fn gather<S, T>(mut batch: Vec<T>, chunks: &mut S, policy: Batching) -> Vec<T>
where
    S: Stream<Item = Vec<T>> + Unpin,
{
    if batch.len() < policy.busy {
        return batch;
    }
    let deadline = tokio::time::sleep(policy.linger);
    tokio::pin!(deadline);
    while batch.len() < policy.max {
        tokio::select! {
            () = &mut deadline => break,
            more = chunks.next() => match more {
                Some(more) => batch.extend(more),
                None => break,
            },
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Batching = Batching {
        max: 10,
        busy: 3,
        linger: Duration::from_millis(5),
    };

    async fn next_batch(
        chunks: &mut futures::channel::mpsc::UnboundedReceiver<Vec<u32>>,
        policy: Batching,
    ) -> Option<Vec<u32>> {
        let first = chunks.next().await?;
        Some(gather(first, chunks, policy).await)
    }

    #[tokio::test(start_paused = true)]
    async fn small_chunks_go_at_once_busy_ones_gather_up_to_max() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Vec<u32>>();
        let mut chunks = rx;
        tx.unbounded_send(vec![1]).unwrap();
        tx.unbounded_send(vec![2, 3, 4]).unwrap();
        tx.unbounded_send(vec![5, 6]).unwrap();
        tx.unbounded_send(vec![7, 8, 9, 10, 11]).unwrap();
        assert_eq!(next_batch(&mut chunks, POLICY).await, Some(vec![1]));
        // Busy: gathers the following chunks until it reaches max.
        assert_eq!(
            next_batch(&mut chunks, POLICY).await,
            Some(vec![2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
        );
        // Busy but nothing more arrives: released after the linger.
        tx.unbounded_send(vec![12, 13, 14]).unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            next_batch(&mut chunks, POLICY).await,
            Some(vec![12, 13, 14])
        );
        assert_eq!(started.elapsed(), POLICY.linger);
        drop(tx);
        assert_eq!(next_batch(&mut chunks, POLICY).await, None);
    }
}
