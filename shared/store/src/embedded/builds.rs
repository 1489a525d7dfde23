//! What an index build that never finished leaves on disk, and its removal at open.
//!
//! Qdrant Edge's optimizer builds each new segment (an HNSW index, a merge) in a directory of
//! its own under `<shard>/temp_segments`, and renames it into `<shard>/segments` once it is
//! complete; only then does the segment count. A process that stops during a build (killed,
//! or stopped without waiting for the build: see `EmbeddedStore`'s module docs) leaves that
//! directory behind, as large as the segment it was building (about 2 GiB at a million
//! points). Edge 0.7 never reads it and never removes it, so every interrupted build would
//! keep its size on disk for good.
//!
//! [`remove`] deletes whatever `temp_segments` holds. It is sound only where the store calls
//! it: right after `EdgeShard::load` or `new` has returned, and before the store runs the
//! optimizer.
//! - Edge puts nothing else there: the optimizer's copy-on-write segment, which takes the
//!   writes made during a build, lives in `segments`.
//! - No build can be under way. The open holds Edge's lock on the shard (its WAL directory's),
//!   so no other process has it open, and this store starts its first run only after the open.
//! - The segments the interrupted build read from are still in `segments`: Edge removes them
//!   only after the new one is in place. So the next run builds it again from them.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The directory Edge's optimizer builds new segments in (its `TEMP_SEGMENTS_PATH`).
const BUILDS_DIR: &str = "temp_segments";

/// What [`remove`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Removed {
    /// Entries of `temp_segments`: one per interrupted build.
    pub builds: usize,
    /// The disk their files took (allocated blocks: a segment's files are sparse until
    /// written, so their lengths say more than they hold).
    pub bytes: u64,
}

/// Removes every entry of `<shard_dir>/temp_segments`, and keeps the directory. Nothing to do
/// if it does not exist. See the module docs for when it may be called.
///
/// An error stops at the entry it met: what is left stays, and the next open tries again.
pub(super) fn remove(shard_dir: &Path) -> io::Result<Removed> {
    let entries = match fs::read_dir(shard_dir.join(BUILDS_DIR)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::default()),
        Err(e) => return Err(e),
    };
    let mut removed = Removed::default();
    for entry in entries {
        let path = entry?.path();
        let bytes = size(&path)?;
        if fs::symlink_metadata(&path)?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
        removed.builds += 1;
        removed.bytes += bytes;
    }
    Ok(removed)
}

/// The disk the files under `path` take (symbolic links not followed), summed.
fn size(path: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        // `st_blocks` counts 512-byte units, whatever the filesystem's block size.
        return Ok(meta.blocks() * 512);
    }
    fs::read_dir(path)?.try_fold(0, |sum, entry| Ok(sum + size(&entry?.path())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` bytes to a new file, and returns the disk it takes.
    fn write(path: &Path, bytes: usize) -> u64 {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, vec![7u8; bytes]).unwrap();
        fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn removes_every_build_and_keeps_the_rest_of_the_shard() {
        let shard = tempfile::tempdir().unwrap();
        let root = shard.path();
        let taken = [
            write(
                &root.join("temp_segments/segment_builder_a/vector_storage/chunk_0.mmap"),
                8192,
            ),
            write(
                &root.join("temp_segments/segment_builder_a/version.info"),
                5,
            ),
            write(
                &root.join("temp_segments/segment_builder_b/id_tracker.mappings"),
                100,
            ),
            write(&root.join("temp_segments/stray"), 3),
        ];
        // A sparse file: a long length, little disk.
        let sparse =
            fs::File::create(root.join("temp_segments/segment_builder_b/chunk_0.mmap")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        write(&root.join("segments/0b34d312/version.info"), 5);
        write(&root.join("wal/open-1"), 10);

        let removed = remove(root).unwrap();

        assert!(taken[0] >= 8192, "{taken:?}");
        assert_eq!(
            removed,
            Removed {
                builds: 3,
                bytes: taken.iter().sum::<u64>()
            }
        );
        assert!(root.join("temp_segments").is_dir(), "the directory stays");
        assert_eq!(fs::read_dir(root.join("temp_segments")).unwrap().count(), 0);
        assert!(root.join("segments/0b34d312/version.info").is_file());
        assert!(root.join("wal/open-1").is_file());
        assert_eq!(remove(root).unwrap(), Removed::default(), "nothing left");
    }

    #[test]
    fn a_shard_without_builds_is_left_alone() {
        let shard = tempfile::tempdir().unwrap();
        assert_eq!(remove(shard.path()).unwrap(), Removed::default());
        fs::create_dir(shard.path().join("temp_segments")).unwrap();
        assert_eq!(remove(shard.path()).unwrap(), Removed::default());
    }

    #[test]
    fn a_symbolic_link_is_removed_not_followed() {
        let shard = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        write(&elsewhere.path().join("keep"), 10);
        fs::create_dir(shard.path().join("temp_segments")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), shard.path().join("temp_segments/link"))
            .unwrap();

        let removed = remove(shard.path()).unwrap();

        assert_eq!(removed.builds, 1);
        assert!(elsewhere.path().join("keep").is_file());
    }
}
