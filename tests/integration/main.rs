//! Integration tests: the real service against a real nats-server that each test starts for
//! itself, with Qdrant Edge in a temp dir. One binary, one module per concern.

// Test code unwraps: a panic that names its line is the report a failing test wants.
#![allow(clippy::unwrap_used)]

mod advisory;
mod api_errors;
mod auth;
mod bootstrap;
mod cli;
mod common;
mod connections;
mod deletes;
mod documents;
mod files;
mod fuzz;
mod history;
mod hybrid;
mod idempotency;
mod isolation;
mod listing;
mod log_pass;
mod metadata;
mod metrics;
mod overload;
mod pipeline;
mod projector;
mod rebuild;
mod redrive;
mod retries;
mod semantic;
mod startup;
mod sync;
mod tenancy;
mod tombstones;
