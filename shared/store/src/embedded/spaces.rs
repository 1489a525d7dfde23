//! Which embedding spaces (model and model version) the shard's points are in, so that a
//! search can leave out the conditions that every point meets.
//!
//! Every search is scoped to its model and version (`PointFilter::model`, `model_ver`: vectors
//! of different models are not comparable), and nearly every collection holds one model. Qdrant
//! does not know that: it takes one condition of a filter as the primary clause and checks the
//! others against every point it scores, a map-index look-up and a string compare each. In a
//! segment that is scanned (the appendable one, and any below the indexing threshold) the two
//! checks cost as much as a tenth of a vector query's CPU. When every point of the shard is in
//! the query's space, they are true of every point, and [`SpacesRead::narrow`] drops them.
//!
//! Why that is sound:
//! - the state only widens while the store is open (`Empty` → `One` → `Mixed`); deletes never
//!   narrow it (a superset of the spaces present is always safe), and a reopen recomputes it
//!   from the payload indexes ([`Spaces::load`]);
//! - it widens on the writer thread *before* the write that needs it is applied, and under the
//!   write lock ([`Spaces::admit`]);
//! - a search holds the read lock from the moment it narrows its filter until its last read of
//!   the shard ([`Spaces::read`]).
//!
//! So a search that dropped the conditions has ended before a point of another space can be
//! written, and a search that starts later sees `Mixed` and keeps them. The write lock is taken
//! at most twice in the life of an open store; every other write and search takes the read lock
//! only.

use std::borrow::Cow;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use qdrant_edge::{CountRequest, EdgeShard, FacetRequest, FacetValue};

use super::{json_path, map_err};
use crate::{MODEL_KEY, MODEL_VER_KEY, PointFilter, StoreError};

/// The spaces the shard's points may be in.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// No point yet.
    Empty,
    /// Every point is in this space.
    One { model: String, model_ver: String },
    /// Points of more than one space (or of a space not known when the store was opened).
    Mixed,
}

impl State {
    /// The state once a point of `model`/`model_ver` is written too.
    fn with(&self, model: &str, model_ver: &str) -> State {
        match self {
            State::Empty => State::One {
                model: model.to_owned(),
                model_ver: model_ver.to_owned(),
            },
            State::One {
                model: m,
                model_ver: v,
            } if m == model && v == model_ver => self.clone(),
            State::One { .. } | State::Mixed => State::Mixed,
        }
    }

    fn covers(&self, model: &str, model_ver: &str) -> bool {
        match self {
            State::Empty => false,
            State::One {
                model: m,
                model_ver: v,
            } => m == model && v == model_ver,
            State::Mixed => true,
        }
    }
}

/// The shard's spaces, shared by its searches and its writer (module docs).
#[derive(Debug)]
pub(super) struct Spaces(RwLock<State>);

impl Spaces {
    fn new(state: State) -> Self {
        Self(RwLock::new(state))
    }

    /// Reads the spaces of the points in `shard`, at open (nothing writes meanwhile): `One`
    /// only if the model and the version indexes each hold one value and every point has it.
    pub(super) fn load(shard: &EdgeShard) -> Result<Self, StoreError> {
        let total = shard
            .count(CountRequest {
                filter: None,
                exact: true,
            })
            .map_err(map_err)?;
        if total == 0 {
            return Ok(Self::new(State::Empty));
        }
        let schema = shard.info().payload_schema;
        let (model_key, ver_key) = (json_path(MODEL_KEY)?, json_path(MODEL_VER_KEY)?);
        if !schema.contains_key(&model_key) || !schema.contains_key(&ver_key) {
            // No index to ask (a shard written before `ensure_collection`): assume the worst.
            return Ok(Self::new(State::Mixed));
        }
        let only = |key| -> Result<Option<String>, StoreError> {
            let hits = shard
                .facet(FacetRequest {
                    key,
                    limit: 2,
                    filter: None,
                    exact: true,
                })
                .map_err(map_err)?
                .hits;
            Ok(match hits.as_slice() {
                [hit] if hit.count == total => match &hit.value {
                    FacetValue::Keyword(value) => Some(value.clone()),
                    FacetValue::Int(_) | FacetValue::Uuid(_) | FacetValue::Bool(_) => None,
                },
                _ => None,
            })
        };
        Ok(Self::new(match (only(model_key)?, only(ver_key)?) {
            (Some(model), Some(model_ver)) => State::One { model, model_ver },
            _ => State::Mixed,
        }))
    }

