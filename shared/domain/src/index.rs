//! Which vector collections the service keeps, and what each one is for. The vectors are
//! derived from the job log: a collection can be built again from it (an index rebuild) while
//! the live one serves, and the service then switches its reads to it in one step.
//!
//! The state is one record, kept by the event store and followed by every process that reads
//! or writes vectors, so they all switch together. Its changes are the pure transitions below
//! ([`IndexState::begin`], [`IndexState::switch`], [`IndexState::rollback`], …); each says what
//! it refuses and why ([`IndexStateError`]).
//!
//! * `live` serves every search; the workers write their jobs to it;
//! * a collection being built (`building`) is first given the log's succeeded jobs by a replay,
//!   then each job that succeeds later, so nothing written during the build is missing when it
//!   goes live;
//! * the collection a switch left (`previous`) keeps being given every job, so a rollback
//!   loses nothing; it is dropped only on an explicit command.
//!
//! The collections the workers do not write are the indexer's work: one process at a time
//! (it holds a [`Lease`]) replays the log into a build and then follows the log, giving every
//! collection each job that succeeded in another (a job's result names the collection its
//! worker wrote), up to [`IndexState::followed`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The collections of the service and their roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexState {
    /// Serves every search; takes every write.
    pub live: String,
    /// Being built from the log; takes every write, serves nothing yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<Build>,
    /// The collection live before the last switch; takes every write until it is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// How many builds were begun: names each build's collection (`<base>-<n>`).
    #[serde(default)]
    pub builds: u32,
    /// Every job whose `succeeded` event is at or before this log sequence has reached every
    /// collection that takes writes (the indexer's cursor; see [`IndexState::needs_indexer`]).
    #[serde(default)]
    pub followed: u64,
    /// The process that works for the collections the workers do not write: it replays the
    /// log into a build and then gives every collection each job the workers wrote elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexer: Option<Lease>,
    /// What each collection holds of which model, by collection name; a collection not named
    /// here holds every model as its jobs named it, and its default is the service's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, Models>,
}

/// A collection's models, after the model changes its build made.
///
/// The default model is global (the collection is shared by every tenant): writes and
/// searches that name no model get it. A model `moved` to another is not indexed in the
/// collection: every text a job sent with it is embedded by the other model instead, under
/// the other model's point id, and a request naming it is refused. Models not moved keep
/// working when named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Models {
    /// The model of requests that name none (`None`: the service's configured default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Models re-embedded with another one: `from` → `to`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub moved: BTreeMap<String, String>,
}

impl Models {
    /// The model a job that named `model` is written with here.
    pub fn written_with<'a>(&'a self, model: &'a str) -> &'a str {
        self.moved.get(model).map_or(model, String::as_str)
    }

    /// The models of a collection built from one holding `self`, with `change` made: the
    /// default becomes its target, and every model it moves (and every model moved to one of
    /// those) is moved to the target.
    pub fn changed(&self, change: &ModelChange) -> Self {
        let to = change.to.clone();
        let mut moved: BTreeMap<String, String> = self
            .moved
            .iter()
            .map(|(from, via)| {
                let target = if change.from.contains(via) { &to } else { via };
                (from.clone(), target.clone())
            })
            .collect();
        for from in &change.from {
            moved.insert(from.clone(), to.clone());
        }
        moved.retain(|from, to| from != to);
        Self {
            default: Some(to),
            moved,
        }
    }
}

/// A build that changes the model: every text sent with a `from` model is embedded by `to`,
/// which becomes the default model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelChange {
    pub to: String,
    pub from: Vec<String>,
}

/// A process's claim on the indexer's work, renewed while it runs; once it lapses (the process
/// died), another process takes the work over where the state says it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub until: DateTime<Utc>,
}

/// How long an indexer's claim lasts unless renewed; the indexer renews it far more often.
pub const INDEXER_LEASE: chrono::TimeDelta = chrono::TimeDelta::seconds(15);

/// A rebuild of the index from the log into a new collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub collection: String,
    /// The log's last sequence when the build began: the replay writes what the jobs that had
    /// succeeded by then wrote; the jobs that succeed later are followed.
    pub through: u64,
    /// Resume point: every replayed job at or before this sequence is written.
    pub applied: u64,
    pub started_at: DateTime<Utc>,
    pub progress: Progress,
    pub phase: Phase,
    /// The model change this build makes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ModelChange>,
}

