//! Stream order across the batches in flight. A worker works on several batches at once
//! (`batches_in_flight`), and one batch may finish before an earlier one; two jobs that touch
//! the same asset or point must still reach the store in stream order, or a delete could land
//! before the write it follows (and the write would bring the point back), or an older version
//! of a document could overwrite a newer one.
//!
//! Batches are formed from the consumer's deliveries in the order they arrive (stream order),
//! and each takes a ticket, in that order, naming what its jobs touch ([`crate::job::touched`])
//! and how: a job changes a point, or a whole asset (a delete, a document's new version), or
//! writes one point of an asset and so only needs the asset left as it is meanwhile
//! ([`Access::Shared`]). A batch starts its work only when no batch with an earlier ticket
//! conflicts with it: touches one of the same things, changing it in either batch. Batches that
//! share nothing, or share an asset whose different points they write, run side by side.
//!
//! This orders the batches of one worker process. Across worker processes, the stream
//! sequence in every point's payload and the tombstones guard deletes (see `job.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use uuid::Uuid;

use heimdex_domain::ids::Target;

/// What a job touches: its org and a point or an asset.
pub(crate) type Key = (Uuid, Target);

/// How a job touches a [`Key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// It changes it (writes or deletes the point; deletes or replaces the asset).
    Changes,
    /// It needs it to stay as it is while it works: the asset of a point it writes.
    Shared,
}

/// What a batch touches, and how (the stronger access when its jobs differ).
pub(crate) type Touched = HashMap<Key, Access>;

/// Adds what one job touches to a batch's [`Touched`], keeping the stronger access.
pub(crate) fn add(touched: &mut Touched, job: impl IntoIterator<Item = (Key, Access)>) {
    for (key, access) in job {
        let held = touched.entry(key).or_insert(access);
        if access == Access::Changes {
            *held = access;
        }
    }
}

/// Whether two batches must run in order: they touch one thing and one of them changes it.
pub(crate) fn conflict(a: &Touched, b: &Touched) -> bool {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small.iter().any(|(key, access)| {
        large
            .get(key)
            .is_some_and(|other| *access == Access::Changes || *other == Access::Changes)
    })
}

#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    next: u64,
    /// The batches in work or waiting, by ticket, with what they touch.
    pending: BTreeMap<u64, Touched>,
}

/// A batch's place in the order; leaving (dropping it) lets later batches that wait on it go.
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    number: u64,
}

impl Gate {
    /// Takes the next ticket for a batch touching `keys`. Call it in stream order.
    pub(crate) fn enter(self: &Arc<Self>, keys: Touched) -> Ticket {
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
            .any(|(_, earlier)| conflict(earlier, mine))
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

    fn keys(targets: &[&str]) -> Touched {
        targets
            .iter()
            .map(|t| {
                (
                    (Uuid::nil(), Target::Asset((*t).to_owned())),
                    Access::Changes,
                )
            })
            .collect()
    }

    /// Writes of `points` (numbered) of asset `asset`.
    fn writes(asset: &str, points: &[u128]) -> Touched {
        let mut touched = Touched::new();
        touched.insert(
            (Uuid::nil(), Target::Asset(asset.to_owned())),
            Access::Shared,
        );
        for point in points {
            touched.insert(
                (Uuid::nil(), Target::Point(Uuid::from_u128(*point))),
                Access::Changes,
            );
        }
        touched
    }

    async fn goes(ticket: &Ticket) -> bool {
        tokio::time::timeout(Duration::from_millis(50), ticket.turn())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn writes_of_different_points_of_an_asset_run_together_and_a_change_of_it_waits() {
        let gate = Arc::new(Gate::default());
        let first = gate.enter(writes("a", &[1, 2]));
        let other_points = gate.enter(writes("a", &[3, 4]));
        let same_point = gate.enter(writes("a", &[4, 5]));
        let delete = gate.enter(keys(&["a"]));
        let after_delete = gate.enter(writes("a", &[6]));
        assert!(goes(&first).await);
        assert!(
            goes(&other_points).await,
            "other points of the same asset go at once"
        );
        assert!(!goes(&same_point).await, "a point written earlier waits");
        assert!(
            !goes(&delete).await,
            "a change of the asset waits for its writes"
        );
        drop(other_points);
        assert!(goes(&same_point).await);
        drop(first);
        assert!(!goes(&delete).await, "still a write of the asset in work");
        drop(same_point);
        assert!(goes(&delete).await);
        assert!(
            !goes(&after_delete).await,
            "a write after the change waits for it"
        );
        drop(delete);
        assert!(goes(&after_delete).await);
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
