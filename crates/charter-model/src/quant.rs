//! Dequantisation of ggml tensor data to f32, and raw access to quantised blocks.
//!
//! Block layouts follow ggml's `ggml-common.h`: every block holds 32
//! consecutive elements of a row, scales are little-endian IEEE f16.
//!
//! | type | bytes | layout | element `j` |
//! |------|-------|--------|-------------|
//! | Q8_0 | 34 | `d: f16, qs: [i8; 32]` | `d · qs[j]` |
//! | Q4_0 | 18 | `d: f16, qs: [u8; 16]` | `d · (q_j − 8)` |
//! | Q4_1 | 20 | `d: f16, m: f16, qs: [u8; 16]` | `d · q_j + m` |
//!
//! In both 4-bit types `q_j` for `j < 16` is the low nibble of `qs[j]` and
//! `q_{j+16}` the high nibble of `qs[j]`: the two halves of the block are
//! interleaved by byte, not neighbouring elements.

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::ggml::GgmlType;

/// Elements per block of the block-quantised types read here.
pub const BLOCK_LEN: usize = 32;

/// A quantised ggml block whose raw contents can be read without dequantising
/// (to repack them, for example into ONNX `MatMulNBits`).
///
/// Blocks are stored row by row: block `b` of row `r` of a tensor with row
/// length `ne0` is block number `r · ne0 / 32 + b`.
pub trait Block: Copy + Sized {
    /// The ggml type these blocks belong to.
    const GGML_TYPE: GgmlType;
    /// Size of one block in the file.
    const BYTES: usize;

    /// Decodes one block from exactly [`Self::BYTES`] bytes; `None` for any other length.
    fn decode(bytes: &[u8]) -> Option<Self>;

    /// The block's 32 values.
    fn dequantize(&self) -> [f32; BLOCK_LEN];
}

/// A Q4_0 block: 32 values `d · (q − 8)` with 4-bit `q`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_0 {
    /// The scale.
    pub d: f16,
    /// Packed quants: element `j` in the low nibble of byte `j`, element
    /// `j + 16` in the high nibble.
    pub qs: [u8; 16],
}

/// A Q4_1 block: 32 values `d · q + m` with 4-bit `q`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_1 {
    /// The scale.
    pub d: f16,
    /// The minimum (offset).
    pub m: f16,
    /// Packed quants: element `j` in the low nibble of byte `j`, element
    /// `j + 16` in the high nibble.
    pub qs: [u8; 16],
}

/// A Q8_0 block: 32 values `d · q` with signed 8-bit `q`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8_0 {
    /// The scale.
    pub d: f16,
    /// The quants, in element order.
    pub qs: [i8; 32],
}

/// Unpacks 16 bytes of nibbles into 32 quants in element order.
fn unpack_nibbles(qs: &[u8; 16]) -> [u8; BLOCK_LEN] {
    let mut q = [0; BLOCK_LEN];
    for (j, &byte) in qs.iter().enumerate() {
        q[j] = byte & 0x0f;
        q[j + 16] = byte >> 4;
    }
    q
}

fn f16_at(bytes: &[u8], at: usize) -> f16 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn array16(bytes: &[u8]) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(bytes);
    out
}

impl BlockQ4_0 {
    /// The 32 unsigned quants (0..=15) in element order.
    pub fn quants(&self) -> [u8; BLOCK_LEN] {
        unpack_nibbles(&self.qs)
    }
}

impl BlockQ4_1 {
    /// The 32 unsigned quants (0..=15) in element order.
    pub fn quants(&self) -> [u8; BLOCK_LEN] {
        unpack_nibbles(&self.qs)
    }
}

impl Block for BlockQ4_0 {
    const GGML_TYPE: GgmlType = GgmlType::Q4_0;
    const BYTES: usize = 18;

    fn decode(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == Self::BYTES).then(|| Self {
            d: f16_at(bytes, 0),
            qs: array16(&bytes[2..18]),
        })
    }

    fn dequantize(&self) -> [f32; BLOCK_LEN] {
        let d = self.d.to_f32();
        self.quants().map(|q| d * (f32::from(q) - 8.0))
    }
}

impl Block for BlockQ4_1 {
    const GGML_TYPE: GgmlType = GgmlType::Q4_1;
    const BYTES: usize = 20;

    fn decode(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == Self::BYTES).then(|| Self {
            d: f16_at(bytes, 0),
            m: f16_at(bytes, 2),
            qs: array16(&bytes[4..20]),
        })
    }

    fn dequantize(&self) -> [f32; BLOCK_LEN] {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        self.quants().map(|q| d * f32::from(q) + m)
    }
}

impl Block for BlockQ8_0 {
    const GGML_TYPE: GgmlType = GgmlType::Q8_0;
    const BYTES: usize = 34;

    fn decode(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == Self::BYTES).then(|| {
            let mut qs = [0; BLOCK_LEN];
            for (q, &b) in qs.iter_mut().zip(&bytes[2..]) {
                *q = i8::from_le_bytes([b]);
            }
            Self {
                d: f16_at(bytes, 0),
                qs,
            }
        })
    }

    fn dequantize(&self) -> [f32; BLOCK_LEN] {
        let d = self.d.to_f32();
        self.qs.map(|q| d * f32::from(q))
    }
}

/// Decodes every block in `bytes` (a whole number of blocks).
pub(crate) fn decode_blocks<B: Block>(bytes: &[u8]) -> Option<Vec<B>> {
    if !bytes.len().is_multiple_of(B::BYTES) {
        return None;
    }
    bytes.chunks_exact(B::BYTES).map(B::decode).collect()
}