/// How far a build is, in jobs of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Jobs to replay: those that had succeeded by `through`.
    pub jobs: u64,
    /// Jobs replayed so far.
    pub replayed: u64,
    /// Replayed jobs that could not be written again (a file no longer stored, say).
    pub skipped: u64,
    /// Replayed jobs of a moved model that carry no text (`/vectors/mock`): they cannot be
    /// embedded by the new model and keep their own.
    #[serde(default)]
    pub not_reembeddable: u64,
    /// When the replay last recorded its progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// The last error the replay met (it is retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a build is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// The log is being replayed into the collection.
    Replaying,
    /// Replayed and compared with the live collection: it may be switched to once the jobs
    /// that succeeded since have reached it.
    Built { comparison: Comparison },
}

/// The built collection against the live one, over every org the log names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// Points in the live collection.
    pub live: u64,
    /// Points in the built collection.
    pub built: u64,
    /// Points the live collection has and the built one lacks.
    pub missing: u64,
    /// Points the built collection has and the live one lacks.
    pub extra: u64,
    /// Points both have, with different payloads.
    pub payload_differs: u64,
    /// Points whose vectors were compared, and how many differ beyond float tolerance.
    pub vectors_checked: u64,
    pub vectors_differ: u64,
}

impl Comparison {
    /// Whether the two collections hold the same points with the same payloads and vectors.
    pub fn identical(&self) -> bool {
        self.missing == 0
            && self.extra == 0
            && self.payload_differs == 0
            && self.vectors_differ == 0
    }
}

/// Why a transition of the index state is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IndexStateError {
    #[error("a build into `{0}` is under way; wait for it, or drop it (`heimdex index drop`)")]
    BuildUnderway(String),
    #[error(
        "`{0}` is built: switch to it (`heimdex index switch`) or drop it (`heimdex index drop`)"
    )]
    BuildWaiting(String),
    #[error("`{0}` is kept for a rollback: drop it (`heimdex index drop`) before a new build")]
    PreviousKept(String),
    #[error("no build to switch to")]
    NoBuild,
    #[error("the build into `{0}` has not finished")]
    NotBuilt(String),
    #[error("no previous collection to roll back to")]
    NoPrevious,
    #[error("nothing to drop: no build, and no previous collection")]
    NothingToDrop,
    #[error("a model change needs models to move from, and `{0}` cannot move to itself")]
    NoChange(String),
}

impl IndexState {
    /// The state of a service that has only ever had `collection`.
    pub fn new(collection: impl Into<String>) -> Self {
        Self {
            live: collection.into(),
            building: None,
            previous: None,
            builds: 0,
            followed: 0,
            indexer: None,
            models: BTreeMap::new(),
        }
    }

    /// The models of collection `name`.
    pub fn models_of(&self, name: &str) -> Models {
        self.models.get(name).cloned().unwrap_or_default()
    }

    /// Every collection that takes writes: the live one first.
    pub fn writes_to(&self) -> Vec<&str> {
        let mut all = vec![self.live.as_str()];
        all.extend(
            self.building
                .as_ref()
                .map(|build| build.collection.as_str()),
        );
        all.extend(self.previous.as_deref());
        all
    }

    /// Whether there is indexer work: a build, or a collection kept beside the live one.
    pub fn needs_indexer(&self) -> bool {
        self.building.is_some() || self.previous.is_some()
    }

    /// Claims (or renews) the indexer's lease for `holder`, unless another holder's lease is
    /// still running. Returns whether `holder` has it.
    pub fn claim(&mut self, holder: &str, now: DateTime<Utc>) -> bool {
        let free = self
            .indexer
            .as_ref()
            .is_none_or(|lease| lease.holder == holder || lease.until < now);
        if free {
            self.indexer = Some(Lease {
                holder: holder.to_owned(),
                until: now + INDEXER_LEASE,
            });
        }
        free
    }

    /// Gives the lease up, if `holder` has it (a process stopping): the next one need not wait
    /// for it to lapse.
    pub fn release(&mut self, holder: &str) {
        if self
            .indexer
            .as_ref()
            .is_some_and(|lease| lease.holder == holder)
        {
            self.indexer = None;
        }
    }

    /// Whether `holder` holds the indexer's lease at `now`.
    pub fn holds(&self, holder: &str, now: DateTime<Utc>) -> bool {
        self.indexer
            .as_ref()
            .is_some_and(|lease| lease.holder == holder && lease.until >= now)
    }

