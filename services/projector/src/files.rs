//! The files sweep: deletes uploaded files that no live document version needs, from the
//! document projection's point of view. A file `<org_id>.<asset token>.<version>` is kept
//! while it is its document's latest version, and while that latest version is not indexed
//! yet (pending or failed: the index may still hold an older one, and a rebuild must find its
//! file). It is deleted once its document is deleted, once a newer version is indexed, or when
//! no request names it at all (its job's publish failed). Files younger than the grace period
//! are left alone: their job may not be requested yet.

use std::time::Duration;

use uuid::Uuid;

use heimdex_domain::jobs::Status;
use heimdex_event_store::documents::DocumentError;
use heimdex_event_store::files::FileError;
use heimdex_event_store::status::StatusError;
use heimdex_event_store::{DocumentStore, FileStore, StatusStore};

/// How often the sweep runs and how old a file must be before it may be deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepConfig {
    pub interval: Duration,
    pub grace: Duration,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            grace: Duration::from_secs(900),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("files bucket unavailable")]
    Files(#[from] FileError),
    #[error("document projection unavailable")]
    Documents(#[from] DocumentError),
    #[error("status projection unavailable")]
    Status(#[from] StatusError),
}

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub kept: u64,
    pub deleted: u64,
}

/// The stores a sweep reads and deletes from.
#[derive(Clone)]
pub struct Sweeper {
    pub files: FileStore,
    pub documents: DocumentStore,
    pub statuses: StatusStore,
}

impl Sweeper {
    /// One pass over every stored file.
    pub async fn sweep(&self, grace: Duration) -> Result<Swept, SweepError> {
        let now = chrono::Utc::now().timestamp();
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let mut swept = Swept::default();
        for file in self.files.list().await? {
            let young = file
                .modified
                .is_none_or(|at| now.saturating_sub(at) < grace);
            if young || self.needed(&file.name).await? {
                swept.kept += 1;
            } else {
                self.files.delete(&file.name).await?;
                swept.deleted += 1;
            }
        }
        Ok(swept)
    }

    /// Whether a live document version may need the file (see the module documentation).
    async fn needed(&self, name: &str) -> Result<bool, SweepError> {
        let mut parts = name.splitn(3, '.');
        let (Some(org), Some(token), Some(version)) = (parts.next(), parts.next(), parts.next())
        else {
            return Ok(false);
        };
        let Ok(org_id) = org.parse::<Uuid>() else {
            return Ok(false);
        };
        let Some(stored) = self.documents.entry_by_token(org_id, token).await? else {
            return Ok(false);
        };
        let record = stored.record;
        let Some(latest) = &record.version else {
            return Ok(false);
        };
        if latest.version == version {
            return Ok(true);
        }
        let latest_indexed = self
            .statuses
            .get(org_id, record.job_id)
            .await?
            .is_some_and(|job| job.status == Status::Succeeded);
        Ok(!latest_indexed)
    }

    /// Sweeps every `config.interval` until `shutdown`; failures are logged and the next
    /// pass tries again.
    pub async fn run(self, config: SweepConfig, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.sweep(config.grace).await {
                Ok(Swept { kept, deleted }) if deleted > 0 => {
                    tracing::info!(kept, deleted, "files swept");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %heimdex_telemetry::ErrorChain(&err), "files sweep failed; the next one tries again")
                }
            }
        }
    }
}
