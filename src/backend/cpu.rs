//! The CPU backend: the reference ops of `crate::ops` over buffers allocated from the table.

use super::shapes;
use super::{Backend, RowCheck, StepInfo, StepLedger, StepRecord};
use crate::ops::{self, adamw::AdamWConfig};
use crate::philox::DropoutKey;
use crate::tensor::{DType, ParamIds, TensorId, TensorTable};

enum Buf {
    F32(Vec<f32>),
    U32(Vec<u32>),
}

pub struct CpuBackend {
    table: TensorTable,
    bufs: Vec<Buf>,
    ledger: StepLedger,
}

impl CpuBackend {
    pub fn new(table: TensorTable) -> Self {
        let bufs = table
            .iter()
            .map(|(_, s)| match s.dtype {
                DType::F32 => Buf::F32(vec![0.0; s.numel()]),
                DType::U32 => Buf::U32(vec![0; s.numel()]),
            })
            .collect();
        CpuBackend {
            table,
            bufs,
            ledger: StepLedger::default(),
        }
    }

    fn f(&self, id: TensorId) -> &[f32] {
        match &self.bufs[id.index()] {
            Buf::F32(v) => v,
            Buf::U32(_) => panic!("{} is a u32 tensor, used as f32", self.table.name(id)),
        }
    }

    fn u(&self, id: TensorId) -> &[u32] {
        match &self.bufs[id.index()] {
            Buf::U32(v) => v,
            Buf::F32(_) => panic!("{} is an f32 tensor, used as u32", self.table.name(id)),
        }
    }

    /// Moves an output buffer out of the table so inputs can be borrowed beside it. An op whose
    /// output is also one of its inputs then sees an empty input and fails its shape check.
    fn take(&mut self, id: TensorId) -> Vec<f32> {
        match &mut self.bufs[id.index()] {
            Buf::F32(v) => std::mem::take(v),
            Buf::U32(_) => panic!(
                "{} is a u32 tensor, used as f32 output",
                self.table.name(id)
            ),
        }
    }

