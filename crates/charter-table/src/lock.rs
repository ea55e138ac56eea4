//! Claiming an output before writing it, so two processes never write the
//! same table at once.
//!
//! A claim is a lock file `<out>.lock` beside the output, holding an
//! exclusive `flock` for as long as the claim lives and naming its owner
//! (host, pid, start time) so a refused writer can say who holds it. The
//! kernel drops the `flock` when its process dies, however it dies, so a
//! killed writer's claim is taken over by the next run. The owner line
//! guards the cases `flock` cannot see: a lock file left by a process on
//! another host (refused, with its owner named) and filesystems whose locks
//! are local to one client (a live local owner is refused by its pid).
//!
//! Taking a claim also removes the temporary files a killed writer of the
//! same output left beside it: whoever holds the claim knows no live
//! process is writing them.
//!
//! Claims are re-entrant within a process: a stage claims its output, and
//! the table writer that later merges its shards into place claims the same
//! output again without conflict.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A claim on an output path; released (and its lock file removed) on drop.
#[derive(Clone)]
pub struct OutputLock {
    inner: Arc<LockFile>,
}

impl std::fmt::Debug for OutputLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputLock")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// A lock file held with an exclusive `flock` (see [`lock_file`]); removed
/// and released on drop.
pub struct LockFile {
    path: PathBuf,
    // Holding the open file holds the flock.
    _file: File,
}

impl std::fmt::Debug for LockFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockFile")
            .field("path", &self.path)
            .finish()
    }
}

impl LockFile {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Unlink while still locked: a waiter that opened the old file finds
        // it unlinked after taking the lock and starts over (see `claim`).
        let _ = fs::remove_file(&self.path);
        if let Ok(mut held) = held().lock() {
            held.remove(&self.path);
        }
    }
}

/// Who holds a claim, as written in the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Owner {
    host: String,
    pid: u32,
    /// When the claim was taken, in seconds since the Unix epoch.
    since: u64,
    /// The owner's start time in clock ticks after boot (Linux), which
    /// tells a live owner from an unrelated process that reused its pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process_start: Option<u64>,
}

impl Owner {
    fn me() -> Owner {
        let pid = std::process::id();
        Owner {
            host: host_name(),
            pid,
            since: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            process_start: process_start(pid),
        }
    }

    /// Whether this owner is a process on this host that is still running.
    /// Unknown (no `/proc`) counts as running, so a claim is never stolen
    /// on a guess.
    fn alive_here(&self) -> bool {
        if !Path::new("/proc/self").exists() {
            return true;
        }
        match (process_start(self.pid), self.process_start) {
            (None, _) => false,
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true,
        }
    }

    fn describe(&self) -> String {
        format!(
            "process {} on {} (since {} s after the Unix epoch)",
            self.pid, self.host, self.since
        )
    }
}

fn held() -> &'static Mutex<BTreeMap<PathBuf, Weak<LockFile>>> {
    static HELD: Mutex<BTreeMap<PathBuf, Weak<LockFile>>> = Mutex::new(BTreeMap::new());
    &HELD
}

/// What every lock file of charter's starts with, so tools (`charter gc`)
/// can tell its lock files from other `*.lock` files.
pub const LOCK_MARKER: &str = "charter lock";

/// The lock file that claims `out`.
pub fn lock_path(out: &Path) -> PathBuf {
    crate::write::sibling(out, ".lock")
}

/// Claims `out` for writing, after checking that it can be written at all:
/// it is not a directory and not one of `inputs` (the same file under
/// another name or through a link included), so a mistake fails before any
/// work is done.
///
/// Fails with [`Error::Locked`] naming the owner while another process holds
/// the claim. A lock file left by a process of this host that has died is
/// taken over; one left by another host is refused, since its owner's state
/// cannot be known from here.
pub fn claim_output(out: &Path, inputs: &[&Path]) -> Result<OutputLock> {
    if out.is_dir() {
        return Err(Error::OutputIsDirectory {
            path: out.to_path_buf(),
        });
    }
    for input in inputs {
        if same_file(input, out) {
            return Err(Error::OutputIsInput {
                input: input.to_path_buf(),
                output: out.to_path_buf(),
            });
        }
    }
    let path = absolute_lock_path(out);
    let mut registry = held()
        .lock()
        .map_err(|_| Error::Invalid("the output-lock registry is poisoned".into()))?;
    if let Some(inner) = registry.get(&path).and_then(Weak::upgrade) {
        return Ok(OutputLock { inner });
    }
    let inner = Arc::new(lock_file(&path, out)?);
    registry.insert(path, Arc::downgrade(&inner));
    remove_stale_temporaries(out)?;
    Ok(OutputLock { inner })
}

