//! Shape checks shared by every backend: each op derives its dimensions from its tensors'
//! declared shapes and panics, naming the op, the argument, the expected and the actual shape,
//! when they disagree. Run before any work (and, on the GPU, before any launch).

use crate::ops::attention::AttnShape;
use crate::ops::lstm::LstmShape;
use crate::tensor::{DType, ParamIds, Shape, TensorId, TensorTable};

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
        "shape mismatch in {op}: weight ({}) expected 2-D (OC, IC), got {}",
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
        "shape mismatch in {op}: q ({}) expected (B, T, C), got {}",
        t.name(q),
        Shape(qs)
    );
    let (b, tt, c) = (qs[0], qs[1], qs[2]);
    let ps = t.shape(probs);
    assert!(
        ps.len() == 4 && ps[1] > 0 && c % ps[1] == 0,
        "shape mismatch in {op}: probs ({}) expected (B, NH, T, T) with NH dividing C = {c}, got {}",
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
        "shape mismatch in {op}: x ({}) expected (T, B, E), got {}",
        t.name(x),
        Shape(xs)
    );
    let wh = t.shape(w_hh);
    assert!(
        wh.len() == 2 && wh[0] == 4 * wh[1],
        "shape mismatch in {op}: w_hh ({}) expected (4H, H), got {}",
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

// ----------------------------------------------------------------------------------------------
// Whole-op checks, shared by every backend: each checks all of an op's tensors and returns the
// dimensions the op runs with.

/// embedding_forward: tokens (B,T) u32, wte (V,C), out (B,T,C), wpe (≥T, C). Returns (B, T, C, V).
#[track_caller]
pub fn embedding_forward(
    t: &TensorTable,
    out: TensorId,
    tokens: TensorId,
    wte: TensorId,
    wpe: Option<TensorId>,
) -> (usize, usize, usize, usize) {
    embedding(
        t,
        "embedding_forward",
        ["out", "wte", "wpe"],
        out,
        tokens,
        wte,
        wpe,
    )
}

/// The embedding checks, with the argument names of the op (forward: out, wte, wpe; backward:
/// dout, dwte, dwpe) so a mismatch names what the caller passed.
#[track_caller]
fn embedding(
    t: &TensorTable,
    op: &str,
    [out_arg, wte_arg, wpe_arg]: [&str; 3],
    out: TensorId,
    tokens: TensorId,
    wte: TensorId,
    wpe: Option<TensorId>,
) -> (usize, usize, usize, usize) {
    expect_dtype(t, op, "tokens", tokens, DType::U32);
    let ts = t.shape(tokens).to_vec();
    assert!(
        ts.len() == 2,
        "shape mismatch in {op}: tokens ({}) expected (B, T), got {}",
        t.name(tokens),
        Shape(&ts)
    );
    let ws = t.shape(wte);
    assert!(
        ws.len() == 2,
        "shape mismatch in {op}: {wte_arg} ({}) expected (V, C), got {}",
        t.name(wte),
        Shape(ws)
    );
    let (v, c) = (ws[0], ws[1]);
    expect(t, op, out_arg, out, &[ts[0], ts[1], c]);
    if let Some(p) = wpe {
        let ps = t.shape(p);
        assert!(
            ps.len() == 2 && ps[0] >= ts[1] && ps[1] == c,
            "shape mismatch in {op}: {wpe_arg} ({}) expected at least [{}, {c}], got {}",
            t.name(p),
            ts[1],
            Shape(ps)
        );
    }
    (ts[0], ts[1], c, v)
}

/// embedding_backward: the gradients have the shapes of wte / wpe. Returns (B, T, C, V).
#[track_caller]
pub fn embedding_backward(
    t: &TensorTable,
    dwte: TensorId,
    dwpe: Option<TensorId>,
    dout: TensorId,
    tokens: TensorId,
) -> (usize, usize, usize, usize) {
    embedding(
        t,
        "embedding_backward",
        ["dout", "dwte", "dwpe"],
        dout,
        tokens,
        dwte,
        dwpe,
    )
}

/// matmul_backward: as `linear`, plus dweight (OC, IC) and dinp shaped like inp.
#[track_caller]
pub fn matmul_backward(
    t: &TensorTable,
    dinp: Option<TensorId>,
    dweight: TensorId,
    dbias: Option<TensorId>,
    dout: TensorId,
    inp: TensorId,
    weight: TensorId,
) -> (usize, usize, usize) {
    let op = "matmul_backward";
    let (n, ic, oc) = linear(t, op, dout, inp, weight, dbias);
    expect(t, op, "dweight", dweight, &[oc, ic]);
    if let Some(d) = dinp {
        let s = t.shape(inp).to_vec();
        expect(t, op, "dinp", d, &s);
    }
    (n, ic, oc)
}

/// layernorm_forward: out like inp (N…, C), mean and rstd (N…), weight and bias (C).
#[track_caller]
pub fn layernorm_forward(
    t: &TensorTable,
    out: TensorId,
    mean: TensorId,
    rstd: TensorId,
    inp: TensorId,
    weight: TensorId,
    bias: TensorId,
) -> (usize, usize) {
    let op = "layernorm_forward";
    let (n, c) = same(t, op, inp, &[("out", out)]);
    row_stats(t, op, inp, &[("mean", mean), ("rstd", rstd)]);
    expect(t, op, "weight", weight, &[c]);
    expect(t, op, "bias", bias, &[c]);
    (n, c)
}

/// layernorm_backward: dinp and dout like inp, the rest as in the forward.
#[track_caller]
pub fn layernorm_backward(
    t: &TensorTable,
    dinp: TensorId,
    dweight: TensorId,
    dbias: TensorId,
    dout: TensorId,
    inp: TensorId,
    weight: TensorId,
    mean: TensorId,
    rstd: TensorId,
) -> (usize, usize) {
    let op = "layernorm_backward";
    let (n, c) = same(t, op, inp, &[("dinp", dinp), ("dout", dout)]);
    row_stats(t, op, inp, &[("mean", mean), ("rstd", rstd)]);
    for (arg, id) in [("weight", weight), ("dweight", dweight), ("dbias", dbias)] {
        expect(t, op, arg, id, &[c]);
    }
    (n, c)
}

/// attention_forward: q, k, v, out (B,T,C), probs and scratch (B,NH,T,T).
#[track_caller]
pub fn attention_forward(
    t: &TensorTable,
    out: TensorId,
    probs: TensorId,
    q: TensorId,
    k: TensorId,
    v: TensorId,
    scratch: TensorId,
) -> AttnShape {
    let op = "attention_forward";
    let s = attention(t, op, q, probs, &[("out", out), ("k", k), ("v", v)]);
    let tt = t.shape(probs).to_vec();
    expect(t, op, "scratch", scratch, &tt);
    s
}

/// Fused attention geometry from q (B,T,C) and a per-row tensor lse (B,NH,T) (NH dividing C);
/// every `qkv_like` tensor (B,T,C), every `rows_like` one like lse.
#[track_caller]
pub fn attention_fused(
    t: &TensorTable,
    op: &str,
    q: TensorId,
    lse: TensorId,
    qkv_like: &[(&str, TensorId)],
    rows_like: &[(&str, TensorId)],
) -> AttnShape {
    let qs = t.shape(q);
    assert!(
        qs.len() == 3,
        "shape mismatch in {op}: q ({}) expected (B, T, C), got {}",
        t.name(q),
        Shape(qs)
    );
    let (b, tt, c) = (qs[0], qs[1], qs[2]);
    let ls = t.shape(lse);
    assert!(
        ls.len() == 3 && ls[1] > 0 && c % ls[1] == 0,
        "shape mismatch in {op}: lse ({}) expected (B, NH, T) with NH dividing C = {c}, got {}",
        t.name(lse),
        Shape(ls)
    );
    let nh = ls[1];
    expect(t, op, "lse", lse, &[b, nh, tt]);
    for &(arg, id) in qkv_like {
        expect(t, op, arg, id, &[b, tt, c]);
    }
    for &(arg, id) in rows_like {
        expect(t, op, arg, id, &[b, nh, tt]);
    }
    AttnShape {
        b,
        t: tt,
        nh,
        hs: c / nh,
    }
}

/// attention_row_check: probs (B,NH,T,T) f32. Returns (rows B·NH·T, T).
#[track_caller]
pub fn attention_row_check(t: &TensorTable, probs: TensorId) -> (usize, usize) {
    let op = "attention_row_check";
    expect_dtype(t, op, "probs", probs, DType::F32);
    let s = t.shape(probs);
    if s.len() != 4 || s[2] != s[3] {
        panic!(
            "shape mismatch in {op}: probs ({}) expected (B, NH, T, T), got {}",
            t.name(probs),
            Shape(s)
        );
    }
    (s[0] * s[1] * s[2], s[3])
}

/// attention_backward: every (B,T,C) tensor like q, probs and scratch (B,NH,T,T).
#[track_caller]
pub fn attention_backward(
    t: &TensorTable,
    dq: TensorId,
    dk: TensorId,
    dv: TensorId,
    dout: TensorId,
    q: TensorId,
    k: TensorId,
    v: TensorId,
    probs: TensorId,
    scratch: TensorId,
) -> AttnShape {
    let op = "attention_backward";
    let s = attention(
        t,
        op,
        q,
        probs,
        &[
            ("dq", dq),
            ("dk", dk),
            ("dv", dv),
            ("dout", dout),
            ("k", k),
            ("v", v),
        ],
    );
    let tt = t.shape(probs).to_vec();
    expect(t, op, "scratch", scratch, &tt);
    s
}

/// lstm_forward: h, c (T,B,H), gates (T,B,4H), bias (4H).
#[track_caller]
pub fn lstm_forward(
    t: &TensorTable,
    h: TensorId,
    c: TensorId,
    gates: TensorId,
    x: TensorId,
    w_ih: TensorId,
    w_hh: TensorId,
    bias: TensorId,
) -> LstmShape {
    let op = "lstm_forward";
    let s = lstm(t, op, x, w_ih, w_hh);
    expect(t, op, "h", h, &[s.t, s.b, s.h]);
    expect(t, op, "c", c, &[s.t, s.b, s.h]);
    expect(t, op, "gates", gates, &[s.t, s.b, 4 * s.h]);
    expect(t, op, "bias", bias, &[4 * s.h]);
    s
}

/// lstm_backward: the gradients shaped like what they are gradients of; dgates like gates.
#[track_caller]
pub fn lstm_backward(
    t: &TensorTable,
    dx: Option<TensorId>,
    dw_ih: TensorId,
    dw_hh: TensorId,
    dbias: TensorId,
    dgates: TensorId,
    dh: TensorId,
    h: TensorId,
    c: TensorId,
    gates: TensorId,
    x: TensorId,
    w_ih: TensorId,
    w_hh: TensorId,
) -> LstmShape {
    let op = "lstm_backward";
    let s = lstm(t, op, x, w_ih, w_hh);
    for (arg, id) in [("h", h), ("c", c), ("dh", dh)] {
        expect(t, op, arg, id, &[s.t, s.b, s.h]);
    }
    expect(t, op, "gates", gates, &[s.t, s.b, 4 * s.h]);
    expect(t, op, "dgates", dgates, &[s.t, s.b, 4 * s.h]);
    expect(t, op, "dw_ih", dw_ih, &[4 * s.h, s.e]);
    expect(t, op, "dw_hh", dw_hh, &[4 * s.h, s.h]);
    expect(t, op, "dbias", dbias, &[4 * s.h]);
    if let Some(d) = dx {
        expect(t, op, "dx", d, &[s.t, s.b, s.e]);
    }
    s
}

/// cross_entropy_forward: logits (N…, V), losses and targets (N…) (targets u32). Returns (N, V).
#[track_caller]
pub fn cross_entropy_forward(
    t: &TensorTable,
    losses: TensorId,
    logits: TensorId,
    targets: TensorId,
) -> (usize, usize) {
    let op = "cross_entropy_forward";
    row_stats(t, op, logits, &[("losses", losses), ("targets", targets)]);
    expect_dtype(t, op, "targets", targets, DType::U32);
    rows_last(t.shape(logits))
}

/// cross_entropy_backward: dlogits like logits, targets (N…) u32. Returns (N, V).
#[track_caller]
pub fn cross_entropy_backward(
    t: &TensorTable,
    dlogits: TensorId,
    logits: TensorId,
    targets: TensorId,
) -> (usize, usize) {
    let op = "cross_entropy_backward";
    let (n, v) = same(t, op, logits, &[("dlogits", dlogits)]);
    row_stats(t, op, logits, &[("targets", targets)]);
    expect_dtype(t, op, "targets", targets, DType::U32);
    (n, v)
}

/// adamw_update: grad, m and v shaped like the parameter. Returns whether it decays.
#[track_caller]
pub fn adamw_update(t: &TensorTable, p: ParamIds) -> bool {
    let shape = t.shape(p.param).to_vec();
    for (arg, id) in [("grad", p.grad), ("m", p.m), ("v", p.v)] {
        expect(t, "adamw_update", arg, id, &shape);
    }
    t.spec(p.param).decay
}