    /// Records the spaces of points about to be written. Call it on the writer thread just
    /// before the update that writes them.
    pub(super) fn admit(&self, spaces: &[(String, String)]) {
        let covered = |state: &State| spaces.iter().all(|(m, v)| state.covers(m, v));
        if covered(&self.0.read().unwrap_or_else(PoisonError::into_inner)) {
            return;
        }
        // Waits for the searches that read the old state to end.
        let mut state = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for (model, model_ver) in spaces {
            *state = state.with(model, model_ver);
        }
    }

    /// For a search: hold the answer until the search's last read of the shard.
    pub(super) fn read(&self) -> SpacesRead<'_> {
        SpacesRead(self.0.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The spaces as one search sees them, for as long as it holds this.
pub(super) struct SpacesRead<'a>(RwLockReadGuard<'a, State>);

impl SpacesRead<'_> {
    /// `filter` without its `model` and `model_ver` conditions where every point meets them.
    pub(super) fn narrow<'f>(&self, filter: &'f PointFilter) -> Cow<'f, PointFilter> {
        let State::One { model, model_ver } = &*self.0 else {
            return Cow::Borrowed(filter);
        };
        let model_met = filter.model.as_ref() == Some(model);
        let ver_met = filter.model_ver.as_ref() == Some(model_ver);
        if !model_met && !ver_met {
            return Cow::Borrowed(filter);
        }
        let mut narrowed = filter.clone();
        if model_met {
            narrowed.model = None;
        }
        if ver_met {
            narrowed.model_ver = None;
        }
        Cow::Owned(narrowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(model: &str, model_ver: &str) -> (String, String) {
        (model.to_owned(), model_ver.to_owned())
    }

    fn filter(model: Option<&str>, model_ver: Option<&str>) -> PointFilter {
        PointFilter {
            asset_id: Some("a".to_owned()),
            model: model.map(str::to_owned),
            model_ver: model_ver.map(str::to_owned),
            ..PointFilter::default()
        }
    }

    #[test]
    fn empty_keeps_every_condition() {
        let spaces = Spaces::new(State::Empty);
        let f = filter(Some("m"), Some("1"));
        assert_eq!(*spaces.read().narrow(&f), f);
    }

    #[test]
    fn one_space_drops_the_conditions_it_implies_only() {
        let spaces = Spaces::new(State::Empty);
        spaces.admit(&[space("m", "1"), space("m", "1")]);
        let read = spaces.read();
        assert_eq!(
            *read.narrow(&filter(Some("m"), Some("1"))),
            filter(None, None)
        );
        assert_eq!(*read.narrow(&filter(Some("m"), None)), filter(None, None));
        // Another version or model is kept: it matches nothing, and must go on matching nothing.
        assert_eq!(
            *read.narrow(&filter(Some("m"), Some("2"))),
            filter(None, Some("2"))
        );
        assert_eq!(
            *read.narrow(&filter(Some("n"), Some("1"))),
            filter(Some("n"), None)
        );
        assert_eq!(*read.narrow(&filter(None, None)), filter(None, None));
    }

    #[test]
    fn a_second_space_keeps_every_condition_for_good() {
        let spaces = Spaces::new(State::Empty);
        spaces.admit(&[space("m", "1")]);
        spaces.admit(&[space("m", "2")]);
        let f = filter(Some("m"), Some("1"));
        assert_eq!(*spaces.read().narrow(&f), f);
        spaces.admit(&[space("m", "1")]);
        assert_eq!(*spaces.read().narrow(&f), f);

        let spaces = Spaces::new(State::Empty);
        spaces.admit(&[space("m", "1"), space("n", "1")]);
        assert_eq!(*spaces.read().narrow(&f), f);
    }

    #[test]
    fn admit_waits_for_searches_that_read_the_old_state() {
        let spaces = std::sync::Arc::new(Spaces::new(State::Empty));
        spaces.admit(&[space("m", "1")]);
        let search = spaces.read();
        let writer = {
            let spaces = std::sync::Arc::clone(&spaces);
            std::thread::spawn(move || spaces.admit(&[space("n", "1")]))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!writer.is_finished(), "the widening waits for the search");
        let f = filter(Some("m"), Some("1"));
        assert_eq!(*search.narrow(&f), filter(None, None));
        drop(search);
        writer.join().expect("writer");
        assert_eq!(*spaces.read().narrow(&f), f);
    }
}
