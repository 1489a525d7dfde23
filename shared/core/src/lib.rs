//! Heimdex's shared vocabulary: settings, identifiers, job events and status, authentication,
//! JetStream bootstrap, the nats-server child process and readiness probes. Nothing here knows
//! about HTTP; the services build on it.

pub mod auth;
pub mod batching;
pub mod events;
pub mod ids;
pub mod jetstream;
pub mod jobs;
pub mod nats_server;
pub mod probes;
pub mod settings;
pub mod shutdown;

pub use settings::Settings;
