//! `charter gc <DIR>`: removes what interrupted charter runs left under a
//! directory, and nothing that a live process is using.
//!
//! What charter leaves when it is killed, by name:
//!
//! - `<out>.partial` (directory or file): work towards `<out>` — a model
//!   directory being built, a table's committed shards and journal, or a
//!   temporary file named `.<out>.XXXXXX.partial`. Its writer holds
//!   `<out>.lock`; while that lock is held the work is in use.
//! - `<out>.lock`: a lock file whose holder died (a lock file is one of
//!   charter's when it is empty or starts with `charter lock`).
//! - `.tmpXXXXXX` and `.export-XXXXXX.jsonl`: temporary files written beside
//!   an output and renamed over it at the end.
//!
//! An entry is kept when its lock is held, or when a process has a file open
//! in it (read from `/proc`, so on Linux only, and only for processes the
//! user may inspect): temporary files have no lock, and a table's shards
//! are written by processes that may not take one. Removing a table's
//! `.partial` discards the progress an interrupted build would have resumed.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use charter_model::{LOCK_MARKER, OutputLock, lock_is_held, lock_path};

use crate::cli::GcArgs;

pub(crate) fn run(args: GcArgs) -> Result<()> {
    let root = &args.dir;
    let meta = fs::metadata(root).with_context(|| format!("{}: cannot read", root.display()))?;
    if !meta.is_dir() {
        bail!("{}: not a directory", root.display());
    }
    let mut found = Vec::new();
    scan(root, &mut found)?;
    // Partial work first: clearing it may remove its lock file too.
    found.sort_by(|a, b| (a.kind, &a.path).cmp(&(b.kind, &b.path)));
    let open = open_files();
    let (mut entries, mut bytes) = (0u64, 0u64);
    for leftover in &found {
        if fs::symlink_metadata(&leftover.path).is_err() {
            continue; // gone with an earlier entry
        }
        if let Some(why) = in_use(leftover, &open)? {
            eprintln!("kept {}: {why}", leftover.path.display());
            continue;
        }
        let size = size_of(&leftover.path);
        let freed = if args.dry_run {
            match restores(leftover) {
                Some(out) => println!(
                    "would restore {} from {}, and remove the rest",
                    out.display(),
                    leftover.path.display()
                ),
                None => println!("would remove {} ({})", leftover.path.display(), human(size)),
            }
            size
        } else {
            match remove(leftover)? {
                Removal::Busy => {
                    eprintln!(
                        "kept {}: in use (its lock was taken meanwhile)",
                        leftover.path.display()
                    );
                    continue;
                }
                Removal::Removed => {
                    println!("removed {} ({})", leftover.path.display(), human(size));
                    size
                }
                Removal::Restored(out) => {
                    // The old directory of an interrupted swap, back in its place.
                    let freed = size.saturating_sub(size_of(&out));
                    println!(
                        "restored {} from {}; removed the rest ({})",
                        out.display(),
                        leftover.path.display(),
                        human(freed)
                    );
                    freed
                }
            }
        };
        entries += 1;
        bytes += freed;
    }
    let verb = if args.dry_run { "would free" } else { "freed" };
    println!(
        "{verb} {} ({bytes} bytes) in {entries} {}",
        human(bytes),
        if entries == 1 { "entry" } else { "entries" }
    );
    Ok(())
}

/// What a leftover is; the order is the order they are handled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `<out>.partial`: work towards `<out>`.
    Partial,
    /// `.<out>.XXXXXX.partial`: a temporary file or directory towards `<out>`.
    TempPartial,
    /// `.tmpXXXXXX`, `.export-XXXXXX.jsonl`: a temporary file of no output we can name.
    Temp,
    /// `<out>.lock`.
    Lock,
}

struct Leftover {
    path: PathBuf,
    kind: Kind,
    /// The output whose lock covers it.
    owner: Option<PathBuf>,
}

/// Finds leftovers under `dir`, not following links and not entering `.git`
/// or the leftovers themselves; a directory that cannot be read is reported
/// and skipped.
fn scan(dir: &Path, found: &mut Vec<Leftover>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("{}: cannot read", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot read", dir.display()))?;
        let kind = entry
            .file_type()
            .with_context(|| format!("{}: cannot read", entry.path().display()))?;
        if kind.is_symlink() {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue; // charter names its files in UTF-8
        };
        let path = entry.path();
        if let Some((kind, owner)) = classify(name, &path, kind.is_file()) {
            let owner = owner.map(|o| dir.join(o));
            found.push(Leftover { path, kind, owner });
        } else if kind.is_dir()
            && name != ".git"
            && let Err(e) = scan(&path, found)
        {
            eprintln!("skipped {}: {e:#}", path.display());
        }
    }
    Ok(())
}

