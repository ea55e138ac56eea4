//! Positioned reads from a file or a buffer, and a bounds-checked cursor
//! for parsing headers.
//!
//! Every read is checked against the real size of the source before any
//! memory is allocated for it, so a corrupt length can only ask for bytes
//! that exist.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Where a model file's bytes come from.
pub(crate) enum Source {
    /// An open file, read with positioned reads (`pread`), so shared readers
    /// need no seek position or lock.
    File(File),
    /// A whole file held in memory.
    Memory(Vec<u8>),
}

impl Source {
    /// Fills `buf` with the bytes at `offset`.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Source::File(file) => file.read_exact_at(buf, offset),
            Source::Memory(bytes) => {
                let range = usize::try_from(offset)
                    .ok()
                    .and_then(|start| Some(start..start.checked_add(buf.len())?));
                match range.and_then(|r| bytes.get(r)) {
                    Some(src) => {
                        buf.copy_from_slice(src);
                        Ok(())
                    }
                    None => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "read past the end of the buffer",
                    )),
                }
            }
        }
    }
}

/// Bytes fetched from the source per refill when parsing small items.
const WINDOW: u64 = 1 << 20;

/// A forward cursor over a source of known length, buffered through a window.
pub(crate) struct Cursor<'a> {
    source: &'a Source,
    path: &'a Path,
    len: u64,
    pos: u64,
    window: Vec<u8>,
    window_start: u64,
    /// What is being read, for error messages ("header", "metadata `key`").
    pub(crate) context: String,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(source: &'a Source, path: &'a Path, len: u64) -> Self {
        Self {
            source,
            path,
            len,
            pos: 0,
            window: Vec::new(),
            window_start: 0,
            context: "header".to_owned(),
        }
    }

    /// The current offset in the source.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Bytes left after the current offset.
    pub(crate) fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    /// A [`Error::Malformed`] at `offset` in the current context.
    pub(crate) fn error_at(&self, offset: u64, problem: impl Into<String>) -> Error {
        Error::Malformed {
            path: self.path.to_owned(),
            offset,
            context: self.context.clone(),
            problem: problem.into(),
        }
    }

    /// The next `n` bytes; `what` names them if the source ends first.
    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<&[u8]> {
        let start = self.pos;
        let Some(end) = start.checked_add(n).filter(|&end| end <= self.len) else {
            return Err(self.error_at(
                start,
                format!(
                    "{what} needs {n} bytes, but the file ends at byte {}",
                    self.len
                ),
            ));
        };
        let window_end = self.window_start + self.window.len() as u64;
        if start < self.window_start || end > window_end {
            // Within the source (checked above), so the allocation is bounded
            // by the real size of the file.
            let size = n.max(WINDOW).min(self.len - start);
            let size = usize::try_from(size)
                .map_err(|_| self.error_at(start, format!("{what} is too large for memory")))?;
            self.window.clear();
            self.window.resize(size, 0);
            self.source
                .read_exact_at(&mut self.window, start)
                .map_err(|e| Error::io(self.path, e))?;
            self.window_start = start;
        }
        self.pos = end;
        // Both fit in the window, whose length is a usize.
        let lo = (start - self.window_start) as usize;
        let hi = (end - self.window_start) as usize;
        Ok(&self.window[lo..hi])
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 byte length, then UTF-8 bytes.
    pub(crate) fn string(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let len = self.u64(&format!("length of {what}"))?;
        if len > self.remaining() {
            return Err(self.error_at(
                start,
                format!(
                    "{what} has length {len}, but only {} bytes remain in the file (size {})",
                    self.remaining(),
                    self.len
                ),
            ));
        }
        let body = self.pos;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.error_at(
                body,
                format!(
                    "{what} is not valid UTF-8 (invalid byte at offset {} of the string)",
                    e.valid_up_to()
                ),
            )),
        }
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in
    /// the rest of the source, and returns the count as a `usize`.
    ///
    /// This is what keeps a corrupt count from turning into a huge allocation.
    pub(crate) fn plausible_count(
        &self,
        offset: u64,
        count: u64,
        min_size: u64,
        what: &str,
    ) -> Result<usize> {
        let fits = count
            .checked_mul(min_size)
            .is_some_and(|need| need <= self.remaining());
        match usize::try_from(count) {
            Ok(count) if fits => Ok(count),
            _ => Err(self.error_at(
                offset,
                format!(
                    "{what} is {count}, which needs at least {} bytes ({min_size} per item), \
                     but only {} bytes remain in the file (size {})",
                    u128::from(count) * u128::from(min_size),
                    self.remaining(),
                    self.len
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The cursor: window refills, truncation and implausible counts.

    use super::*;

    #[test]
    fn reads_across_window_refills() {
        let mut bytes = Vec::new();
        for i in 0..(WINDOW / 4 + 10) {
            bytes.extend((i as u32).to_le_bytes());
        }
        let len = bytes.len() as u64;
        let source = Source::Memory(bytes);
        let mut cur = Cursor::new(&source, Path::new("x"), len);
        for i in 0..(WINDOW / 4 + 10) {
            assert_eq!(cur.u32("n").unwrap(), i as u32);
        }
        assert_eq!(cur.remaining(), 0);
        let err = cur.u32("next value").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "x: at byte {len}, header: next value needs 4 bytes, but the file ends at byte {len}"
            )
        );
    }

    #[test]
    fn strings_longer_than_the_file_are_rejected_before_allocating() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend(b"abc");
        let source = Source::Memory(bytes);
        let mut cur = Cursor::new(&source, Path::new("x"), 11);
        let err = cur.string("key").unwrap_err().to_string();
        assert!(err.contains("key has length 18446744073709551615, but only 3 bytes remain"));
    }

    #[test]
    fn invalid_utf8_is_reported_with_its_position() {
        let mut bytes = 3u64.to_le_bytes().to_vec();
        bytes.extend([b'a', 0xff, b'b']);
        let source = Source::Memory(bytes);
        let mut cur = Cursor::new(&source, Path::new("x"), 11);
        let err = cur.string("key").unwrap_err().to_string();
        assert_eq!(
            err,
            "x: at byte 8, header: key is not valid UTF-8 (invalid byte at offset 1 of the string)"
        );
    }

    #[test]
    fn implausible_counts_are_rejected() {
        let source = Source::Memory(vec![0; 100]);
        let cur = Cursor::new(&source, Path::new("x"), 100);
        assert_eq!(cur.plausible_count(0, 25, 4, "a").unwrap(), 25);
        assert!(cur.plausible_count(0, 26, 4, "a").is_err());
        assert!(cur.plausible_count(0, u64::MAX, 12, "a").is_err());
    }
}
