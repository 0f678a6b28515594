//! What the operator tools need to show a general record (schema 3, the
//! Python package's): its tensors' values as numbers, whatever their dtype.

use crate::state::ArchivedNamedTensor;

/// IEEE 754 binary16 bits to f32 (exact: every f16 is an f32).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exp = (bits >> 10) & 0x1f;
    let frac = u32::from(bits & 0x3ff);
    let magnitude = match exp {
        0 => (frac as f32) * 2f32.powi(-24),
        0x1f if frac == 0 => f32::INFINITY,
        0x1f => f32::NAN,
        _ => f32::from_bits((u32::from(exp) + 112) << 23 | frac << 13),
    };
    f32::from_bits(magnitude.to_bits() | sign)
}

/// The values of `t` as f32 (integers and booleans converted, 8-byte types
/// rounded), or `None` for the 8-bit float types, which have no
/// statistics here.
pub fn values_f32(t: &ArchivedNamedTensor) -> Option<Vec<f32>> {
    let b = t.bytes();
    fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        b.chunks_exact(N)
            .map(|c| c.try_into().expect("exact chunks"))
    }
    Some(match t.dtype.as_str() {
        "F32" => chunks::<4>(b).map(f32::from_le_bytes).collect(),
        "F64" => chunks::<8>(b)
            .map(|c| f64::from_le_bytes(c) as f32)
            .collect(),
        "F16" => chunks::<2>(b)
            .map(|c| f16_to_f32(u16::from_le_bytes(c)))
            .collect(),
        "BF16" => chunks::<2>(b)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes(c)) << 16))
            .collect(),
        "I64" => chunks::<8>(b)
            .map(|c| i64::from_le_bytes(c) as f32)
            .collect(),
        "U64" => chunks::<8>(b)
            .map(|c| u64::from_le_bytes(c) as f32)
            .collect(),
        "I32" => chunks::<4>(b)
            .map(|c| i32::from_le_bytes(c) as f32)
            .collect(),
        "U32" => chunks::<4>(b)
            .map(|c| u32::from_le_bytes(c) as f32)
            .collect(),
        "I16" => chunks::<2>(b)
            .map(|c| f32::from(i16::from_le_bytes(c)))
            .collect(),
        "U16" => chunks::<2>(b)
            .map(|c| f32::from(u16::from_le_bytes(c)))
            .collect(),
        "I8" => b.iter().map(|&x| f32::from(x as i8)).collect(),
        "U8" | "BOOL" => b.iter().map(|&x| f32::from(x)).collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn f16_conversion_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }
}
