//! Heimdex's domain: what a job is, the events that record it, how its status folds from them,
//! and the identifiers that make every layer idempotent. Pure: no I/O, no async runtime, no
//! NATS or Qdrant types. Everything here is tested given/when/then without infrastructure.
//!
//! The types in [`ident`] are parsed once at the edge (the API) and passed on as types, so a
//! value that exists is valid.

pub mod documents;
pub mod events;
pub mod ident;
pub mod ids;
pub mod index;
pub mod jobs;
pub mod metadata;

pub use ident::{AssetId, IdentError, RequestId, SegmentId};
pub use metadata::{MetaFilter, Metadata};
