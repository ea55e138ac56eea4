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
//! Two answers:
//!
//! - [`quantize`]: each block's scale and zero point are chosen by searching
//!   scales around `(max − min) / levels` for the least squared error, not
//!   taken from min and max alone. Still 0.3–1.3 nats of KL for Q4_1 → 4 bits.
//! - [`quantize_with_residual`]: a block whose values lie on a grid
//!   `lo + step · c` (every Q4_1 and Q4_0 block) keeps that grid's codes and
//!   step, takes the integer zero point nearest `−lo / step`, and returns
//!   the fraction left over as a per-block f32 residual, which the graph adds
//!   back as `residual × (sum of the block's inputs)`: exact.

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
    /// `[n, k / 32]` what each block's values are off by on average after
    /// quantisation (`value ≈ (q − z) · scale + residual`); only filled by
    /// [`quantize_with_residual`], zeros otherwise.
    pub(crate) residuals: Vec<f32>,
}

/// Bytes of packed zero points per row.
pub(crate) fn zero_point_cols(blocks: usize, bits: usize) -> usize {
    (blocks * bits).div_ceil(8)
}

/// Quantises a row-major `[n, k]` weight to `bits` (4 or 8) with integer
/// zero points; `k` must be a multiple of 32.
pub(crate) fn quantize(w: &[f32], n: usize, k: usize, bits: usize) -> Result<Quantized, String> {
    quantize_blocks(w, n, k, bits, false)
}

/// Like [`quantize`], and also returns each block's mean remaining error as
/// a residual, so that `(q − z) · scale + residual` reproduces the block's
/// values exactly when they lie on a grid of at most `2^bits` levels (as
/// GGUF Q4_1 blocks do: `d · q + m`), and removes the block's mean error
/// otherwise. Codes then come from that grid: the integer zero point is the
/// one nearest the grid's own offset, and the residual is the fraction left.
pub(crate) fn quantize_with_residual(
    w: &[f32],
    n: usize,
    k: usize,
    bits: usize,
) -> Result<Quantized, String> {
    quantize_blocks(w, n, k, bits, true)
}

fn check(w: &[f32], n: usize, k: usize, bits: usize) -> Result<(), String> {
    if !k.is_multiple_of(BLOCK) || w.len() != n * k || !(bits == 4 || bits == 8) {
        return Err(format!(
            "cannot quantise a [{n}, {k}] weight ({} values) to {bits} bits in blocks of {BLOCK}",
            w.len()
        ));
    }
    Ok(())
}

