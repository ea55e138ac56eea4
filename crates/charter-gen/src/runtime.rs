//! Loading ONNX Runtime: one environment per process, from a shared library
//! found through `CHARTER_ORT_LIB` or the setup cache.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::error::{Error, Result};

/// The library `scripts/setup` installs, relative to `CHARTER_HOME`.
const CACHED_LIB: &str = "onnxruntime/libonnxruntime.so.1.31.1";

static INIT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// Where charter looks for ONNX Runtime: `CHARTER_ORT_LIB`, else
/// `${CHARTER_HOME:-~/.cache/charter}/onnxruntime/libonnxruntime.so.1.31.1`.
pub fn library_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CHARTER_ORT_LIB") {
        return PathBuf::from(p);
    }
    charter_home().join(CACHED_LIB)
}

/// charter's cache directory.
pub fn charter_home() -> PathBuf {
    match std::env::var_os("CHARTER_HOME") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/charter"),
    }
}

/// Loads ONNX Runtime once for the process (ONNX Runtime allows one
/// environment per process); later calls return the first result.
pub fn init() -> Result<&'static Environment> {
    match INIT.get_or_init(|| load(&library_path())) {
        Ok(env) => Ok(env),
        Err(reason) => Err(Error::Runtime(reason.clone())),
    }
}

fn load(path: &Path) -> std::result::Result<Environment, String> {
    if !path.is_file() {
        return Err(format!(
            "ONNX Runtime not found at {} — run scripts/setup, or set CHARTER_ORT_LIB to a libonnxruntime 1.31",
            path.display()
        ));
    }
    let builder = ort::init_from(path).map_err(|e| {
        // The loader's own reason (dlerror) sits in the source chain of the
        // libloading error inside, which the outer message leaves out.
        let mut msg = format!("cannot load ONNX Runtime from {}: {e}", path.display());
        if let ort::LoadDynamicError::Dlopen { error, .. } = &e {
            let mut source = std::error::Error::source(error);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
        }
        msg
    })?;
    builder
        .with_name("charter")
        .build()
        .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
}
