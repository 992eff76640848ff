//! Shape checks shared by every backend: each op derives its dimensions from its tensors'
//! declared shapes and panics, naming the op, the argument, the expected and the actual shape,
//! when they disagree. Run before any work (and, on the GPU, before any launch).

use crate::ops::attention::AttnShape;
use crate::ops::lstm::LstmShape;
use crate::tensor::{DType, Shape, TensorId, TensorTable};

#[track_caller]
pub fn expect(t: &TensorTable, op: &str, arg: &str, id: TensorId, want: &[usize]) {
    let got = t.shape(id);
    if got != want {
        panic!(
            "shape mismatch in {op}: {arg} ({}) expected {}, got {}",
            t.name(id),
            Shape(want),
            Shape(got)
        );
    }
}

#[track_caller]
pub fn expect_dtype(t: &TensorTable, op: &str, arg: &str, id: TensorId, want: DType) {
    let got = t.spec(id).dtype;
    if got != want {
        panic!(
            "dtype mismatch in {op}: {arg} ({}) expected {want:?}, got {got:?}",
            t.name(id)
        );
    }
}

/// Splits a shape into (rows, last dim).
fn rows_last(s: &[usize]) -> (usize, usize) {
    let last = *s.last().unwrap_or(&1);
    (s.iter().product::<usize>() / last.max(1), last)
}

fn with_last(s: &[usize], last: usize) -> Vec<usize> {
    let mut v = s.to_vec();
    *v.last_mut().expect("tensor of rank 0") = last;
    v
}

/// (N, IC, OC) of a linear layer: out = inp · weightᵀ + bias.
#[track_caller]
pub fn linear(
    t: &TensorTable,
    op: &str,
    out: TensorId,
    inp: TensorId,
    weight: TensorId,
    bias: Option<TensorId>,
) -> (usize, usize, usize) {
    let w = t.shape(weight);
    assert!(
        w.len() == 2,
        "shape mismatch in {op}: weight ({}) must be 2-D (OC, IC), got {}",
        t.name(weight),
        Shape(w)
    );
    let (oc, ic) = (w[0], w[1]);
    let s_in = t.shape(inp).to_vec();
    let (n, in_last) = rows_last(&s_in);
    if in_last != ic {
        panic!(
            "shape mismatch in {op}: inp ({}) expected last dim {ic} (weight is {}), got {}",
            t.name(inp),
            Shape(w),
            Shape(&s_in)
        );
    }
    expect(t, op, "out", out, &with_last(&s_in, oc));
    if let Some(b) = bias {
        expect(t, op, "bias", b, &[oc]);
    }
    (n, ic, oc)
}

/// (N, C) of a row-wise op, checking `others` have the same shape as `inp`.
#[track_caller]
pub fn same(
    t: &TensorTable,
    op: &str,
    inp: TensorId,
    others: &[(&str, TensorId)],
) -> (usize, usize) {
    let s = t.shape(inp).to_vec();
    for &(arg, id) in others {
        expect(t, op, arg, id, &s);
    }
    rows_last(&s)
}

/// Row statistics (…) for a (…, C) tensor, e.g. layernorm mean/rstd.
#[track_caller]
pub fn row_stats(t: &TensorTable, op: &str, inp: TensorId, stats: &[(&str, TensorId)]) {
    let s = t.shape(inp);
    let want = &s[..s.len() - 1];
    for &(arg, id) in stats {
        expect(t, op, arg, id, want);
    }
}

/// Attention geometry from q (B,T,C) and probs (B,NH,T,T).
#[track_caller]
pub fn attention(
    t: &TensorTable,
    op: &str,
    q: TensorId,
    probs: TensorId,
    qkv_like: &[(&str, TensorId)],
) -> AttnShape {
    let qs = t.shape(q);
    assert!(
        qs.len() == 3,
        "shape mismatch in {op}: q ({}) must be (B, T, C), got {}",
        t.name(q),
        Shape(qs)
    );
    let (b, tt, c) = (qs[0], qs[1], qs[2]);
    let ps = t.shape(probs);
    assert!(
        ps.len() == 4 && ps[1] > 0 && c % ps[1] == 0,
        "shape mismatch in {op}: probs ({}) must be (B, NH, T, T) with NH dividing C = {c}, got {}",
        t.name(probs),
        Shape(ps)
    );
    let nh = ps[1];
    expect(t, op, "probs", probs, &[b, nh, tt, tt]);
    for &(arg, id) in qkv_like {
        expect(t, op, arg, id, &[b, tt, c]);
    }
    AttnShape {
        b,
        t: tt,
        nh,
        hs: c / nh,
    }
}

/// LSTM geometry from x (T,B,E) and w_hh (4H,H).
#[track_caller]
pub fn lstm(t: &TensorTable, op: &str, x: TensorId, w_ih: TensorId, w_hh: TensorId) -> LstmShape {
    let xs = t.shape(x);
    assert!(
        xs.len() == 3,
        "shape mismatch in {op}: x ({}) must be (T, B, E), got {}",
        t.name(x),
        Shape(xs)
    );
    let wh = t.shape(w_hh);
    assert!(
        wh.len() == 2 && wh[0] == 4 * wh[1],
        "shape mismatch in {op}: w_hh ({}) must be (4H, H), got {}",
        t.name(w_hh),
        Shape(wh)
    );
    let s = LstmShape {
        t: xs[0],
        b: xs[1],
        e: xs[2],
        h: wh[1],
    };
    expect(t, op, "w_ih", w_ih, &[4 * s.h, s.e]);
    s
}
