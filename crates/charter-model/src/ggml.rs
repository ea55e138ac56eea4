//! ggml tensor types: ids, names and block layouts.
//!
//! The ids and layouts follow `enum ggml_type` in ggml's `ggml.h` and the
//! block structs in `ggml-common.h`
//! (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>). The reader
//! needs the layout of every type, not only the ones it can dequantise, to
//! bounds-check the data of each tensor in a file.

use std::fmt;

/// Elements per block of the K-quants and most i-quants.
const QK_K: u64 = 256;

macro_rules! ggml_types {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $layout:expr; )*) => {
        /// A ggml tensor type, as stored in a GGUF tensor info.
        ///
        /// The variants are ggml's own names (`GGML_TYPE_Q4_K` is [`GgmlType::Q4_K`]),
        /// including the ids ggml has retired, so that error messages can name
        /// whatever a file holds.
        #[allow(non_camel_case_types, reason = "the variants are ggml's type names")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum GgmlType {
            $( $(#[$doc])* $variant, )*
        }

        impl GgmlType {
            /// The type with ggml id `id`, if ggml has ever defined one.
            pub fn from_id(id: u32) -> Option<Self> {
                match id {
                    $( $id => Some(Self::$variant), )*
                    _ => None,
                }
            }

            /// ggml's numeric id for the type.
            pub fn id(self) -> u32 {
                match self {
                    $( Self::$variant => $id, )*
                }
            }

            /// ggml's name for the type, upper case (`Q4_1`, `BF16`, `IQ2_XXS`).
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => stringify!($variant), )*
                }
            }

            /// `(elements per block, bytes per block)`, or `None` for the
            /// types ggml has removed from GGUF files.
            pub fn block_layout(self) -> Option<(u64, u64)> {
                match self {
                    $( Self::$variant => $layout, )*
                }
            }
        }
    };
}

