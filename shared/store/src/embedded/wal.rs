//! The write-ahead log Qdrant Edge 0.7 writes and never reads: what a shard's open removes of it.
//!
//! `EdgeShard::update` appends every operation to a log in `<shard>/wal`, in segment files of
//! 32 MiB (`open-<n>` while written, renamed `closed-<index of its first entry>` once full).
//! Edge 0.7 neither replays the log when it loads a shard nor acknowledges any of it (nothing
//! calls `SerdeWal::ack`), so no closed segment is ever removed: the log keeps every byte ever
//! written (about 2.1 KiB per mock point; half of the store's disk at 100,000 points), and
//! `EdgeShard::load` reads and checksums all of it at every start.
//!
//! Nothing here rests on it: the store answers a write only once a flush of the segments covers
//! it (see `embedded`). So [`prune`] removes, before the shard is loaded, every closed segment
//! but the newest:
//! - The newest stays because the log numbers its entries from its first closed segment's index
//!   and the segments' lengths, and Edge uses those numbers as point versions. A log numbered
//!   from 0 again would make every later update of an existing point look older than the point,
//!   and Edge would skip it.
//! - They go oldest first, and each removal is made durable (the directory synced) before the
//!   next. `Wal::open` refuses a log with a gap between closed segments; this order leaves none,
//!   whatever a crash interrupts.
//!
//! That is what `SerdeWal::ack` with Edge's `retain_closed = 1` does to a log. It is sound for
//! Edge 0.7 only: a release that replays the log at load (0.9 does, and acknowledges it after
//! each flush) needs the entries it has not acknowledged. The workspace pins
//! `qdrant-edge = "=0.7.2"`, and an upgrade must remove this.
//!
//! While a store is open its log still grows with what it writes; the next open removes it.

use std::fs::{self, File, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The log's directory inside a shard's.
const WAL_DIR: &str = "wal";
/// Name prefix of a full segment; the index of its first entry follows.
const CLOSED_PREFIX: &str = "closed-";

/// What [`prune`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Pruned {
    pub segments: usize,
    /// Their file sizes.
    pub bytes: u64,
}

/// Removes every closed segment of the shard's log but the newest (module docs). Removes nothing
/// if there is no log, or if it is locked: its shard is open (here or in another process), and
/// the load that follows fails on that lock and is retried.
///
/// An error leaves the log as a crash would: its newest closed segment and all after it kept,
/// contiguous. The shard opens either way.
pub(super) fn prune(shard_dir: &Path) -> io::Result<Pruned> {
    let wal = shard_dir.join(WAL_DIR);
    let dir = match File::open(&wal) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Pruned::default()),
        Err(e) => return Err(e),
    };
    // The lock `EdgeShard` takes on this directory while it has the shard open. Held until
    // `dir` is dropped, at the return.
    match dir.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(Pruned::default()),
        Err(TryLockError::Error(e)) => return Err(e),
    }
    let mut closed: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(&wal)? {
        let entry = entry?;
        let start = entry
            .file_name()
            .to_str()
            .and_then(|name| name.strip_prefix(CLOSED_PREFIX))
            .and_then(|index| index.parse::<u64>().ok());
        if let Some(start) = start
            && entry.file_type()?.is_file()
        {
            closed.push((start, entry.path()));
        }
    }
    closed.sort_unstable();
    // The newest numbers what comes after it.
    closed.pop();
    let mut pruned = Pruned::default();
    for (_, path) in closed {
        let bytes = fs::metadata(&path)?.len();
        fs::remove_file(&path)?;
        dir.sync_all()?;
        pruned.segments += 1;
        pruned.bytes += bytes;
    }
    Ok(pruned)
}

/// The disk the shard's log takes: its files' allocated blocks (Edge creates each segment at
/// its full size, sparse, and fills it as it writes).
pub(super) fn disk_bytes(shard_dir: &Path) -> io::Result<u64> {
    let mut bytes = 0;
    for entry in fs::read_dir(shard_dir.join(WAL_DIR))? {
        let metadata = entry?.metadata()?;
        if metadata.is_file() {
            bytes += metadata.blocks() * 512;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn keeps_the_newest_closed_segment_and_everything_else() {
        let shard = tempfile::tempdir().expect("tempdir");
        let wal = shard.path().join(WAL_DIR);
        fs::create_dir(&wal).expect("mkdir");
        // Numeric order differs from name order: closed-100 is newer than closed-34.
        for (name, len) in [
            ("closed-0", 3),
            ("closed-34", 5),
            ("closed-100", 7),
            ("open-7", 11),
            ("open-8", 0),
            ("first-index", 2),
            ("closed-x", 1),
        ] {
            fs::write(wal.join(name), vec![0u8; len]).expect("write");
        }
        fs::create_dir(wal.join("closed-1")).expect("mkdir");

        let pruned = prune(shard.path()).expect("prune");

        assert_eq!(
            pruned,
            Pruned {
                segments: 2,
                bytes: 8
            }
        );
        assert_eq!(
            files(&wal),
            [
                "closed-1",
                "closed-100",
                "closed-x",
                "first-index",
                "open-7",
                "open-8"
            ]
        );
        // Nothing more to remove.
        assert_eq!(prune(shard.path()).expect("prune"), Pruned::default());
    }

    #[test]
    fn leaves_a_locked_log_and_a_missing_one_alone() {
        let shard = tempfile::tempdir().expect("tempdir");
        assert_eq!(prune(shard.path()).expect("no log"), Pruned::default());

        let wal = shard.path().join(WAL_DIR);
        fs::create_dir(&wal).expect("mkdir");
        fs::write(wal.join("closed-0"), b"a").expect("write");
        fs::write(wal.join("closed-9"), b"b").expect("write");
        let held = File::open(&wal).expect("open");
        held.lock().expect("lock");
        assert_eq!(prune(shard.path()).expect("locked"), Pruned::default());
        assert_eq!(files(&wal), ["closed-0", "closed-9"]);

        assert!(disk_bytes(shard.path()).expect("disk") > 0);
        drop(held);
        assert_eq!(prune(shard.path()).expect("unlocked").segments, 1);
        assert_eq!(files(&wal), ["closed-9"]);
    }
}