/// Takes the lock file `lock` that guards `out`: an exclusive `flock` and
/// an owner line (`charter lock {"host":…,"pid":…}`) naming this process.
/// Not re-entrant: a second call for the same file, from this process or
/// another, fails with [`Error::Locked`] while the first is held.
///
/// A lock file whose owner line names a process of this host that has
/// died is taken over; one naming a live process or another host is
/// refused even when its `flock` is free (filesystems whose locks are
/// local to one client).
pub fn lock_file(lock: &Path, out: &Path) -> Result<LockFile> {
    // A few rounds cover a holder that releases (unlinks) between our open
    // and our lock; each round either succeeds, refuses or starts over.
    for _ in 0..8 {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock)
            .map_err(|e| Error::io(lock, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(locked(out, lock, read_owner(&mut file)));
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(lock, e)),
        }
        if !same_inode(&file, lock) {
            continue;
        }
        if let Some(owner) = read_owner(&mut file) {
            let stale = owner.host == host_name() && !owner.alive_here();
            let mine = owner.host == host_name() && owner.pid == std::process::id();
            if !stale && !mine {
                return Err(locked(out, lock, Some(owner)));
            }
        }
        let line = format!(
            "{LOCK_MARKER} {}\n",
            serde_json::to_string(&Owner::me()).unwrap_or_default()
        );
        file.set_len(0).map_err(|e| Error::io(lock, e))?;
        file.rewind().map_err(|e| Error::io(lock, e))?;
        file.write_all(line.as_bytes())
            .map_err(|e| Error::io(lock, e))?;
        file.sync_data().map_err(|e| Error::io(lock, e))?;
        return Ok(LockFile {
            path: lock.to_path_buf(),
            _file: file,
        });
    }
    Err(Error::io(
        lock,
        std::io::Error::other("the lock file kept changing while it was being claimed"),
    ))
}

