//! Writing a directory output: one writer at a time, the work kept in a
//! `.partial` sibling, the result swapped in by renames.
//!
//! Beside an output directory `<out>` a writer uses two names, the same
//! convention as a table's `<out>.partial/`:
//!
//! - `<out>.lock`: a lock file the writer holds from claiming the output
//!   until the new directory is in place: the same lock files as tables
//!   ([`charter_table::lock_file`]: an exclusive `flock` and a
//!   `charter lock` line naming the owner), removed by its holder before the
//!   lock is released.
//! - `<out>.partial/`: the writer's work. The new directory is built in
//!   `<out>.partial/new/`. A `.partial` whose lock nobody holds is what a
//!   killed writer left: the next writer of the same output (or `charter gc`)
//!   removes it.
//!
//! [`OutputLock::commit`] swaps the new directory in. Where the file system
//! can (Linux's `renameat2` with `RENAME_EXCHANGE`), `<out>.partial/new` and
//! `<out>` trade places in one step, so `<out>` is the old directory or the
//! new one at every instant; then `<out>.partial`, now holding the old one,
//! is removed. Elsewhere it takes two renames: `<out>` to
//! `<out>.partial/old`, then `<out>.partial/new` to `<out>`. A kill between
//! them leaves no `<out>` but the old directory intact in
//! `<out>.partial/old`, and whoever next takes the lock
//! ([`OutputLock::acquire`]) renames it back before discarding the rest. A
//! kill at any point thus leaves the old directory or the new one, never a
//! mix.

use std::fs;
use std::path::{Path, PathBuf};

pub use charter_table::{LOCK_MARKER, lock_is_held, lock_path};

use crate::error::{Error, Result};

/// The work directory of an output: `<out>.partial`, as for tables.
pub fn partial_path(out: &Path) -> PathBuf {
    charter_table::partial_dir(out)
}

/// The exclusive right to write the output `<out>`: `<out>.lock`, held.
///
/// Dropping it removes the lock file and releases the lock.
#[derive(Debug)]
pub struct OutputLock {
    out: PathBuf,
    // Dropping it removes the lock file and releases the lock.
    _lock: charter_table::LockFile,
}

impl OutputLock {
    /// Takes the lock of `out` to write it, or fails with [`Error::Busy`]
    /// if another process holds it; then clears what a killed writer left
    /// ([`OutputLock::discard_partial`]).
    pub fn acquire(out: &Path) -> Result<Self> {
        let lock = Self::lock(out)?;
        lock.discard_partial()?;
        Ok(lock)
    }

    /// Takes the lock of `out` and nothing more, or fails with
    /// [`Error::Busy`] if another process holds it.
    pub fn lock(out: &Path) -> Result<Self> {
        let lock = charter_table::lock_file(&lock_path(out), out).map_err(|e| match e {
            charter_table::Error::Locked {
                output,
                lock,
                owner,
            } => Error::Busy {
                path: output,
                owner,
                lock,
            },
            charter_table::Error::Io { path, source } => Error::io(path, source),
            other => Error::io(lock_path(out), std::io::Error::other(other.to_string())),
        })?;
        Ok(OutputLock {
            out: out.to_path_buf(),
            _lock: lock,
        })
    }

    /// The output this lock is for.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// A fresh, empty `<out>.partial/new/` to build the new directory in.
    pub fn staging(&self) -> Result<PathBuf> {
        self.discard_partial()?;
        let new = partial_path(&self.out).join("new");
        fs::create_dir_all(&new).map_err(|e| Error::io(&new, e))?;
        Ok(new)
    }

    /// Moves the directory built in [`OutputLock::staging`] to the output,
    /// replacing what is there (see the module docs for the order), and
    /// removes `<out>.partial`. The caller has checked that whatever is at
    /// the output may be replaced.
    pub fn commit(self) -> Result<()> {
        let partial = partial_path(&self.out);
        let new = partial.join("new");
        let out = &self.out;
        match fs::symlink_metadata(out) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::rename(&new, out).map_err(|e| Error::io(out, e))?;
            }
            Err(e) => return Err(Error::io(out, e)),
            Ok(_) => {
                if !exchange(&new, out)? {
                    let old = partial.join("old");
                    fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
                    fs::rename(&new, out).map_err(|e| Error::io(out, e))?;
                }
            }
        }
        charter_table::sync_parent(out);
        fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        Ok(())
    }

    /// Removes `<out>.partial`, a killed writer's work, after putting an
    /// interrupted swap's old directory back at the output. Returns whether
    /// it did that.
    pub fn discard_partial(&self) -> Result<bool> {
        let partial = partial_path(&self.out);
        let meta = match fs::symlink_metadata(&partial) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(&partial, e)),
        };
        if !meta.is_dir() {
            fs::remove_file(&partial).map_err(|e| Error::io(&partial, e))?;
            return Ok(false);
        }
        let old = partial.join("old");
        let restore = old.is_dir() && fs::symlink_metadata(&self.out).is_err();
        if restore {
            fs::rename(&old, &self.out).map_err(|e| Error::io(&self.out, e))?;
        }
        fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        Ok(restore)
    }
}

/// Swaps two directories in one step where the file system can; `false` where it cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        // Kernels and file systems without RENAME_EXCHANGE (NFS, older FUSE).
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => Ok(false),
        Err(e) => Err(Error::io(b, e.into())),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn a_held_lock_refuses_a_second_writer_and_is_gone_after() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("m");
        let lock = OutputLock::acquire(&out).unwrap();
        let text = fs::read_to_string(lock_path(&out)).unwrap();
        assert!(text.starts_with(LOCK_MARKER), "{text}");
        assert!(lock_is_held(&lock_path(&out)).unwrap());
        let err = OutputLock::acquire(&out).unwrap_err();
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        assert!(err.to_string().contains("m.lock"), "{err}");
        drop(lock);
        assert!(!lock_path(&out).exists());
        assert!(!lock_is_held(&lock_path(&out)).unwrap());
        OutputLock::acquire(&out).unwrap();
    }

    #[test]
    fn a_stale_partial_is_removed_and_a_commit_replaces_the_output() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("m");
        write(&out.join("a"), "old");
        write(&partial_path(&out).join("new/junk"), "left by a killed run");
        let lock = OutputLock::acquire(&out).unwrap();
        assert!(!partial_path(&out).exists());
        let staging = lock.staging().unwrap();
        write(&staging.join("b"), "new");
        lock.commit().unwrap();
        assert!(!out.join("a").exists());
        assert_eq!(fs::read_to_string(out.join("b")).unwrap(), "new");
        assert!(!partial_path(&out).exists());
        assert!(!lock_path(&out).exists());
    }

    #[test]
    fn an_interrupted_two_rename_swap_puts_the_old_directory_back() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("m");
        // Killed between the two renames: no output, the old one aside.
        write(&partial_path(&out).join("old/a"), "old");
        write(&partial_path(&out).join("new/b"), "new");
        drop(OutputLock::acquire(&out).unwrap());
        assert_eq!(fs::read_to_string(out.join("a")).unwrap(), "old");
        assert!(!out.join("b").exists());
        assert!(!partial_path(&out).exists());
    }
}
