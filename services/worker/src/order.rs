//! Stream order across the batches in flight. A worker works on several batches at once
//! (`batches_in_flight`), and one batch may finish before an earlier one; two jobs that touch
//! the same asset or point must still reach the store in stream order, or a delete could land
//! before the write it follows (and the write would bring the point back), or an older version
//! of a document could overwrite a newer one.
//!
//! Batches are formed from the consumer's deliveries in the order they arrive (stream order),
//! and each takes a ticket, in that order, naming what its jobs touch ([`crate::job::touched`]).
//! A batch starts its work only when no batch with an earlier ticket that touches any of the
//! same things is still in work. Batches that share nothing run side by side as before.
//!
//! This orders the batches of one worker process. Across worker processes, the stream
//! sequence in every point's payload and the tombstones guard deletes (see `job.rs`).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use uuid::Uuid;

use heimdex_domain::ids::Target;

/// What a job touches: its org and a point or an asset.
pub(crate) type Key = (Uuid, Target);

#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    next: u64,
    /// The batches in work or waiting, by ticket, with what they touch.
    pending: BTreeMap<u64, HashSet<Key>>,
}

/// A batch's place in the order; leaving (dropping it) lets later batches that wait on it go.
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    number: u64,
}

impl Gate {
    /// Takes the next ticket for a batch touching `keys`. Call it in stream order.
    pub(crate) fn enter(self: &Arc<Self>, keys: HashSet<Key>) -> Ticket {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let number = state.next;
        state.next += 1;
        state.pending.insert(number, keys);
        Ticket {
            gate: self.clone(),
            number,
        }
    }

    fn blocked(&self, number: u64) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mine) = state.pending.get(&number) else {
            return false;
        };
        state
            .pending
            .range(..number)
            .any(|(_, earlier)| !earlier.is_disjoint(mine))
    }
}

impl Ticket {
    /// Waits until no earlier batch touching the same things is in work.
    pub(crate) async fn turn(&self) {
        loop {
            let notified = self.gate.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.gate.blocked(self.number) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pending
            .remove(&self.number);
        self.gate.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys(targets: &[&str]) -> HashSet<Key> {
        targets
            .iter()
            .map(|t| (Uuid::nil(), Target::Asset((*t).to_owned())))
            .collect()
    }

    #[tokio::test]
    async fn a_batch_waits_for_earlier_batches_on_the_same_asset_only() {
        let gate = Arc::new(Gate::default());
        let first = gate.enter(keys(&["a"]));
        let other = gate.enter(keys(&["b"]));
        let second = gate.enter(keys(&["a", "c"]));
        first.turn().await;
        // Nothing shared with `first`: it goes at once.
        tokio::time::timeout(Duration::from_secs(1), other.turn())
            .await
            .expect("an unrelated batch is not held");
        // Shares `a` with `first`: held until `first` leaves.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.turn())
                .await
                .is_err()
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), second.turn())
            .await
            .expect("released when the earlier batch leaves");
    }
}
