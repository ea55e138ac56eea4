//! Block quantisation in `MatMulNBits`' layout, 4 or 8 bits.
//!
//! Each row of a `[n, k]` weight is cut into blocks of 32 values; a block
//! stores `scale` (f32), an integer zero point `z` and 32 codes `q`, with
//! `value ≈ (q − z) · scale`. 4-bit codes sit two to a byte, element `2j` in
//! the low nibble and `2j + 1` in the high one, and zero points likewise two
//! blocks to a byte per row; 8-bit codes and zero points take a byte each.
//!
//! Requantising already-quantised weights (GGUF Q4_1 has a float minimum,
//! `MatMulNBits` an integer zero point) shifts a whole block by up to half a
//! step, an error that does not average out within the block's dot product.
//! So each block's scale and zero point are chosen by searching scales around
//! `(max − min) / levels` for the least squared error, not taken from min and
//! max alone.

/// Values per block.
pub(crate) const BLOCK: usize = 32;

/// A quantised weight.
pub(crate) struct Quantized {
    /// `[n, k / 32, 32 · bits / 8]` packed codes.
    pub(crate) packed: Vec<u8>,
    /// `[n, k / 32]` scales.
    pub(crate) scales: Vec<f32>,
    /// `[n, ceil(k / 32 · bits / 8)]` packed zero points.
    pub(crate) zero_points: Vec<u8>,
}

/// Bytes of packed zero points per row.
pub(crate) fn zero_point_cols(blocks: usize, bits: usize) -> usize {
    (blocks * bits).div_ceil(8)
}

/// Quantises a row-major `[n, k]` weight to `bits` (4 or 8); `k` must be a multiple of 32.
pub(crate) fn quantize(w: &[f32], n: usize, k: usize, bits: usize) -> Result<Quantized, String> {
    if !k.is_multiple_of(BLOCK) || w.len() != n * k || !(bits == 4 || bits == 8) {
        return Err(format!(
            "cannot quantise a [{n}, {k}] weight ({} values) to {bits} bits in blocks of {BLOCK}",
            w.len()
        ));
    }
    let levels = ((1u32 << bits) - 1) as f32;
    let blocks = k / BLOCK;
    let zp_cols = zero_point_cols(blocks, bits);
    let blob = BLOCK * bits / 8;
    let mut out = Quantized {
        packed: vec![0; n * blocks * blob],
        scales: vec![0.0; n * blocks],
        zero_points: vec![0; n * zp_cols],
    };
    let mut codes = [0u8; BLOCK];
    for row in 0..n {
        for b in 0..blocks {
            let vals = &w[row * k + b * BLOCK..row * k + (b + 1) * BLOCK];
            let (scale, zero) = fit(vals, levels);
            for (c, &v) in codes.iter_mut().zip(vals) {
                *c = (v / scale + zero).round().clamp(0.0, levels) as u8;
            }
            out.scales[row * blocks + b] = scale;
            let z = zero as u8;
            let base = (row * blocks + b) * blob;
            if bits == 4 {
                out.zero_points[row * zp_cols + b / 2] |= if b % 2 == 0 { z } else { z << 4 };
                for j in 0..BLOCK / 2 {
                    out.packed[base + j] = codes[2 * j] | (codes[2 * j + 1] << 4);
                }
            } else {
                out.zero_points[row * zp_cols + b] = z;
                out.packed[base..base + BLOCK].copy_from_slice(&codes);
            }
        }
    }
    Ok(out)
}

/// The (scale, integer zero point) with the least squared error for a block.
fn fit(vals: &[f32], levels: f32) -> (f32, f32) {
    let min = vals.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
    let max = vals
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
        .max(0.0);
    if max <= min {
        return (1.0, 0.0);
    }
    let base = (max - min) / levels;
    let mut best = (
        f32::INFINITY,
        base,
        (-min / base).round().clamp(0.0, levels),
    );
    for step in 0..=40 {
        let scale = base * (0.8 + 0.01 * step as f32);
        let z0 = -min / scale;
        for zero in [z0.floor(), z0.ceil()] {
            let zero = zero.clamp(0.0, levels);
            let err: f32 = vals
                .iter()
                .map(|&v| {
                    let q = (v / scale + zero).round().clamp(0.0, levels);
                    let d = (q - zero) * scale - v;
                    d * d
                })
                .sum();
            if err < best.0 {
                best = (err, scale, zero);
            }
        }
    }
    (best.1, best.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dequantize(q: &Quantized, n: usize, k: usize, bits: usize) -> Vec<f32> {
        let blocks = k / BLOCK;
        let zp_cols = zero_point_cols(blocks, bits);
        let blob = BLOCK * bits / 8;
        let mut w = vec![0f32; n * k];
        for row in 0..n {
            for b in 0..blocks {
                let s = q.scales[row * blocks + b];
                let z = if bits == 4 {
                    let zb = q.zero_points[row * zp_cols + b / 2];
                    if b % 2 == 0 { zb & 15 } else { zb >> 4 }
                } else {
                    q.zero_points[row * zp_cols + b]
                } as f32;
                for j in 0..BLOCK {
                    let base = (row * blocks + b) * blob;
                    let code = if bits == 4 {
                        let byte = q.packed[base + j / 2];
                        if j % 2 == 0 { byte & 15 } else { byte >> 4 }
                    } else {
                        q.packed[base + j]
                    } as f32;
                    w[row * k + b * BLOCK + j] = (code - z) * s;
                }
            }
        }
        w
    }

    #[test]
    fn round_trip_error_is_small() {
        let (n, k) = (3, 96);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let range = 100.0 / 7.0;
        // Root-mean-square error against the ideal step of a uniform grid over the range.
        for (bits, levels) in [(4, 15.0), (8, 255.0)] {
            let q = quantize(&w, n, k, bits).unwrap();
            let back = dequantize(&q, n, k, bits);
            let mse = w
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / w.len() as f32;
            let step = range / levels;
            assert!(
                mse.sqrt() < 0.35 * step,
                "{bits} bits: rms {} vs step {step}",
                mse.sqrt()
            );
        }
    }

    #[test]
    fn zero_and_constant_blocks_are_exact() {
        let w = vec![0f32; 32]
            .into_iter()
            .chain(vec![2.5f32; 32])
            .collect::<Vec<_>>();
        for bits in [4, 8] {
            let q = quantize(&w, 1, 64, bits).unwrap();
            assert_eq!(dequantize(&q, 1, 64, bits), w);
        }
        assert!(quantize(&w, 1, 63, 4).is_err());
        assert!(quantize(&w, 1, 64, 3).is_err());
    }
}