ggml_types! {
    /// 32-bit IEEE float.
    F32 = 0, Some((1, 4));
    /// 16-bit IEEE float.
    F16 = 1, Some((1, 2));
    /// 4-bit, blocks of 32: f16 scale, 16 bytes of nibbles.
    Q4_0 = 2, Some((32, 18));
    /// 4-bit, blocks of 32: f16 scale, f16 min, 16 bytes of nibbles.
    Q4_1 = 3, Some((32, 20));
    /// Removed from ggml.
    Q4_2 = 4, None;
    /// Removed from ggml.
    Q4_3 = 5, None;
    /// 5-bit, blocks of 32.
    Q5_0 = 6, Some((32, 22));
    /// 5-bit with min, blocks of 32.
    Q5_1 = 7, Some((32, 24));
    /// 8-bit, blocks of 32: f16 scale, 32 signed bytes.
    Q8_0 = 8, Some((32, 34));
    /// 8-bit with sum, blocks of 32.
    Q8_1 = 9, Some((32, 36));
    /// 2-bit K-quant.
    Q2_K = 10, Some((QK_K, 84));
    /// 3-bit K-quant.
    Q3_K = 11, Some((QK_K, 110));
    /// 4-bit K-quant.
    Q4_K = 12, Some((QK_K, 144));
    /// 5-bit K-quant.
    Q5_K = 13, Some((QK_K, 176));
    /// 6-bit K-quant.
    Q6_K = 14, Some((QK_K, 210));
    /// 8-bit K-quant.
    Q8_K = 15, Some((QK_K, 292));
    /// i-quant, 2.06 bits per weight.
    IQ2_XXS = 16, Some((QK_K, 66));
    /// i-quant, 2.31 bits per weight.
    IQ2_XS = 17, Some((QK_K, 74));
    /// i-quant, 3.06 bits per weight.
    IQ3_XXS = 18, Some((QK_K, 98));
    /// i-quant, 1.56 bits per weight.
    IQ1_S = 19, Some((QK_K, 50));
    /// Non-linear 4-bit, blocks of 32.
    IQ4_NL = 20, Some((32, 18));
    /// i-quant, 3.44 bits per weight.
    IQ3_S = 21, Some((QK_K, 110));
    /// i-quant, 2.5 bits per weight.
    IQ2_S = 22, Some((QK_K, 82));
    /// Non-linear 4-bit, super-blocks of 256.
    IQ4_XS = 23, Some((QK_K, 136));
    /// 8-bit integer.
    I8 = 24, Some((1, 1));
    /// 16-bit integer.
    I16 = 25, Some((1, 2));
    /// 32-bit integer.
    I32 = 26, Some((1, 4));
    /// 64-bit integer.
    I64 = 27, Some((1, 8));
    /// 64-bit IEEE float.
    F64 = 28, Some((1, 8));
    /// i-quant, 1.75 bits per weight.
    IQ1_M = 29, Some((QK_K, 56));
    /// bfloat16.
    BF16 = 30, Some((1, 2));
    /// Removed from GGUF files (repacked Q4_0).
    Q4_0_4_4 = 31, None;
    /// Removed from GGUF files (repacked Q4_0).
    Q4_0_4_8 = 32, None;
    /// Removed from GGUF files (repacked Q4_0).
    Q4_0_8_8 = 33, None;
    /// Ternary, 1.69 bits per weight.
    TQ1_0 = 34, Some((QK_K, 54));
    /// Ternary, 2.06 bits per weight.
    TQ2_0 = 35, Some((QK_K, 66));
    /// Removed from GGUF files (repacked IQ4_NL).
    IQ4_NL_4_4 = 36, None;
    /// Removed from GGUF files (repacked IQ4_NL).
    IQ4_NL_4_8 = 37, None;
    /// Removed from GGUF files (repacked IQ4_NL).
    IQ4_NL_8_8 = 38, None;
    /// Microscaling FP4, blocks of 32 with an E8M0 scale.
    MXFP4 = 39, Some((32, 17));
    /// NVIDIA FP4, blocks of 64 with four E4M3 scales.
    NVFP4 = 40, Some((64, 36));
    /// 1-bit, blocks of 128.
    Q1_0 = 41, Some((128, 18));
    /// 2-bit, blocks of 64.
    Q2_0 = 42, Some((64, 18));
}

impl GgmlType {
    /// Whether [`dequantize`](crate::dequantize) supports the type.
    pub fn is_dequantizable(self) -> bool {
        matches!(
            self,
            Self::F32 | Self::F16 | Self::BF16 | Self::Q8_0 | Self::Q4_0 | Self::Q4_1
        )
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    //! The type table: ids round-trip and the layouts of the types charter reads.

    use super::*;

    #[test]
    fn ids_round_trip_and_names_are_ggml_names() {
        let mut known = 0;
        for id in 0..64 {
            if let Some(ty) = GgmlType::from_id(id) {
                assert_eq!(ty.id(), id);
                known += 1;
            }
        }
        assert_eq!(known, 43);
        assert_eq!(GgmlType::from_id(12).map(GgmlType::name), Some("Q4_K"));
        assert_eq!(GgmlType::IQ2_XXS.to_string(), "IQ2_XXS");
        assert_eq!(GgmlType::from_id(43), None);
    }

    #[test]
    fn layouts_of_the_supported_types() {
        assert_eq!(GgmlType::F32.block_layout(), Some((1, 4)));
        assert_eq!(GgmlType::F16.block_layout(), Some((1, 2)));
        assert_eq!(GgmlType::BF16.block_layout(), Some((1, 2)));
        assert_eq!(GgmlType::Q8_0.block_layout(), Some((32, 34)));
        assert_eq!(GgmlType::Q4_0.block_layout(), Some((32, 18)));
        assert_eq!(GgmlType::Q4_1.block_layout(), Some((32, 20)));
        assert_eq!(GgmlType::Q4_2.block_layout(), None);
        assert!(GgmlType::Q4_1.is_dequantizable());
        assert!(!GgmlType::Q4_K.is_dequantizable());
    }
}