fn dequantize_blocks<B: Block>(bytes: &[u8], out: &mut Vec<f32>) {
    for chunk in bytes.chunks_exact(B::BYTES) {
        if let Some(block) = B::decode(chunk) {
            out.extend_from_slice(&block.dequantize());
        }
    }
}

/// Dequantises `bytes` of ggml type `ggml_type` to f32, in storage order.
///
/// `bytes` must hold a whole number of blocks. Supported types: F32, F16,
/// BF16, Q8_0, Q4_0 and Q4_1 ([`GgmlType::is_dequantizable`]).
pub fn dequantize(ggml_type: GgmlType, bytes: &[u8]) -> Result<Vec<f32>> {
    let fail = |problem: String| Error::Dequantize { ggml_type, problem };
    if !ggml_type.is_dequantizable() {
        return Err(fail(
            "unsupported type (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)".to_owned(),
        ));
    }
    let Some((block_len, block_bytes)) = ggml_type.block_layout() else {
        return Err(fail("the type has no known block layout".to_owned()));
    };
    // Both are small constants for the supported types.
    let (block_len, block_bytes) = (block_len as usize, block_bytes as usize);
    if !bytes.len().is_multiple_of(block_bytes) {
        return Err(fail(format!(
            "{} bytes is not a whole number of {block_bytes}-byte blocks",
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * block_len);
    match ggml_type {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => dequantize_blocks::<BlockQ8_0>(bytes, &mut out),
        GgmlType::Q4_0 => dequantize_blocks::<BlockQ4_0>(bytes, &mut out),
        GgmlType::Q4_1 => dequantize_blocks::<BlockQ4_1>(bytes, &mut out),
        _ => return Err(fail("unsupported type".to_owned())),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Hand-built blocks against hand-computed values, nibble order included.

    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_low_nibble_then_high_nibble() {
        // d = 0.5; byte j holds q_j = j (low) and q_{j+16} = 15 - j (high).
        let mut bytes = f16_bytes(0.5).to_vec();
        bytes.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let values = dequantize(GgmlType::Q4_0, &bytes).unwrap();
        let expected: Vec<f32> = (0..32)
            .map(|j| {
                let q = if j < 16 { j } else { 15 - (j - 16) };
                0.5 * (q as f32 - 8.0)
            })
            .collect();
        assert_eq!(values, expected);
        assert_eq!(values[0], -4.0);
        assert_eq!(values[15], 3.5);
        assert_eq!(values[16], 3.5);
        assert_eq!(values[31], -4.0);
        let block = BlockQ4_0::decode(&bytes).unwrap();
        assert_eq!(block.quants()[1], 1);
        assert_eq!(block.quants()[17], 14);
    }

    #[test]
    fn q4_1_scale_and_min() {
        // d = 0.25, m = -1; byte j = 0x?? with low nibble 1 and high nibble 2
        // except byte 3: low 15, high 0.
        let mut bytes = f16_bytes(0.25).to_vec();
        bytes.extend(f16_bytes(-1.0));
        let mut qs = [0x21u8; 16];
        qs[3] = 0x0f;
        bytes.extend(qs);
        let values = dequantize(GgmlType::Q4_1, &bytes).unwrap();
        for (j, &v) in values.iter().enumerate() {
            let expected = match j {
                3 => 0.25 * 15.0 - 1.0,
                19 => -1.0,
                j if j < 16 => 0.25 - 1.0,
                _ => 0.5 - 1.0,
            };
            assert_eq!(v, expected, "element {j}");
        }
        let block = BlockQ4_1::decode(&bytes).unwrap();
        assert_eq!(block.d, f16::from_f32(0.25));
        assert_eq!(block.m, f16::from_f32(-1.0));
        assert_eq!(block.dequantize().to_vec(), values);
    }

    #[test]
    fn q8_0_signed_quants() {
        let mut bytes = f16_bytes(0.125).to_vec();
        bytes.extend((0..32).map(|j: i32| ((j - 16) * 8) as i8 as u8));
        let values = dequantize(GgmlType::Q8_0, &bytes).unwrap();
        let expected: Vec<f32> = (0..32).map(|j| 0.125 * ((j - 16) * 8) as f32).collect();
        assert_eq!(values, expected);
        assert_eq!(values[0], -16.0);
        assert_eq!(values[31], 15.0);
    }

    #[test]
    fn float_types() {
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::F32, &f32s).unwrap(), [1.5, -2.0]);
        let f16s = [f16_bytes(0.5), f16_bytes(-3.0)].concat();
        assert_eq!(dequantize(GgmlType::F16, &f16s).unwrap(), [0.5, -3.0]);
        // bf16 1.0 = 0x3f80, -0.5 = 0xbf00
        assert_eq!(
            dequantize(GgmlType::BF16, &[0x80, 0x3f, 0x00, 0xbf]).unwrap(),
            [1.0, -0.5]
        );
    }

    #[test]
    fn wrong_lengths_and_types_are_errors() {
        assert_eq!(
            dequantize(GgmlType::Q4_1, &[0; 21])
                .unwrap_err()
                .to_string(),
            "cannot dequantise Q4_1 data: 21 bytes is not a whole number of 20-byte blocks"
        );
        assert!(dequantize(GgmlType::Q6_K, &[0; 210]).is_err());
        assert!(BlockQ8_0::decode(&[0; 33]).is_none());
        assert!(decode_blocks::<BlockQ4_0>(&[0; 19]).is_none());
        assert_eq!(decode_blocks::<BlockQ4_0>(&[0; 36]).unwrap().len(), 2);
    }
}
