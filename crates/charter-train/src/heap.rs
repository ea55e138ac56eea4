//! Keeping freed memory in the process while a model trains.
//!
//! A training step allocates the same large tensors every time (activations
//! saved for the backward pass, gradients, optimizer moments) and frees them
//! all at its end. glibc's allocator hands blocks above its mmap threshold
//! (at most 32 MiB) back to the kernel on free, and trims the heap's top
//! once more than its trim threshold is free, so every step faults the same
//! gigabytes in again and the kernel zeroes each page: on the default model
//! at 8 × 256 tokens that was a fifth of a step's CPU time. While a
//! [`RetainedHeap`] lives, large blocks come from the heap and freed memory
//! stays there for the next step; dropping it restores glibc's defaults and
//! returns the free memory with `malloc_trim`.
//!
//! Guards may nest or overlap (jobs on several threads): the tuning holds
//! while any lives. Other allocators and platforms are left as they are.

#![allow(unsafe_code)]

use std::sync::Mutex;

/// How many guards live.
static LIVE: Mutex<usize> = Mutex::new(0);

/// glibc's tuning for training; see the module documentation.
#[derive(Debug)]
#[must_use = "the heap is tuned only while the guard lives"]
pub struct RetainedHeap {
    _private: (),
}

/// glibc's default `M_MMAP_MAX`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const DEFAULT_MMAP_MAX: libc::c_int = 65536;

/// glibc's default `M_TRIM_THRESHOLD` (128 KiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const DEFAULT_TRIM_THRESHOLD: libc::c_int = 128 * 1024;

impl RetainedHeap {
    /// Tunes the allocator until the guard is dropped.
    pub fn enter() -> Self {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        *live += 1;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if *live == 1 {
            // SAFETY: `mallopt` only changes allocator parameters, under the
            // allocator's own lock; no memory is touched. M_MMAP_MAX 0 serves
            // every request from the heap; M_TRIM_THRESHOLD -1 never trims it
            // (both documented in mallopt(3)).
            unsafe {
                libc::mallopt(libc::M_MMAP_MAX, 0);
                libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
            }
        }
        Self { _private: () }
    }
}

impl Drop for RetainedHeap {
    fn drop(&mut self) {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        *live -= 1;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if *live == 0 {
            // SAFETY: as in `enter`; `malloc_trim` releases free heap memory to
            // the kernel and leaves allocated blocks alone.
            unsafe {
                libc::mallopt(libc::M_MMAP_MAX, DEFAULT_MMAP_MAX);
                libc::mallopt(libc::M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD);
                libc::malloc_trim(0);
            }
        }
    }
}
