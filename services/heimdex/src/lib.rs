//! The composition root: the configuration of every role ([`settings`]), connecting to NATS and
//! the vector store ([`infra`]), and running the services in one process or one role at a time
//! ([`serve`]). `main.rs` is the CLI on top; the integration tests use this library to run the
//! same composition in-process.

pub mod infra;
pub mod metrics;
pub mod serve;
pub mod settings;
pub mod shutdown;
