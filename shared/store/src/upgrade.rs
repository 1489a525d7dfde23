//! Bringing a collection made before keyword search up to date, without losing anything.
//!
//! Collections made by Heimdex before hybrid search hold one unnamed dense vector per point and
//! no sparse vector. Upgrading one takes two steps, both idempotent, run when the store is
//! opened (embedded) or when a worker ensures the collection (remote):
//!
//! 1. **Schema.** Add the sparse vector [`KEYWORD_VECTOR`](crate::KEYWORD_VECTOR) with the IDF
//!    modifier (Qdrant Edge: a `CreateVectorName` update; a Qdrant server ≥ 1.18: the
//!    `CreateVectorName` RPC). Dense vectors, payloads and payload indexes are not touched.
//! 2. **Backfill.** Page through the points that have no keyword vector (the filter
//!    `must_not has_vector(bm25)`), compute each one's from its stored `text`, and set it with a
//!    conditional vector update that applies only while the point still has none, so a point
//!    rewritten meanwhile by a current writer keeps the vector that came with its new text.
//!
//! Every point the current code writes carries a keyword vector (empty without text), so "has
//! no keyword vector" means exactly "written before the upgrade". A backfill cut short (a
//! crash, a restart) therefore resumes where it stopped on the next start, and a finished one
//! costs one filtered scan that finds nothing.

use std::time::Instant;

use uuid::Uuid;

use crate::StoreError;
use crate::keyword::{self, SparseVector};

/// Points read and updated per round trip.
pub const BACKFILL_PAGE: usize = 1_000;

/// What the backfill needs from an adapter.
#[async_trait::async_trait]
pub(crate) trait Backfill: Send + Sync {
    /// Up to `limit` points without a keyword vector, after `from` (an id the previous page
    /// returned as the next one to read), with their `text`; and the id to continue from.
    async fn without_keyword(
        &self,
        from: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<(Uuid, Option<String>)>, Option<Uuid>), StoreError>;

    /// Sets the keyword vectors of these points, each only if it still has none.
    async fn set_keyword(&self, vectors: Vec<(Uuid, SparseVector)>) -> Result<(), StoreError>;

    /// For the log.
    fn name(&self) -> String;
}

/// What a backfill did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// Points that were given a keyword vector.
    pub points: u64,
    pub elapsed_ms: u64,
}

/// Passes over the collection at most: the first does the work, the next ones pick up what an
/// older writer, still running during the upgrade, added behind the first.
const MAX_PASSES: usize = 3;

/// Gives every point without a keyword vector the one its text makes. See the module docs.
pub(crate) async fn backfill(store: &dyn Backfill) -> Result<BackfillReport, StoreError> {
    let started = Instant::now();
    let mut done: u64 = 0;
    for pass in 1..=MAX_PASSES {
        let mut from = None;
        let mut found = 0u64;
        // Pages follow the id order, so a pass always moves forward.
        loop {
            let (page, next) = store.without_keyword(from, BACKFILL_PAGE).await?;
            if !page.is_empty() {
                let vectors: Vec<(Uuid, SparseVector)> = page
                    .into_iter()
                    .map(|(id, text)| (id, keyword::document(text.as_deref().unwrap_or(""))))
                    .collect();
                let n = vectors.len() as u64;
                store.set_keyword(vectors).await?;
                let before = done;
                found += n;
                done += n;
                if before / 10_000 != done / 10_000 {
                    tracing::info!(store = %store.name(), points = done, "keyword backfill progress");
                }
            }
            match next {
                Some(next) => from = Some(next),
                None => break,
            }
        }
        if found == 0 {
            break;
        }
        if pass == MAX_PASSES {
            tracing::warn!(
                store = %store.name(),
                "points without a keyword vector keep appearing (is a Heimdex older than hybrid \
                 search still writing?); they get one at the next start"
            );
        }
    }
    let report = BackfillReport {
        points: done,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    if done > 0 {
        tracing::info!(
            store = %store.name(),
            points = report.points,
            elapsed_ms = report.elapsed_ms,
            "keyword vectors backfilled"
        );
    }
    Ok(report)
}
