//! The write-ahead log Qdrant Edge 0.7 writes and never reads: what the store removes of it.
//!
//! `EdgeShard::update` appends every operation to a log in `<shard>/wal`, in segment files of
//! 32 MiB (`open-<n>` while written, renamed `closed-<index of its first entry>` once full).
//! Edge 0.7 neither replays the log when it loads a shard nor acknowledges any of it (nothing
//! calls `SerdeWal::ack`), so no closed segment is ever removed: the log keeps every byte ever
//! written (about 2.1 KiB per mock point; half of the store's disk at 100,000 points), and
//! `EdgeShard::load` reads and checksums all of it at every start.
//!
//! Nothing here rests on it: the store answers a write only once a flush of the segments covers
//! it (see `embedded`). So the store keeps, of the closed segments, only the newest:
//! - The newest stays because the log numbers its entries from its first closed segment's index
//!   and the segments' lengths, and Edge uses those numbers as point versions. A log numbered
//!   from 0 again would make every later update of an existing point look older than the point,
//!   and Edge would skip it.
//! - [`prune`], before the shard is loaded, removes the others. They go oldest first, and each
//!   removal is made durable (the directory synced) before the next. `Wal::open` refuses a log
//!   with a gap between closed segments; this order leaves none, whatever a crash interrupts.
//! - [`release`], while the shard is open, frees their disk: Edge keeps every segment mapped
//!   until the shard closes, so removing a file would free nothing before then. It punches out
//!   the file's blocks instead (`fallocate(PUNCH_HOLE)`), which also drops its pages from the
//!   page cache and from Edge's mapping. The file keeps its size and its name, and reads as
//!   zeros. Edge 0.7 reads a closed segment only in `Wal::open` (the log's only other uses are
//!   `write`, which appends to the open segment, and `flush`, which syncs it), and the next open
//!   prunes such a segment before Edge sees it. A segment is released only once a newer one is
//!   closed, and Edge has finished flushing a segment before it closes the next. The store calls
//!   it on its writer thread, between Edge's updates, so no segment closes meanwhile.
//!
//! That is what `SerdeWal::ack` with Edge's `retain_closed = 1` does to a log. It is sound for
//! Edge 0.7 only: an Edge that replays the log at load (0.9 does, and acknowledges it after
//! each flush) needs the entries it has not acknowledged. The workspace pins
//! `qdrant-edge = "=0.7.2"`, and an upgrade must remove this.
//!
//! A released segment that an open cannot prune (an I/O error removing it) fails that open
//! ("Illegal segment header"), where an intact one would have been read. The error is logged
//! with its path; removing the file by hand is then safe.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, fallocate};

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
/// if there is no log, or if it is locked ([`is_locked`]).
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
    if !try_lock(&dir)? {
        return Ok(Pruned::default());
    }
    let mut closed = closed_segments(&wal)?;
    // The newest numbers what comes after it.
    closed.pop();
    let mut pruned = Pruned::default();
    for (_, path) in closed {
        let bytes = fs::metadata(&path)?.len();
        fs::remove_file(&path).map_err(|e| naming(&path, e))?;
        dir.sync_all()?;
        pruned.segments += 1;
        pruned.bytes += bytes;
    }
    Ok(pruned)
}

/// Whether the shard's log is locked: its shard is open, here or in another process. Asked
/// before and after a load, since Edge tells a lock conflict only in its error's text. A log
/// that cannot be asked (missing, unreadable) counts as not locked: the load then says why.
pub(super) fn is_locked(shard_dir: &Path) -> bool {
    File::open(shard_dir.join(WAL_DIR)).is_ok_and(|dir| matches!(try_lock(&dir), Ok(false)))
}

