//! The composition root: connecting to NATS and the vector store, and running the services in
//! one process or one role at a time. `main.rs` is the CLI on top; the integration tests use
//! this library to run the same composition in-process.

pub mod infra;
pub mod serve;