/// Whether a name is one charter leaves behind, and the output it belongs to.
fn classify(name: &str, path: &Path, is_file: bool) -> Option<(Kind, Option<String>)> {
    if let Some(stem) = name.strip_suffix(".partial").filter(|s| !s.is_empty()) {
        // tempfile's `.<out>.XXXXXX.partial`
        if let Some(out) = stem
            .strip_prefix('.')
            .and_then(|s| s.rsplit_once('.'))
            .filter(|(out, tail)| !out.is_empty() && is_random(tail))
            .map(|(out, _)| out)
        {
            return Some((Kind::TempPartial, Some(out.to_string())));
        }
        return Some((Kind::Partial, Some(stem.to_string())));
    }
    if let Some(tail) = name.strip_prefix(".tmp")
        && is_random(tail)
    {
        return Some((Kind::Temp, None));
    }
    if let Some(tail) = name
        .strip_prefix(".export-")
        .and_then(|s| s.strip_suffix(".jsonl"))
        && is_random(tail)
        && is_file
    {
        return Some((Kind::Temp, None));
    }
    if let Some(stem) = name.strip_suffix(".lock").filter(|s| !s.is_empty())
        && is_file
        && is_charter_lock(path)
    {
        return Some((Kind::Lock, Some(stem.to_string())));
    }
    None
}

/// tempfile's random part: six ASCII letters and digits.
fn is_random(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Empty, or starting with charter's marker: not another program's lock file.
fn is_charter_lock(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; LOCK_MARKER.len()];
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let mut n = 0;
    let mut reader = file.take(head.len() as u64);
    while let Ok(k) = reader.read(&mut head[n..]) {
        if k == 0 {
            break;
        }
        n += k;
    }
    n == 0 || head[..n] == *LOCK_MARKER.as_bytes()
}

/// Why a leftover is in use, if it is.
fn in_use(leftover: &Leftover, open: &[PathBuf]) -> Result<Option<String>> {
    let lock = match (leftover.kind, &leftover.owner) {
        (Kind::Lock, _) => Some(leftover.path.clone()),
        (_, Some(owner)) => Some(lock_path(owner)),
        (_, None) => None,
    };
    if let Some(lock) = lock
        && lock_is_held(&lock)?
    {
        return Ok(Some(format!("in use ({} is held)", lock.display())));
    }
    if let Ok(full) = fs::canonicalize(&leftover.path)
        && let Some(file) = open.iter().find(|f| f.starts_with(&full))
    {
        return Ok(Some(format!(
            "in use (a process has {} open)",
            file.display()
        )));
    }
    Ok(None)
}

/// The output an interrupted swap's old directory in this leftover goes back to, if any.
fn restores(leftover: &Leftover) -> Option<&Path> {
    let out = leftover.owner.as_deref()?;
    let interrupted = leftover.kind == Kind::Partial
        && leftover.path.join("old").is_dir()
        && fs::symlink_metadata(out).is_err();
    interrupted.then_some(out)
}

enum Removal {
    Removed,
    /// An interrupted swap's old directory was put back at this output.
    Restored(PathBuf),
    /// A process took the lock since it was checked.
    Busy,
}

/// Removes a leftover, holding its output's lock while it does.
fn remove(leftover: &Leftover) -> Result<Removal> {
    let lock = match &leftover.owner {
        Some(owner) => match OutputLock::lock(owner) {
            Ok(lock) => Some(lock),
            Err(charter_model::Error::Busy { .. }) => return Ok(Removal::Busy),
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let path = &leftover.path;
    match (leftover.kind, &lock) {
        // Dropping the lock removes its file.
        (Kind::Lock, _) => {}
        (Kind::Partial, Some(lock)) => {
            if lock.discard_partial()? {
                return Ok(Removal::Restored(lock.out().to_path_buf()));
            }
        }
        _ => {
            let meta = fs::symlink_metadata(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            if meta.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            }
            .with_context(|| format!("{}: cannot remove", path.display()))?;
        }
    }
    Ok(Removal::Removed)
}

/// Bytes in the files under `path` (links not followed).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| size_of(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Files (and working directories) other processes have open, from `/proc`;
/// empty where there is none.
fn open_files() -> Vec<PathBuf> {
    let me = std::process::id().to_string();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut open = Vec::new();
    for proc in procs.filter_map(|p| p.ok()) {
        let pid = proc.file_name();
        let Some(pid) = pid.to_str() else { continue };
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = proc.path();
        open.extend(fs::read_link(dir.join("cwd")));
        if let Ok(fds) = fs::read_dir(dir.join("fd")) {
            open.extend(fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok()));
        }
    }
    open
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