/// Takes the log directory's `flock` (exclusive, not waiting) until `dir` is closed; `false`
/// if another open file holds it.
fn try_lock(dir: &File) -> io::Result<bool> {
    match dir.try_lock() {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// `e`, saying which file it is about (an operator's next step may be to remove it).
fn naming(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// What [`release`] freed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Released {
    pub segments: usize,
    /// Their allocated blocks.
    pub bytes: u64,
}

/// Frees the disk of every closed segment of an open shard's log but the newest (module docs),
/// leaving each file in place, its size unchanged and its content zeros. A segment already
/// released is skipped, so a call costs one directory read when there is nothing to free.
///
/// Sound only while the log is Edge 0.7's: see the module docs.
pub(super) fn release(shard_dir: &Path) -> io::Result<Released> {
    let mut closed = match closed_segments(&shard_dir.join(WAL_DIR)) {
        Ok(closed) => closed,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Released::default()),
        Err(e) => return Err(e),
    };
    // The newest numbers what comes after it, at the next open.
    closed.pop();
    let mut released = Released::default();
    for (_, path) in closed {
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(file) => file,
            // Gone since the listing: nothing left to free.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let metadata = file.metadata()?;
        let allocated = metadata.blocks() * 512;
        if allocated == 0 {
            continue;
        }
        fallocate(
            &file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            metadata.len(),
        )
        .map_err(|e| naming(&path, e.into()))?;
        released.segments += 1;
        released.bytes += allocated;
    }
    Ok(released)
}

/// The log's closed segments, oldest first: (index of the first entry, path).
fn closed_segments(wal: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut closed: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(wal)? {
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
    Ok(closed)
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
        assert!(!is_locked(shard.path()), "no log");

        let wal = shard.path().join(WAL_DIR);
        fs::create_dir(&wal).expect("mkdir");
        fs::write(wal.join("closed-0"), b"a").expect("write");
        fs::write(wal.join("closed-9"), b"b").expect("write");
        assert!(!is_locked(shard.path()));
        let held = File::open(&wal).expect("open");
        held.lock().expect("lock");
        assert!(is_locked(shard.path()));
        assert_eq!(prune(shard.path()).expect("locked"), Pruned::default());
        assert_eq!(files(&wal), ["closed-0", "closed-9"]);

        assert!(disk_bytes(shard.path()).expect("disk") > 0);
        drop(held);
        assert_eq!(prune(shard.path()).expect("unlocked").segments, 1);
        assert_eq!(files(&wal), ["closed-9"]);
    }

    #[test]
    fn release_frees_all_but_the_newest_closed_segment_in_place() {
        let shard = tempfile::tempdir().expect("tempdir");
        assert_eq!(release(shard.path()).expect("no log"), Released::default());

        let wal = shard.path().join(WAL_DIR);
        fs::create_dir(&wal).expect("mkdir");
        const LEN: usize = 256 * 1024;
        for name in ["closed-0", "closed-34", "closed-100", "open-7"] {
            fs::write(wal.join(name), vec![0xab; LEN]).expect("write");
        }
        // As while the shard is open: Edge holds the lock.
        let held = File::open(&wal).expect("open");
        held.lock().expect("lock");
        let allocated = |name: &str| fs::metadata(wal.join(name)).expect("stat").blocks() * 512;
        let before = allocated("closed-0") + allocated("closed-34");
        assert!(before >= 2 * LEN as u64, "{before} bytes allocated");

        let released = release(shard.path()).expect("release");

        assert_eq!(
            released,
            Released {
                segments: 2,
                bytes: before
            }
        );
        assert_eq!(
            files(&wal),
            ["closed-0", "closed-100", "closed-34", "open-7"]
        );
        for name in ["closed-0", "closed-34"] {
            assert_eq!(allocated(name), 0, "{name} still takes disk");
            assert_eq!(fs::read(wal.join(name)).expect("read"), vec![0; LEN]);
        }
        for name in ["closed-100", "open-7"] {
            assert_eq!(fs::read(wal.join(name)).expect("read"), vec![0xab; LEN]);
        }
        // Nothing more to free.
        assert_eq!(release(shard.path()).expect("again"), Released::default());

        // The next open removes what was released.
        drop(held);
        assert_eq!(prune(shard.path()).expect("prune").segments, 2);
        assert_eq!(files(&wal), ["closed-100", "open-7"]);
    }
}
