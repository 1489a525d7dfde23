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

/// The next batch from a stream of chunks: the first chunk, extended (while busy) until `max`
/// items or `linger` has passed. `None` when the stream ends.
pub async fn next_batch<S, T>(chunks: &mut S, policy: Batching) -> Option<Vec<T>>
where
    S: Stream<Item = Vec<T>> + Unpin,
{
    let mut batch = chunks.next().await?;
    if batch.len() < policy.busy {
        return Some(batch);
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
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Batching = Batching {
        max: 10,
        busy: 3,
        linger: Duration::from_millis(5),
    };

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