    /// Begins a build from the log, through sequence `through` (the log's last sequence now),
    /// into a new collection named after `base`.
    /// With a `change`, the build embeds the moved models' texts with its target.
    pub fn begin(
        &mut self,
        base: &str,
        through: u64,
        now: DateTime<Utc>,
        change: Option<ModelChange>,
    ) -> Result<&Build, IndexStateError> {
        if let Some(change) = &change
            && (change.from.is_empty() || change.from.contains(&change.to))
        {
            return Err(IndexStateError::NoChange(change.to.clone()));
        }
        if let Some(build) = &self.building {
            return Err(match build.phase {
                Phase::Built { .. } => IndexStateError::BuildWaiting(build.collection.clone()),
                Phase::Replaying => IndexStateError::BuildUnderway(build.collection.clone()),
            });
        }
        if let Some(previous) = &self.previous {
            return Err(IndexStateError::PreviousKept(previous.clone()));
        }
        self.builds += 1;
        self.followed = through;
        let collection = format!("{base}-{}", self.builds);
        let live = self.models_of(&self.live);
        let models = match &change {
            Some(change) => live.changed(change),
            None => live,
        };
        if models == Models::default() {
            self.models.remove(&collection);
        } else {
            self.models.insert(collection.clone(), models);
        }
        Ok(self.building.insert(Build {
            collection,
            through,
            applied: 0,
            started_at: now,
            progress: Progress::default(),
            phase: Phase::Replaying,
            change,
        }))
    }

    /// Moves reads to the built collection; the live one becomes `previous`.
    pub fn switch(&mut self) -> Result<(), IndexStateError> {
        let build = self.building.as_ref().ok_or(IndexStateError::NoBuild)?;
        if !matches!(build.phase, Phase::Built { .. }) {
            return Err(IndexStateError::NotBuilt(build.collection.clone()));
        }
        let build = self.building.take().expect("checked above");
        self.previous = Some(std::mem::replace(&mut self.live, build.collection));
        Ok(())
    }

    /// Moves reads back to `previous`; the collection left becomes `previous`.
    pub fn rollback(&mut self) -> Result<(), IndexStateError> {
        let previous = self.previous.as_mut().ok_or(IndexStateError::NoPrevious)?;
        std::mem::swap(&mut self.live, previous);
        Ok(())
    }