    fn put(&mut self, id: TensorId, v: Vec<f32>) {
        self.bufs[id.index()] = Buf::F32(v);
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn table(&self) -> &TensorTable {
        &self.table
    }

    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn write(&mut self, id: TensorId, data: &[f32]) {
        let n = self.table.numel(id);
        assert!(
            data.len() == n,
            "write: {} has {n} elements, got {}",
            self.table.name(id),
            data.len()
        );
        let mut v = self.take(id);
        v.copy_from_slice(data);
        self.put(id, v);
    }

    fn read(&self, id: TensorId) -> Vec<f32> {
        self.f(id).to_vec()
    }

    fn write_u32(&mut self, id: TensorId, data: &[u32]) {
        let n = self.table.numel(id);
        assert!(
            data.len() == n,
            "write_u32: {} has {n} elements, got {}",
            self.table.name(id),
            data.len()
        );
        match &mut self.bufs[id.index()] {
            Buf::U32(v) => v.copy_from_slice(data),
            Buf::F32(_) => panic!("{} is an f32 tensor, written as u32", self.table.name(id)),
        }
    }

    fn read_u32(&self, id: TensorId) -> Vec<u32> {
        self.u(id).to_vec()
    }

    fn zero(&mut self, id: TensorId) {
        match &mut self.bufs[id.index()] {
            Buf::F32(v) => v.fill(0.0),
            Buf::U32(v) => v.fill(0),
        }
    }

    fn embedding_forward(
        &mut self,
        out: TensorId,
        tokens: TensorId,
        wte: TensorId,
        wpe: Option<TensorId>,
    ) {
        let (b, t, c, _) = shapes::embedding_forward(&self.table, out, tokens, wte, wpe);
        let mut o = self.take(out);
        ops::embedding::embedding_forward(
            &mut o,
            self.u(tokens),
            self.f(wte),
            wpe.map(|p| self.f(p)),
            b,
            t,
            c,
        );
        self.put(out, o);
    }

    fn embedding_backward(
        &mut self,
        dwte: TensorId,
        dwpe: Option<TensorId>,
        dout: TensorId,
        tokens: TensorId,
    ) {
        let (b, t, c, _) = shapes::embedding_backward(&self.table, dwte, dwpe, dout, tokens);
        let mut dw = self.take(dwte);
        let mut dp = dwpe.map(|p| self.take(p));
        ops::embedding::embedding_backward(
            &mut dw,
            dp.as_deref_mut(),
            self.f(dout),
            self.u(tokens),
            b,
            t,
            c,
        );
        self.put(dwte, dw);
        if let (Some(p), Some(v)) = (dwpe, dp) {
            self.put(p, v);
        }
    }

    fn matmul_forward(
        &mut self,
        out: TensorId,
        inp: TensorId,
        weight: TensorId,
        bias: Option<TensorId>,
    ) {
        let (n, ic, oc) = shapes::linear(&self.table, "matmul_forward", out, inp, weight, bias);
        let mut o = self.take(out);
        ops::matmul::matmul_forward(
            &mut o,
            self.f(inp),
            self.f(weight),
            bias.map(|b| self.f(b)),
            n,
            ic,
            oc,
        );
        self.put(out, o);
    }

    fn matmul_backward(
        &mut self,
        dinp: Option<TensorId>,
        dweight: TensorId,
        dbias: Option<TensorId>,
        dout: TensorId,
        inp: TensorId,
        weight: TensorId,
    ) {
        let (n, ic, oc) =
            shapes::matmul_backward(&self.table, dinp, dweight, dbias, dout, inp, weight);
        let mut di = dinp.map(|d| self.take(d));
        let mut dw = self.take(dweight);
        let mut db = dbias.map(|d| self.take(d));
        ops::matmul::matmul_backward(
            di.as_deref_mut(),
            &mut dw,
            db.as_deref_mut(),
            self.f(dout),
            self.f(inp),
            self.f(weight),
            n,
            ic,
            oc,
        );
        if let (Some(id), Some(v)) = (dinp, di) {
            self.put(id, v);
        }
        self.put(dweight, dw);
        if let (Some(id), Some(v)) = (dbias, db) {
            self.put(id, v);
        }
    }

    fn layernorm_forward(
        &mut self,
        out: TensorId,
        mean: TensorId,
        rstd: TensorId,
        inp: TensorId,
        weight: TensorId,
        bias: TensorId,
    ) {
        let (n, c) = shapes::layernorm_forward(&self.table, out, mean, rstd, inp, weight, bias);
        let (mut o, mut m, mut r) = (self.take(out), self.take(mean), self.take(rstd));
        ops::norm::layernorm_forward(
            &mut o,
            &mut m,
            &mut r,
            self.f(inp),
            self.f(weight),
            self.f(bias),
            n,
            c,
        );
        self.put(out, o);
        self.put(mean, m);
        self.put(rstd, r);
    }

    fn layernorm_backward(
        &mut self,
        dinp: TensorId,
        dweight: TensorId,
        dbias: TensorId,
        dout: TensorId,
        inp: TensorId,
        weight: TensorId,
        mean: TensorId,
        rstd: TensorId,
    ) {
        let (n, c) = shapes::layernorm_backward(
            &self.table,
            dinp,
            dweight,
            dbias,
            dout,
            inp,
            weight,
            mean,
            rstd,
        );
        let (mut di, mut dw, mut db) = (self.take(dinp), self.take(dweight), self.take(dbias));
        ops::norm::layernorm_backward(
            &mut di,
            &mut dw,
            &mut db,
            self.f(dout),
            self.f(inp),
            self.f(weight),
            self.f(mean),
            self.f(rstd),
            n,
            c,
        );
        self.put(dinp, di);
        self.put(dweight, dw);
        self.put(dbias, db);
    }

    fn gelu_forward(&mut self, out: TensorId, inp: TensorId) {
        shapes::same(&self.table, "gelu_forward", inp, &[("out", out)]);
        let mut o = self.take(out);
        ops::norm::gelu_forward(&mut o, self.f(inp));
        self.put(out, o);
    }

    fn gelu_backward(&mut self, dinp: TensorId, inp: TensorId, dout: TensorId) {
        shapes::same(
            &self.table,
            "gelu_backward",
            inp,
            &[("dinp", dinp), ("dout", dout)],
        );
        let mut d = self.take(dinp);
        ops::norm::gelu_backward(&mut d, self.f(inp), self.f(dout));
        self.put(dinp, d);
    }

    fn add(&mut self, out: TensorId, a: TensorId, b: TensorId) {
        shapes::same(&self.table, "add", out, &[("a", a), ("b", b)]);
        let mut o = self.take(out);
        ops::norm::add_forward(&mut o, self.f(a), self.f(b));
        self.put(out, o);
    }

    fn accumulate(&mut self, dst: TensorId, src: TensorId) {
        shapes::same(&self.table, "accumulate", dst, &[("src", src)]);
        let mut d = self.take(dst);
        ops::norm::accumulate(&mut d, self.f(src));
        self.put(dst, d);
    }

    fn attention_forward(
        &mut self,
        out: TensorId,
        probs: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        scratch: TensorId,
        dropout: Option<DropoutKey>,
    ) {
        let s = shapes::attention_forward(&self.table, out, probs, q, k, v, scratch);
        let (mut o, mut p) = (self.take(out), self.take(probs));
        ops::attention::attention_forward(
            &mut o,
            &mut p,
            self.f(q),
            self.f(k),
            self.f(v),
            s,
            dropout,
        );
        self.put(out, o);
        self.put(probs, p);
    }

    fn attention_backward(
        &mut self,
        dq: TensorId,
        dk: TensorId,
        dv: TensorId,
        dout: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        probs: TensorId,
        scratch: TensorId,
        dropout: Option<DropoutKey>,
    ) {
        // The CPU composite keeps its T×T scratch per thread; `scratch` is only shape-checked.
        let s = shapes::attention_backward(&self.table, dq, dk, dv, dout, q, k, v, probs, scratch);
        let (mut a, mut b, mut c) = (self.take(dq), self.take(dk), self.take(dv));
        ops::attention::attention_backward(
            &mut a,
            &mut b,
            &mut c,
            self.f(dout),
            self.f(q),
            self.f(k),
            self.f(v),
            self.f(probs),
            s,
            dropout,
        );
        self.put(dq, a);
        self.put(dk, b);
        self.put(dv, c);
    }

    fn lstm_forward(
        &mut self,
        h: TensorId,
        c: TensorId,
        gates: TensorId,
        x: TensorId,
        w_ih: TensorId,
        w_hh: TensorId,
        bias: TensorId,
    ) {
        let s = shapes::lstm_forward(&self.table, h, c, gates, x, w_ih, w_hh, bias);
        let (mut hh, mut cc, mut gg) = (self.take(h), self.take(c), self.take(gates));
        ops::lstm::lstm_forward(
            &mut hh,
            &mut cc,
            &mut gg,
            self.f(x),
            self.f(w_ih),
            self.f(w_hh),
            self.f(bias),
            s,
        );
        self.put(h, hh);
        self.put(c, cc);
        self.put(gates, gg);
    }

    fn lstm_backward(
        &mut self,
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
    ) {
        let s = shapes::lstm_backward(
            &self.table,
            dx,
            dw_ih,
            dw_hh,
            dbias,
            dgates,
            dh,
            h,
            c,
            gates,
            x,
            w_ih,
            w_hh,
        );
        let mut ddx = dx.map(|d| self.take(d));
        let (mut a, mut b, mut cb, mut dg, mut dhh) = (
            self.take(dw_ih),
            self.take(dw_hh),
            self.take(dbias),
            self.take(dgates),
            self.take(dh),
        );
        ops::lstm::lstm_backward(
            ddx.as_deref_mut(),
            &mut a,
            &mut b,
            &mut cb,
            &mut dg,
            &mut dhh,
            self.f(h),
            self.f(c),
            self.f(gates),
            self.f(x),
            self.f(w_ih),
            self.f(w_hh),
            s,
        );
        if let (Some(id), Some(v)) = (dx, ddx) {
            self.put(id, v);
        }
        self.put(dw_ih, a);
        self.put(dw_hh, b);
        self.put(dbias, cb);
        self.put(dgates, dg);
        self.put(dh, dhh);
    }

    fn cross_entropy_forward(&mut self, losses: TensorId, logits: TensorId, targets: TensorId) {
        let (n, v) = shapes::cross_entropy_forward(&self.table, losses, logits, targets);
        let mut l = self.take(losses);
        ops::loss::cross_entropy_forward(&mut l, self.f(logits), self.u(targets), n, v);
        self.put(losses, l);
    }

    fn cross_entropy_backward(
        &mut self,
        dlogits: TensorId,
        logits: TensorId,
        targets: TensorId,
        scale: f32,
    ) {
        let (n, v) = shapes::cross_entropy_backward(&self.table, dlogits, logits, targets);
        let mut d = self.take(dlogits);
        ops::loss::cross_entropy_backward(&mut d, self.f(logits), self.u(targets), scale, n, v);
        self.put(dlogits, d);
    }

    fn loss_sum(&self, losses: TensorId, targets: TensorId) -> (f64, usize) {
        ops::loss::loss_sum(self.f(losses), self.u(targets))
    }

    fn attention_row_check(&mut self, probs: TensorId, tol: f32) -> RowCheck {
        let (rows, t) = shapes::attention_row_check(&self.table, probs);
        let mut check = RowCheck {
            max_dev: 0.0,
            bad_rows: 0,
            rows,
        };
        for row in self.f(probs).chunks_exact(t.max(1)) {
            let dev = (row.iter().map(|&x| x as f64).sum::<f64>() - 1.0).abs() as f32;
            // NaN propagates into the maximum, as the GPU kernel's bit-pattern max does.
            check.max_dev = RowCheck::worst(check.max_dev, dev);
            if dev.is_nan() || dev > tol {
                check.bad_rows += 1;
            }
        }
        check
    }

    fn sum_squares(&mut self, ids: &[TensorId]) -> Vec<f64> {
        ids.iter()
            .map(|&id| ops::adamw::sum_squares(self.f(id)))
            .collect()
    }

    fn adamw_update(
        &mut self,
        p: ParamIds,
        cfg: &AdamWConfig,
        lr: f32,
        step: u64,
        grad_scale: f32,
    ) {
        let decay = shapes::adamw_update(&self.table, p);
        let (mut w, mut m, mut v) = (self.take(p.param), self.take(p.m), self.take(p.v));
        ops::adamw::adamw_update(
            &mut w,
            self.f(p.grad),
            &mut m,
            &mut v,
            cfg,
            lr,
            step,
            grad_scale,
            decay,
        );
        self.put(p.param, w);
        self.put(p.m, m);
        self.put(p.v, v);
    }

    fn attention_fused_forward(
        &mut self,
        out: TensorId,
        lse: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        dropout: Option<DropoutKey>,
    ) {
        let s = shapes::attention_fused(
            &self.table,
            "attention_fused_forward",
            q,
            lse,
            &[("out", out), ("k", k), ("v", v)],
            &[],
        );
        let (mut o, mut l) = (self.take(out), self.take(lse));
        ops::attention_fused::fused_attention_forward(
            &mut o,
            &mut l,
            self.f(q),
            self.f(k),
            self.f(v),
            s,
            dropout,
        );
        self.put(out, o);
        self.put(lse, l);
    }

    fn attention_fused_backward(
        &mut self,
        dq: TensorId,
        dk: TensorId,
        dv: TensorId,
        dout: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        out: TensorId,
        lse: TensorId,
        delta: TensorId,
        dropout: Option<DropoutKey>,
    ) {
        let s = shapes::attention_fused(
            &self.table,
            "attention_fused_backward",
            q,
            lse,
            &[
                ("dq", dq),
                ("dk", dk),
                ("dv", dv),
                ("dout", dout),
                ("k", k),
                ("v", v),
                ("out", out),
            ],
            &[("delta", delta)],
        );
        let (mut gq, mut gk, mut gv) = (self.take(dq), self.take(dk), self.take(dv));
        ops::attention_fused::fused_attention_backward(
            &mut gq,
            &mut gk,
            &mut gv,
            self.f(dout),
            self.f(q),
            self.f(k),
            self.f(v),
            self.f(out),
            self.f(lse),
            s,
            dropout,
        );
        self.put(dq, gq);
        self.put(dk, gk);
        self.put(dv, gv);
    }

    fn attention_lse_check(
        &mut self,
        q: TensorId,
        k: TensorId,
        lse: TensorId,
        tol: f32,
    ) -> RowCheck {
        let s =
            shapes::attention_fused(&self.table, "attention_lse_check", q, lse, &[("k", k)], &[]);
        let (max_dev, bad_rows) =
            ops::attention_fused::lse_row_check(self.f(q), self.f(k), self.f(lse), s, tol);
        RowCheck {
            max_dev,
            bad_rows,
            rows: s.b * s.nh * s.t,
        }
    }

    fn run_step(&mut self, _info: &StepInfo, step: &mut dyn FnMut(&mut dyn Backend)) {
        step(self);
    }

    fn finish_step(
        &mut self,
        losses: TensorId,
        targets: TensorId,
        params: &[ParamIds],
        cfg: &AdamWConfig,
        clip: f32,
        info: &StepInfo,
    ) {
        let (sum, scored) = self.loss_sum(losses, targets);
        let grads: Vec<TensorId> = params.iter().map(|p| p.grad).collect();
        let grad_sq = self.sum_squares(&grads);
        if let Some(scale) = self.ledger.close(info.step, sum, scored, grad_sq, clip) {
            for &p in params {
                self.adamw_update(p, cfg, info.lr, info.step, scale);
            }
        }
    }

    fn take_step_records(&mut self) -> Vec<StepRecord> {
        self.ledger.records.drain(..).collect()
    }

    fn last_grad_sq(&mut self) -> Vec<f64> {
        self.ledger.grad_sq.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Category;

    fn table() -> (TensorTable, [TensorId; 4]) {
        let mut t = TensorTable::new();
        let inp = t.add("inp", Category::Activation, &[3, 37, 13]);
        let w = t.add_param("w", &[29, 13], true).param;
        let wrong = t.add_param("wrong", &[13, 29], true).param;
        let out = t.add("out", Category::Activation, &[3, 37, 29]);
        (t, [inp, w, wrong, out])
    }

    #[test]
    fn backend_ops_check_shapes_by_name() {
        let (t, [inp, w, _, out]) = table();
        let mut be = CpuBackend::new(t);
        be.matmul_forward(out, inp, w, None);
        let (t, [inp, _, wrong, out]) = table();
        let mut be = CpuBackend::new(t);
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            be.matmul_forward(out, inp, wrong, None)
        }))
        .unwrap_err();
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("shape mismatch in matmul_forward: inp (inp) expected last dim 29 (weight is [13, 29]), got [3, 37, 13]"), "{msg}");
    }

    #[test]
    fn attention_shapes_are_checked_against_each_other() {
        let mut t = TensorTable::new();
        let q = t.add("q", Category::Activation, &[2, 5, 6]);
        let k = t.add("k", Category::Activation, &[2, 5, 6]);
        let v = t.add("v", Category::Activation, &[2, 4, 6]);
        let p = t.add("p", Category::Activation, &[2, 3, 5, 5]);
        let o = t.add("o", Category::Activation, &[2, 5, 6]);
        let mut be = CpuBackend::new(t);
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            be.attention_forward(o, p, q, k, v, p, None)
        }))
        .unwrap_err();
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains(
                "shape mismatch in attention_forward: v (v) expected [2, 5, 6], got [2, 4, 6]"
            ),
            "{msg}"
        );
    }
}
