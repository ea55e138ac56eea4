//! Feeds arbitrary bytes to the GGUF parser, then every read on what parses.
//! Any panic, abort or oversized allocation is a bug.

#![no_main]

use charter_model::{BlockQ4_0, BlockQ4_1, BlockQ8_0, Gguf};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(gguf) = Gguf::parse_bytes(data) else {
        return;
    };
    for info in gguf.tensors() {
        let name = info.name();
        let _ = gguf.read_raw(name);
        let _ = gguf.dequantize(name);
        let _ = gguf.dequantize_rows(name, 0..1);
        let _ = gguf.blocks::<BlockQ4_0>(name);
        let _ = gguf.blocks::<BlockQ4_1>(name);
        let _ = gguf.blocks::<BlockQ8_0>(name);
    }
    for (key, _) in gguf.metadata().iter() {
        let _ = gguf.metadata().get_u64(key);
        let _ = gguf.metadata().get_str(key);
        let _ = gguf.metadata().get_str_array(key);
    }
});