    /// Stops keeping a collection that does not serve: the build, if there is one (it stops),
    /// else `previous`. It takes no more writes and may be deleted. Returns its name.
    pub fn drop(&mut self) -> Result<String, IndexStateError> {
        let dropped = match self.building.take() {
            Some(build) => build.collection,
            None => self.previous.take().ok_or(IndexStateError::NothingToDrop)?,
        };
        self.models.remove(&dropped);
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn built(state: &mut IndexState) {
        state.building.as_mut().unwrap().phase = Phase::Built {
            comparison: Comparison::default(),
        };
    }

    #[test]
    fn a_build_takes_writes_then_a_switch_moves_reads_and_keeps_the_old_collection_written() {
        let mut state = IndexState::new("heimdex");
        assert_eq!(state.writes_to(), ["heimdex"]);
        let build = state.begin("heimdex", 42, now(), None).unwrap();
        assert_eq!(build.collection, "heimdex-1");
        assert_eq!(build.through, 42);
        assert_eq!(state.live, "heimdex");
        assert_eq!(state.writes_to(), ["heimdex", "heimdex-1"]);
        assert_eq!(
            state.switch(),
            Err(IndexStateError::NotBuilt("heimdex-1".into()))
        );
        built(&mut state);
        state.switch().unwrap();
        assert_eq!(state.live, "heimdex-1");
        assert_eq!(state.previous.as_deref(), Some("heimdex"));
        assert_eq!(state.writes_to(), ["heimdex-1", "heimdex"]);
    }

    #[test]
    fn a_rollback_swaps_back_and_a_drop_ends_the_writes_to_the_old_collection() {
        let mut state = IndexState::new("heimdex");
        assert_eq!(state.rollback(), Err(IndexStateError::NoPrevious));
        state.begin("heimdex", 1, now(), None).unwrap();
        built(&mut state);
        state.switch().unwrap();
        state.rollback().unwrap();
        assert_eq!(state.live, "heimdex");
        assert_eq!(state.previous.as_deref(), Some("heimdex-1"));
        state.rollback().unwrap();
        assert_eq!(state.live, "heimdex-1");
        assert_eq!(state.drop().unwrap(), "heimdex");
        assert_eq!(state.drop(), Err(IndexStateError::NothingToDrop));
        assert_eq!(state.writes_to(), ["heimdex-1"]);
    }

    #[test]
    fn one_build_at_a_time_and_it_is_followed_from_where_it_began() {
        let mut state = IndexState::new("heimdex");
        assert!(!state.needs_indexer());
        state.begin("heimdex", 10, now(), None).unwrap();
        assert!(state.needs_indexer());
        assert_eq!(state.followed, 10);
        assert_eq!(
            state.begin("heimdex", 20, now(), None).unwrap_err(),
            IndexStateError::BuildUnderway("heimdex-1".into())
        );
    }

    #[test]
    fn the_indexer_lease_is_one_holders_until_it_lapses() {
        let mut state = IndexState::new("heimdex");
        assert!(state.claim("a", now()));
        assert!(state.holds("a", now()));
        assert!(!state.claim("b", now() + INDEXER_LEASE));
        assert!(state.claim("a", now() + INDEXER_LEASE));
        let lapsed = now() + INDEXER_LEASE + INDEXER_LEASE + chrono::TimeDelta::seconds(1);
        assert!(!state.holds("a", lapsed));
        assert!(state.claim("b", lapsed));
        assert!(state.holds("b", lapsed));
        state.release("a");
        assert!(state.holds("b", lapsed));
        state.release("b");
        assert!(state.claim("c", lapsed));
    }

    #[test]
    fn a_new_build_waits_until_the_previous_collection_is_dropped() {
        let mut state = IndexState::new("heimdex");
        state.begin("heimdex", 1, now(), None).unwrap();
        built(&mut state);
        state.switch().unwrap();
        assert_eq!(
            state.begin("heimdex", 2, now(), None).unwrap_err(),
            IndexStateError::PreviousKept("heimdex".into())
        );
        state.drop().unwrap();
        assert_eq!(
            state.begin("heimdex", 2, now(), None).unwrap().collection,
            "heimdex-2"
        );
        built(&mut state);
        assert_eq!(
            state.begin("heimdex", 3, now(), None).unwrap_err(),
            IndexStateError::BuildWaiting("heimdex-2".into())
        );
        assert_eq!(state.drop().unwrap(), "heimdex-2");
        assert_eq!(state.live, "heimdex-1");
    }

    fn change(to: &str, from: &[&str]) -> Option<ModelChange> {
        Some(ModelChange {
            to: to.into(),
            from: from.iter().map(|m| (*m).to_owned()).collect(),
        })
    }

    #[test]
    fn a_model_change_moves_the_default_with_the_build_and_back_with_a_rollback() {
        let mut state = IndexState::new("heimdex");
        assert_eq!(state.models_of("heimdex"), Models::default());
        assert_eq!(
            state
                .begin("heimdex", 1, now(), change("l3", &["l3"]))
                .unwrap_err(),
            IndexStateError::NoChange("l3".into())
        );
        state
            .begin("heimdex", 1, now(), change("l3", &["l6", "mock"]))
            .unwrap();
        let built_models = state.models_of("heimdex-1");
        assert_eq!(built_models.default.as_deref(), Some("l3"));
        assert_eq!(built_models.written_with("l6"), "l3");
        assert_eq!(built_models.written_with("mock"), "l3");
        assert_eq!(built_models.written_with("other"), "other");
        built(&mut state);
        state.switch().unwrap();
        assert_eq!(state.models_of(&state.live).default.as_deref(), Some("l3"));
        state.rollback().unwrap();
        assert_eq!(state.models_of(&state.live), Models::default());
        state.rollback().unwrap();
        assert_eq!(state.drop().unwrap(), "heimdex");
        // Back to l6: what moved to l3 moves on to l6, and nothing moves to itself.
        state
            .begin("heimdex", 2, now(), change("l6", &["l3"]))
            .unwrap();
        let back = state.models_of("heimdex-2");
        assert_eq!(back.default.as_deref(), Some("l6"));
        assert_eq!(back.written_with("l3"), "l6");
        assert_eq!(back.written_with("mock"), "l6");
        assert_eq!(back.written_with("l6"), "l6");
        assert!(!back.moved.contains_key("l6"), "{back:?}");
        assert_eq!(state.drop().unwrap(), "heimdex-2");
        assert!(!state.models.contains_key("heimdex-2"));
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let mut state = IndexState::new("heimdex");
        state.begin("heimdex", 5, now(), None).unwrap();
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<IndexState>(&json).unwrap(), state);
        assert!(json.contains(r#""phase":"replaying""#), "{json}");
    }
}