/// Whether a live process holds the lock file at `path` (a missing file is not held).
pub fn lock_is_held(path: &Path) -> Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(path, e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(fs::TryLockError::WouldBlock) => Ok(true),
        Err(fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// Removes the temporary files a killed writer of `out` left beside it
/// (`.NAME.XXXXXX.partial`, see [`crate::output_tempfile`]). Only the
/// holder of the claim calls this, so no live writer owns them. The
/// resumable journal directory `NAME.partial/` is not one of them: it is
/// what a resumed run continues from.
fn remove_stale_temporaries(out: &Path) -> Result<()> {
    let Some(name) = out.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(());
    };
    let prefix = format!(".{name}.");
    let dir = crate::write::parent_dir(out);
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && file_name.starts_with(&prefix) && file_name.ends_with(".partial") {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

fn locked(out: &Path, lock: &Path, owner: Option<Owner>) -> Error {
    Error::Locked {
        output: out.to_path_buf(),
        lock: lock.to_path_buf(),
        owner: owner
            .map(|o| o.describe())
            .unwrap_or_else(|| "another process".into()),
    }
}

fn read_owner(file: &mut File) -> Option<Owner> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    let json = text.trim().strip_prefix(LOCK_MARKER)?;
    serde_json::from_str(json.trim()).ok()
}

/// The lock path with its directory made absolute, so one output named two
/// ways (`out.parquet`, `./out.parquet`) has one registry entry.
fn absolute_lock_path(out: &Path) -> PathBuf {
    let lock = lock_path(out);
    let (Some(dir), Some(name)) = (lock.parent(), lock.file_name()) else {
        return lock;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match fs::canonicalize(dir) {
        Ok(dir) => dir.join(name),
        Err(_) => lock,
    }
}

/// Whether `a` and `b` name the same file: after links, or as hard links.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (fs::metadata(a), fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Whether the open `file` is still the file at `path` (not unlinked by a
/// holder that released it meanwhile).
fn same_inode(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::metadata(path)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// A process's start time in clock ticks after boot, from `/proc/PID/stat`
/// (field 22); `None` when there is no such process (or no `/proc`).
fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_claim_is_reentrant_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.parquet");
        let a = claim_output(&out, &[]).unwrap();
        let b = claim_output(&dir.path().join(".").join("t.parquet"), &[]).unwrap();
        assert!(lock_path(&out).exists());
        drop(a);
        assert!(lock_path(&out).exists(), "still held by the second claim");
        drop(b);
        assert!(!lock_path(&out).exists());
    }

    #[test]
    fn a_live_holder_is_named_and_a_dead_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.parquet");
        let lock = lock_path(&out);
        // A holder on another host, or this host's live init process, is refused by name.
        for owner in [
            format!(r#"{LOCK_MARKER} {{"host":"elsewhere","pid":1,"since":0}}"#),
            format!(
                r#"{LOCK_MARKER} {{"host":"{}","pid":1,"since":0,"process_start":{}}}"#,
                host_name(),
                process_start(1).unwrap_or(0)
            ),
        ] {
            fs::write(&lock, owner).unwrap();
            let err = claim_output(&out, &[]).unwrap_err().to_string();
            assert!(err.contains("process 1 on"), "{err}");
            assert!(err.contains("t.parquet.lock"), "{err}");
        }
        // A pid that does not exist here: stale, taken over.
        fs::write(
            &lock,
            format!(
                r#"{LOCK_MARKER} {{"host":"{}","pid":4194999,"since":0}}"#,
                host_name()
            ),
        )
        .unwrap();
        let claim = claim_output(&out, &[]).unwrap();
        let text = fs::read_to_string(&lock).unwrap();
        assert!(
            text.contains(&format!("\"pid\":{}", std::process::id())),
            "{text}"
        );
        drop(claim);
    }

    #[test]
    fn claiming_removes_what_a_killed_writer_left_but_not_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.parquet");
        let stale = dir.path().join(".t.parquet.a1B2c3.partial");
        let other = dir.path().join(".u.parquet.a1B2c3.partial");
        let journal = dir.path().join("t.parquet.partial");
        fs::write(&stale, b"half a table").unwrap();
        fs::write(&other, b"another output's").unwrap();
        fs::create_dir(&journal).unwrap();
        let claim = claim_output(&out, &[]).unwrap();
        assert!(!stale.exists());
        assert!(other.exists() && journal.is_dir());
        drop(claim);
    }

    #[test]
    fn a_lock_file_is_not_reentrant_and_one_removed_under_a_claimant_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m");
        let path = lock_path(&out);
        // An earlier holder's file, opened and locked but already removed:
        // holding it means nothing, so a claimant must lock the file at the path.
        let gone = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        gone.try_lock().unwrap();
        fs::remove_file(&path).unwrap();
        let held = lock_file(&path, &out).unwrap();
        assert!(same_inode(&File::open(&path).unwrap(), &path));
        assert!(lock_is_held(&path).unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(LOCK_MARKER), "{text}");
        let err = lock_file(&path, &out).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        drop(held);
        assert!(!path.exists() && !lock_is_held(&path).unwrap());
    }

    #[test]
    fn an_input_or_a_directory_is_not_an_output() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.parquet");
        fs::write(&input, b"x").unwrap();
        let link = dir.path().join("link.parquet");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        for out in [&input, &link] {
            let err = claim_output(out, &[&input]).unwrap_err();
            assert!(matches!(err, Error::OutputIsInput { .. }), "{err}");
        }
        let err = claim_output(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, Error::OutputIsDirectory { .. }), "{err}");
        assert!(!lock_path(&input).exists());
    }
}
