//! Everything Heimdex does with NATS. The services never name a subject, a bucket or a header:
//!
//! * [`EventStore`]: a process's connection, job stream and status bucket, ready to use;
//! * [`jetstream`]: the stream, the status bucket and the durable consumers, created from the
//!   definition files in `nats/` and checked at every start; connecting; whole-slice reads
//!   ([`jetstream::StreamRead`]) and durable pulls;
//! * [`nats_server`]: the `nats-server` child process that `heimdex serve` (and every test) runs
//!   when no `NATS_URL` is given;
//! * [`batching`]: size- and latency-bounded batches for the consumers.

pub mod batching;
mod connect;
pub mod jetstream;
pub mod nats_server;

pub use connect::EventStore;
pub use jetstream::NatsConfig;
