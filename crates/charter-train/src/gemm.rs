//! A safe, allocating f32 matrix product over strided views, for the fused
//! linear layer in [`crate::kernels`].
//!
//! burn's flex backend computes its matrix products with the same `gemm`
//! crate, but every product's output buffer is allocated zeroed as bytes and
//! then copied once more to reach its alignment: two extra passes over each
//! activation, forward and backward, plus the page faults of the copies.
//! Here the output is written straight into fresh capacity, and operands are
//! read through their strides, so a transposed weight or gradient is never
//! copied to be contiguous.
#![allow(unsafe_code)]

use std::borrow::Cow;

/// Products with at least this many multiply-adds run on rayon's threads
/// (the threshold burn's flex backend uses).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// A `rows × cols` f32 matrix read from `values` at `offset + r·row_stride +
/// c·col_stride`.
#[derive(Debug, Clone)]
pub(crate) struct Matrix<'a> {
    pub(crate) values: Cow<'a, [f32]>,
    pub(crate) offset: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: usize,
    pub(crate) col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// A row-major `rows × cols` matrix.
    pub(crate) fn row_major(values: Cow<'a, [f32]>, rows: usize, cols: usize) -> Self {
        Self {
            values,
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, as a view of the same values.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside `values` (checked before the
    /// unchecked reads of the product).
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .and_then(|r| {
                (self.cols - 1)
                    .checked_mul(self.col_stride)
                    .and_then(|c| r.checked_add(c))
            })
            .and_then(|i| i.checked_add(self.offset));
        last.is_some_and(|i| i < self.values.len())
            && isize::try_from(self.row_stride).is_ok()
            && isize::try_from(self.col_stride).is_ok()
    }
}

/// `a · b`, row-major `[a.rows, b.cols]`.
///
/// # Panics
/// If the inner dimensions differ or a view reaches outside its values.
pub(crate) fn matmul(a: &Matrix<'_>, b: &Matrix<'_>) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    assert!(a.in_bounds() && b.in_bounds(), "matmul: view out of bounds");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let len = m.checked_mul(n).expect("matmul: output size overflows");
    if k == 0 {
        return vec![0.0; len];
    }
    let parallelism = match m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MACS {
        true => gemm::Parallelism::Rayon(0),
        false => gemm::Parallelism::None,
    };
    let mut out = Vec::<f32>::with_capacity(len);
    let stride = |s: usize| s as isize;
    // SAFETY: both operands were checked above to keep every element they
    // address, `offset + r·row_stride + c·col_stride` for `r < rows` and
    // `c < cols`, inside their slices (strides fit in `isize`), and gemm only
    // reads those. The destination is `len = m·n` elements of `out`'s
    // capacity, addressed row-major; with `read_dst` false gemm writes each
    // of them once without reading it (k > 0), so all `len` are initialised
    // when `set_len` runs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            stride(n),
            false,
            a.values.as_ptr().add(a.offset),
            stride(a.col_stride),
            stride(a.row_stride),
            b.values.as_ptr().add(b.offset),
            stride(b.col_stride),
            stride(b.row_stride),
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        out.set_len(len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &Matrix<'_>, b: &Matrix<'_>) -> Vec<f32> {
        let at = |m: &Matrix<'_>, r: usize, c: usize| {
            m.values[m.offset + r * m.row_stride + c * m.col_stride]
        };
        let mut out = vec![0.0; a.rows * b.cols];
        for r in 0..a.rows {
            for c in 0..b.cols {
                out[r * b.cols + c] = (0..a.cols).map(|i| at(a, r, i) * at(b, i, c)).sum();
            }
        }
        out
    }

    fn worst(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f32::max)
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 997) as f32 / 499.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn strided_views_match_the_definition() {
        // Large enough to take the threaded path as well as the small one.
        for (m, k, n) in [(3, 5, 4), (200, 193, 210)] {
            let a = Matrix::row_major(values(m * k, 1).into(), m, k);
            let bt = Matrix::row_major(values(n * k, 2).into(), n, k).t();
            let delta = worst(&matmul(&a, &bt), &naive(&a, &bt));
            assert!(delta < 1e-3, "{m}×{k}×{n}: {delta}");
        }
        // An offset view: the last two rows of a 4 × 3 matrix.
        let a = Matrix {
            offset: 6,
            rows: 2,
            ..Matrix::row_major(values(12, 3).into(), 4, 3)
        };
        let b = Matrix::row_major(values(6, 4).into(), 3, 2);
        assert!(worst(&matmul(&a, &b), &naive(&a, &b)) < 1e-6);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_view_past_its_values_is_refused() {
        let a = Matrix {
            offset: 1,
            ..Matrix::row_major(vec![0.0; 6].into(), 2, 3)
        };
        let b = Matrix::row_major(vec![0.0; 6].into(), 3, 2);
        matmul(&a, &b);
    }
}
