//! Everything Heimdex does with NATS. The services never name a subject, a bucket or a header:
//!
//! * [`EventStore`]: a process's connection, job log and status store, ready to use;
//! * [`log`]: the job log, `HEIMDEX_JOBS`: appending events idempotently, reading them back;
//! * [`status`]: the job-status projection and its listing index: reads, compare-and-set
//!   writes (the projector's), and pages that cost what they hold;
//! * [`documents`]: the document projection (the latest request for each asset) and its
//!   listing;
//! * [`files`]: uploaded files, in the object store `HEIMDEX_FILES`;
//! * [`index`]: the index state (which vector collection is live, built or kept), in the
//!   bucket `HEIMDEX_INDEX`;
//! * [`listing`]: listings whose pages cost what they hold, shared by jobs and documents;
//! * [`jetstream`]: the stream, the status bucket and the durable consumers, created from the
//!   definition files in `nats/` and checked at every start; connecting; whole-slice reads
//!   ([`jetstream::StreamRead`]) and durable pulls;
//! * [`nats_server`]: the `nats-server` child process that `heimdex serve` (and every test) runs
//!   when no `NATS_URL` is given;
//! * [`batching`]: size- and latency-bounded batches for the consumers.

pub mod batching;
mod connect;
pub mod direct;
pub mod documents;
pub mod files;
pub mod index;
pub mod jetstream;
pub mod listing;
pub mod log;
pub mod nats_server;
pub mod status;

pub use connect::EventStore;
pub use documents::DocumentStore;
pub use files::FileStore;
pub use index::IndexRegistry;
pub use jetstream::NatsConfig;
pub use log::JobLog;
pub use status::StatusStore;
