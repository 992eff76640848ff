//! Philox4x32-10 counter-based random numbers, for dropout masks.
//!
//! A dropout mask element is a pure function of (seed, step, tensor, element): nothing is stored
//! between forward and backward, and the CUDA kernels compute the very same bits from the same
//! formula (`kernels/philox.cuh` must stay in step with this file). The backward pass therefore
//! REGENERATES the mask rather than storing it.
//!
//! Layout of one draw: key = (seed low 32 bits, seed high 32 bits); counter = (element / 4 low 32
//! bits, element / 4 high 32 bits, tensor, step low 32 bits). The four output words serve elements
//! 4q .. 4q+3 in order. A word w becomes a uniform u = (w >> 8) * 2^-24 in [0, 1), exactly
//! representable in f32, and the element is KEPT when u >= p (dropped with probability p).

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// The Philox4x32 block function with 10 rounds (Salmon et al., SC'11).
#[inline]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The four uniforms in [0, 1) for elements 4q .. 4q+3 of dropout tensor `tensor` at `step`.
#[inline]
pub fn uniform4(seed: u64, step: u64, tensor: u32, q: u64) -> [f32; 4] {
    let w = philox4x32_10(
        [q as u32, (q >> 32) as u32, tensor, step as u32],
        [seed as u32, (seed >> 32) as u32],
    );
    w.map(|x| (x >> 8) as f32 * (1.0 / 16_777_216.0))
}

/// Whether `element` of dropout tensor `tensor` at `step` is kept, for drop probability `p`.
#[inline]
pub fn keep(seed: u64, step: u64, tensor: u32, element: u64, p: f32) -> bool {
    uniform4(seed, step, tensor, element >> 2)[(element & 3) as usize] >= p
}

/// Identifies the random stream of one dropout site and training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutKey {
    /// Drop probability in [0, 1).
    pub p: f32,
    pub seed: u64,
    pub step: u64,
    /// Which dropout tensor (e.g. the attention layer index); distinct sites get distinct ids.
    pub tensor: u32,
}

impl DropoutKey {
    /// The multiplier a kept element receives, 1 / (1 - p).
    pub fn scale(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }

    /// Fills `out` with the mask multipliers (0 or 1/(1-p)) of elements `start .. start + out.len()`.
    pub fn fill_mask(&self, start: u64, out: &mut [f32]) {
        let scale = self.scale();
        let mut e = start;
        let mut i = 0;
        while i < out.len() {
            let u = uniform4(self.seed, self.step, self.tensor, e >> 2);
            let mut lane = (e & 3) as usize;
            while lane < 4 && i < out.len() {
                out[i] = if u[lane] >= self.p { scale } else { 0.0 };
                lane += 1;
                i += 1;
                e += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of Random123's tests/kat_vectors, "philox4x32 10" lines.
    #[test]
    fn known_answer_vectors() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn mask_matches_keep_and_rate() {
        let key = DropoutKey {
            p: 0.25,
            seed: 1234,
            step: 7,
            tensor: 3,
        };
        let n = 40_001;
        let mut m = vec![0.0; n];
        key.fill_mask(5, &mut m);
        let mut kept = 0;
        for (i, &x) in m.iter().enumerate() {
            let k = keep(key.seed, key.step, key.tensor, 5 + i as u64, key.p);
            assert_eq!(x != 0.0, k, "element {}", 5 + i);
            if k {
                kept += 1;
                assert_eq!(x, 1.0 / 0.75);
            }
        }
        let rate = kept as f64 / n as f64;
        // Binomial standard error is 0.0022; allow ~5 sigma.
        assert!((rate - 0.75).abs() < 0.011, "keep rate {rate}");
        // A different step or tensor gives a different mask.
        let mut other = vec![0.0; n];
        DropoutKey { step: 8, ..key }.fill_mask(5, &mut other);
        assert_ne!(m, other);
    }
}
