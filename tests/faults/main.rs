//! The fault-injection suite: real `heimdex` and `nats-server` processes, broken on purpose
//! while jobs flow, each scenario ending with the same check: every job that got a 2xx is
//! SUCCEEDED or FAILED, the store holds exactly the expected points (none missing, extra or
//! duplicated; a filtered count equals a filtered scroll) and no status moved backwards.
//!
//! CI runs every scenario at a reduced size; `HEIMDEX_FAULTS=full` (`deploy/faults.sh`) runs
//! them at the size docs/RELIABILITY.md reports. Each prints a `RELIABILITY | ... |` row.

// Test code unwraps: a panic that names its line is the report a failing test wants.
#![allow(clippy::unwrap_used)]

mod cluster;
#[allow(dead_code)] // shared with the integration tests; this binary uses part of it
#[path = "../integration/common.rs"]
mod common;
mod duplicates;
mod full_disk;
mod harness;
mod index_build;
mod kill9;
mod log_full;
mod nats_faults;
mod poison;
mod projector;
mod rebuild;
mod replace;
mod slow_worker;
mod store_proxy;