fn quantize_blocks(
    w: &[f32],
    n: usize,
    k: usize,
    bits: usize,
    residual: bool,
) -> Result<Quantized, String> {
    check(w, n, k, bits)?;
    let levels = ((1u32 << bits) - 1) as f32;
    let blocks = k / BLOCK;
    let zp_cols = zero_point_cols(blocks, bits);
    let blob = BLOCK * bits / 8;
    let mut out = Quantized {
        packed: vec![0; n * blocks * blob],
        scales: vec![0.0; n * blocks],
        zero_points: vec![0; n * zp_cols],
        residuals: vec![0.0; n * blocks],
    };
    let mut codes = [0u8; BLOCK];
    for row in 0..n {
        for b in 0..blocks {
            let vals = &w[row * k + b * BLOCK..row * k + (b + 1) * BLOCK];
            let grid = if residual {
                grid(vals, levels)
            } else {
                centred_grid(vals, levels)
            };
            let (scale, zero) = match grid {
                Some((lo, step)) => {
                    for (c, &v) in codes.iter_mut().zip(vals) {
                        *c = ((v - lo) / step).round().clamp(0.0, levels) as u8;
                    }
                    (step, (-lo / step).round().clamp(0.0, levels))
                }
                None => {
                    let (scale, zero) = fit(vals, levels);
                    for (c, &v) in codes.iter_mut().zip(vals) {
                        *c = (v / scale + zero).round().clamp(0.0, levels) as u8;
                    }
                    (scale, zero)
                }
            };
            if residual {
                let off: f64 = codes
                    .iter()
                    .zip(vals)
                    .map(|(&c, &v)| f64::from(v) - f64::from((f32::from(c) - zero) * scale))
                    .sum();
                out.residuals[row * blocks + b] = (off / BLOCK as f64) as f32;
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

/// The block's values as `lo + step · c` with integer `c` in `0..=levels`, if
/// they lie on such a grid (to a relative 1e-3 of a step): `(lo, step)`.
/// A constant block is the grid `(value, 1)`.
fn grid(vals: &[f32], levels: f32) -> Option<(f32, f32)> {
    let lo = vals.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !(lo.is_finite() && hi.is_finite()) {
        return None;
    }
    if hi == lo {
        return Some((lo, 1.0));
    }
    // The widest grid first: a block whose codes use all levels (the usual
    // case) is found at once; narrower spans try fewer steps.
    (1..=levels as u32).rev().find_map(|steps| {
        let step = (hi - lo) / steps as f32;
        vals.iter()
            .all(|&v| {
                let c = (v - lo) / step;
                (c - c.round()).abs() < 1e-3
            })
            .then_some((lo, step))
    })
}

/// The block's values as `step · (c − z)` with `z = (levels + 1) / 2` and
/// integer `c` in `0..=levels`, if they lie on such a grid (to a relative
/// 1e-3 of a step): `(−z · step, step)`. GGUF's symmetric formats are such
/// grids — Q8_0 blocks are `d · q` with `q` in `−128..=127`, Q4_0 blocks
/// `d · (q − 8)` — so they keep their codes and scale exactly, with an
/// integer zero point and no residual. The scale is found from the largest
/// magnitude, which is `d` times the top code (Q8_0 scales so the largest
/// magnitude is 127·d; 128·d would be the negative end).
fn centred_grid(vals: &[f32], levels: f32) -> Option<(f32, f32)> {
    let zero = (levels + 1.0) / 2.0;
    let amax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
    if !amax.is_finite() || amax == 0.0 {
        return None;
    }
    [zero - 1.0, zero].into_iter().find_map(|top| {
        let step = amax / top;
        vals.iter()
            .all(|&v| {
                let c = v / step + zero;
                (c - c.round()).abs() < 1e-3 && (0.0..=levels).contains(&c.round())
            })
            .then_some((-zero * step, step))
    })
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

    /// Blocks as GGUF Q4_1 stores them: `d · q + m`, codes 0..=15, with a
    /// float minimum that is no multiple of the step.
    fn q4_1_like(n: usize, k: usize) -> Vec<f32> {
        (0..n * k)
            .map(|i| {
                let block = i / BLOCK;
                let d = 0.01 + 0.003 * (block % 7) as f32;
                let m = -7.37 * d + 0.011 * (block % 5) as f32;
                let q = if i % BLOCK == 0 {
                    0
                } else {
                    (i * 11 + block) % 16
                };
                d * q as f32 + m
            })
            .collect()
    }

    #[test]
    fn residuals_make_q4_1_blocks_exact() {
        let (n, k) = (4, 128);
        let w = q4_1_like(n, k);
        for bits in [4, 8] {
            let q = quantize_with_residual(&w, n, k, bits).unwrap();
            let back = dequantize(&q, n, k, bits);
            for (i, (a, b)) in w.iter().zip(&back).enumerate() {
                let r = q.residuals[i / BLOCK];
                assert!(
                    (a - (b + r)).abs() < 1e-5,
                    "{bits} bits, value {i}: {a} vs {b} + {r}"
                );
            }
        }
        // Integer zero points alone cannot represent these blocks.
        let q = quantize(&w, n, k, 4).unwrap();
        let back = dequantize(&q, n, k, 4);
        let worst = w
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst > 1e-3, "{worst}");
    }

    #[test]
    fn residuals_remove_the_mean_error_of_off_grid_blocks() {
        let (n, k) = (3, 96);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0 + 0.013 * (i % 3) as f32)
            .collect();
        let blocks = k / BLOCK;
        let q = quantize_with_residual(&w, n, k, 4).unwrap();
        let back = dequantize(&q, n, k, 4);
        for row in 0..n {
            for b in 0..blocks {
                let r = q.residuals[row * blocks + b];
                let mean: f32 = (0..BLOCK)
                    .map(|j| {
                        let i = row * k + b * BLOCK + j;
                        w[i] - back[i] - r
                    })
                    .sum::<f32>()
                    / BLOCK as f32;
                assert!(mean.abs() < 1e-5, "row {row}, block {b}: {mean}");
            }
        }
    }

    #[test]
    fn symmetric_blocks_keep_their_codes() {
        // Q8_0: d · q with q in −128..=127, the largest magnitude 127·d
        // (some blocks reach −128·d); Q4_0: d · (q − 8) with q in 0..=15.
        let (n, k) = (2, 128);
        let q8_0: Vec<f32> = (0..n * k)
            .map(|i| {
                let block = i / BLOCK;
                let d = 0.0021 + 0.0007 * block as f32;
                let q = match i % BLOCK {
                    0 => 127,
                    1 if block % 2 == 1 => -128,
                    _ => (i * 53 % 255) as i32 - 127,
                };
                d * q as f32
            })
            .collect();
        let q4_0: Vec<f32> = (0..n * k)
            .map(|i| {
                let d = 0.013 + 0.002 * (i / BLOCK) as f32;
                let q = if i % BLOCK == 0 { 0 } else { i * 7 % 16 };
                d * (q as f32 - 8.0)
            })
            .collect();
        for (w, bits) in [(&q8_0, 8), (&q4_0, 4)] {
            let q = quantize(w, n, k, bits).unwrap();
            for (i, (a, b)) in w.iter().zip(dequantize(&q, n, k, bits)).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * a.abs(),
                    "{bits} bits, value {i}: {a} vs {b}"
                );
            }
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
