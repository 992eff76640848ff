//! Token (and optional learned position) embedding: gather forward, scatter-add backward.

use super::check_len;

/// out (B, T, C) = wte[tokens[b,t]] + wpe[t] (wpe optional; its rows must number at least T).
pub fn embedding_forward(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: Option<&[f32]>,
    b: usize,
    t: usize,
    c: usize,
) {
    let op = "embedding_forward";
    check_len(op, "out", out.len(), &[b, t, c]);
    check_len(op, "tokens", tokens.len(), &[b, t]);
    assert!(
        wte.len().is_multiple_of(c),
        "shape mismatch in {op}: wte has {} elements, not a multiple of C = {c}",
        wte.len()
    );
    let v = wte.len() / c;
    if let Some(p) = wpe {
        assert!(
            p.len() >= t * c,
            "shape mismatch in {op}: wpe expected at least [{t}, {c}], got {} elements",
            p.len()
        );
    }
    for (n, (row, &tok)) in out.chunks_exact_mut(c).zip(tokens).enumerate() {
        let tok = tok as usize;
        assert!(
            tok < v,
            "{op}: token id {tok} out of range for vocabulary {v}"
        );
        row.copy_from_slice(&wte[tok * c..(tok + 1) * c]);
        if let Some(p) = wpe {
            let pos = n % t;
            for (o, &e) in row.iter_mut().zip(&p[pos * c..(pos + 1) * c]) {
                *o += e;
            }
        }
    }
}

/// dwte[tokens[n]] += dout[n]; dwpe[t] += Σ_b dout[b, t]. Rows are visited in index order, so the
/// sums are deterministic (the GPU version must not use order-dependent float atomics either).
pub fn embedding_backward(
    dwte: &mut [f32],
    dwpe: Option<&mut [f32]>,
    dout: &[f32],
    tokens: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    let op = "embedding_backward";
    check_len(op, "dout", dout.len(), &[b, t, c]);
    check_len(op, "tokens", tokens.len(), &[b, t]);
    let v = dwte.len() / c;
    for (row, &tok) in dout.chunks_exact(c).zip(tokens) {
        let tok = tok as usize;
        assert!(
            tok < v,
            "{op}: token id {tok} out of range for vocabulary {v}"
        );
        for (d, &g) in dwte[tok * c..(tok + 1) * c].iter_mut().zip(row) {
            *d += g;
        }
    }
    if let Some(p) = dwpe {
        for (n, row) in dout.chunks_exact(c).enumerate() {
            let pos = n % t;
            for (d, &g) in p[pos * c..(pos + 1) * c].iter_mut().zip(row) {
                *d += g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    #[test]
    fn embedding_forward_and_backward() {
        let (b, t, c, v) = (3, 37, 13, 11);
        let mut r = rng(4);
        let wte = randn(&mut r, v * c);
        let wpe = randn(&mut r, (t + 2) * c);
        let tokens: Vec<u32> = (0..b * t).map(|_| r.below(v as u64) as u32).collect();
        let mut out = vec![0.0; b * t * c];
        embedding_forward(&mut out, &tokens, &wte, Some(&wpe), b, t, c);
        for n in 0..b * t {
            for i in 0..c {
                let want = wte[tokens[n] as usize * c + i] as f64 + wpe[(n % t) * c + i] as f64;
                assert_close(out[n * c + i], want, 1e-6, "embedding out");
            }
        }
        let dout = randn(&mut r, b * t * c);
        let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; (t + 2) * c]);
        embedding_backward(&mut dwte, Some(&mut dwpe), &dout, &tokens, b, t, c);
        let f = |wte: &[f32], wpe: &[f32]| {
            let mut o = vec![0.0; b * t * c];
            embedding_forward(&mut o, &tokens, wte, Some(wpe), b, t, c);
            dot(&o, &dout)
        };
        grad_check("embedding dwte", &wte, &dwte, |x| f(x, &wpe));
        grad_check("embedding dwpe", &wpe, &dwpe, |x| f(&wte, x));
    }
}
