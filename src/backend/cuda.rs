//! The CUDA backend: every op of both models as handwritten kernels (kernels/*.cu), launched
//! through the launchers of `gpu::kernels` on any [`Device`]: the GPU ([`crate::gpu::CudaDevice`])
//! or, in tests, the emulator ([`crate::gpu::EmuDevice`]), so this host code is the same in both.
//!
//! Every buffer comes from the tensor table and is allocated once, in [`CudaBackend::new`]; the
//! backend adds its own small workspace to its copy of the table ("cuda.reduce", the partial sums
//! of the gradient norm and the attention row check's result), so the table's total is exactly what it allocates. Device memory is
//! also measured through the driver (free before and after) and reported beside it.
//!
//! Each op checks its tensors' shapes with the same checks as the CPU backend (`shapes.rs`)
//! before launching anything. A device error (a failed launch, a kernel fault surfacing at the
//! next copy) panics with the kernel's name and launch shape: the trait's ops cannot fail, and a
//! broken device state is not something a training loop can continue from.

use super::shapes;
use super::{Backend, RowCheck};
use crate::gpu::kernels::{self as k, SUM_SQUARES_PARTIALS};
use crate::gpu::{Device, DeviceExt, DevicePtr, DeviceSlice, GpuError};
use crate::ops::adamw::AdamWConfig;
use crate::philox::DropoutKey;
use crate::tensor::{Category, DType, ParamIds, TensorId, TensorTable};

/// How many tensors' sums of squares are reduced before one copy back to the host.
const REDUCE_BATCH: usize = 64;
/// u32 results of the attention row check.
const ROW_CHECK_RESULT: usize = 2;
/// Upper bound on the split-N partial sums of weight and bias gradients, in floats (128 MiB).
const MAX_SPLIT_WORKSPACE: usize = 32 << 20;

/// Floats of split-N workspace the weight and bias gradients of `table`'s linear layers can use:
/// what the launchers' split heuristics want for every 2-D parameter at the longest row count of
/// any activation, capped.
fn split_workspace_len(table: &TensorTable) -> usize {
    let n_max = table
        .iter()
        .filter(|(_, s)| s.category == Category::Activation && s.shape.len() >= 2)
        .map(|(_, s)| s.numel() / s.shape.last().copied().unwrap_or(1).max(1))
        .max()
        .unwrap_or(0);
    let want = table
        .iter()
        .filter(|(_, s)| s.category == Category::Parameter && s.shape.len() == 2)
        .map(|(_, s)| {
            let (oc, ic) = (s.shape[0], s.shape[1]);
            let w = k::matmul_backward_weight_workspace_len(
                n_max,
                ic,
                oc,
                k::matmul_backward_weight_splits(n_max, ic, oc),
            );
            let b = k::bias_backward_workspace_len(n_max, oc, k::bias_backward_splits(n_max, oc));
            w.max(b)
        })
        .max()
        .unwrap_or(0);
    want.min(MAX_SPLIT_WORKSPACE)
}

/// Device memory of a backend: what the table says and what the driver saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// The tensor table's total (every buffer, exactly as allocated).
    pub analytic_bytes: usize,
    /// Free device memory before the allocations minus free memory after them (the driver
    /// rounds allocations up to its own page sizes, so this is a little more than the table).
    pub measured_bytes: usize,
    /// The device's total memory.
    pub total_bytes: usize,
    /// Free device memory after the allocations.
    pub free_bytes: usize,
}

pub struct CudaBackend {
    dev: Box<dyn Device>,
    table: TensorTable,
    /// Device address of each tensor, by `TensorId` index (0 for a tensor with no elements).
    ptrs: Vec<DevicePtr>,
    partials: DeviceSlice<f64>,
    sums: DeviceSlice<f64>,
    /// attention_row_check's two results (largest deviation as f32 bits, rows over tolerance).
    row_check: DeviceSlice<u32>,
    /// Partial sums of the split-N weight and bias gradients (one buffer, reused in stream order).
    split_ws: DeviceSlice<f32>,
    memory: DeviceMemory,
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl CudaBackend {
    /// Allocates every tensor of `table` (plus the backend's workspace) on `dev`, zeroed.
    /// Out of device memory: the error says what the configuration needs and what to change.
    pub fn new(dev: Box<dyn Device>, mut table: TensorTable) -> anyhow::Result<Self> {
        // f64 partial sums and results of sum_squares, as f32 pairs (the table holds f32 and u32).
        let reduce = table.add(
            "cuda.reduce",
            Category::Workspace,
            &[2 * (SUM_SQUARES_PARTIALS + REDUCE_BATCH) + ROW_CHECK_RESULT],
        );
        let split_len = split_workspace_len(&table).max(1);
        let split = table.add("cuda.split_partials", Category::Workspace, &[split_len]);
        let analytic_bytes = table.total_bytes();
        let (free_before, total_bytes) = dev
            .mem_get_info()
            .map_err(|e| anyhow::anyhow!("{}: {e}", dev.name()))?;
        let mut be = CudaBackend {
            dev,
            table,
            ptrs: Vec::new(),
            partials: DeviceSlice::new(0, 0),
            sums: DeviceSlice::new(0, 0),
            row_check: DeviceSlice::new(0, 0),
            split_ws: DeviceSlice::new(0, 0),
            memory: DeviceMemory {
                analytic_bytes,
                measured_bytes: 0,
                total_bytes,
                free_bytes: free_before,
            },
        };
        let sizes: Vec<usize> = be.table.iter().map(|(_, s)| s.bytes()).collect();
        for bytes in sizes {
            if bytes == 0 {
                be.ptrs.push(0);
                continue;
            }
            match be.dev.alloc(bytes) {
                Ok(p) => be.ptrs.push(p),
                Err(GpuError::OutOfMemory { .. }) => {
                    let by_cat: Vec<String> = be
                        .table
                        .bytes_by_category()
                        .iter()
                        .map(|(c, b)| format!("{} {}", c.label(), mib(*b)))
                        .collect();
                    anyhow::bail!(
                        "out of device memory on {}: this configuration needs {} ({}) and the GPU had {} free of {}; \
                         try a smaller --batch or --seq-len (attention memory grows with batch · heads · seq_len²)",
                        be.dev.name(),
                        mib(analytic_bytes),
                        by_cat.join(", "),
                        mib(free_before),
                        mib(total_bytes)
                    );
                }
                Err(e) => anyhow::bail!("allocating device memory on {}: {e}", be.dev.name()),
            }
            let p = *be.ptrs.last().unwrap();
            be.dev
                .memset_d8(p, 0, bytes)
                .map_err(|e| anyhow::anyhow!("zeroing device memory: {e}"))?;
        }
        let r = be.ptrs[reduce.index()];
        be.partials = DeviceSlice::new(r, SUM_SQUARES_PARTIALS);
        be.sums = DeviceSlice::new(r + (SUM_SQUARES_PARTIALS * 8) as u64, REDUCE_BATCH);
        be.row_check = DeviceSlice::new(
            r + ((SUM_SQUARES_PARTIALS + REDUCE_BATCH) * 8) as u64,
            ROW_CHECK_RESULT,
        );
        be.split_ws = DeviceSlice::new(be.ptrs[split.index()], split_len);
        let (free_after, _) = be
            .dev
            .mem_get_info()
            .map_err(|e| anyhow::anyhow!("{}: {e}", be.dev.name()))?;
        be.memory.free_bytes = free_after;
        be.memory.measured_bytes = free_before.saturating_sub(free_after);
        Ok(be)
    }

    /// The device this backend runs on.
    pub fn device(&self) -> &dyn Device {
        &*self.dev
    }

    /// Device memory: the table's figure and the driver's.
    pub fn memory(&self) -> DeviceMemory {
        self.memory
    }

    #[track_caller]
    fn ok<T>(&self, r: Result<T, GpuError>) -> T {
        r.unwrap_or_else(|e| panic!("CUDA backend on {}: {e}", self.dev.name()))
    }

    fn f(&self, id: TensorId) -> DeviceSlice<f32> {
        let s = self.table.spec(id);
        assert!(
            s.dtype == DType::F32,
            "{} is a u32 tensor, used as f32",
            s.name
        );
        DeviceSlice::new(self.ptrs[id.index()], s.numel())
    }

    fn u(&self, id: TensorId) -> DeviceSlice<u32> {
        let s = self.table.spec(id);
        assert!(
            s.dtype == DType::U32,
            "{} is an f32 tensor, used as u32",
            s.name
        );
        DeviceSlice::new(self.ptrs[id.index()], s.numel())
    }

    fn fo(&self, id: Option<TensorId>) -> Option<DeviceSlice<f32>> {
        id.map(|i| self.f(i))
    }

    /// dweight (OC, IC) += dout (N, OC)ᵀ · inp (N, IC), split over N as far as the workspace
    /// allows (the split count depends only on the shapes, so runs are reproducible).
    fn weight_grad(
        &self,
        dweight: DeviceSlice<f32>,
        dout: DeviceSlice<f32>,
        inp: DeviceSlice<f32>,
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        let fit = self.split_ws.len() / (oc * ic).max(1);
        let splits = k::matmul_backward_weight_splits(n, ic, oc).min(fit).max(1);
        let len = k::matmul_backward_weight_workspace_len(n, ic, oc, splits);
        let ws = (len > 0).then(|| self.split_ws.slice(0..len));
        self.ok(k::matmul_backward_weight_with_workspace(
            self.device(),
            dweight,
            dout,
            inp,
            ws,
            splits,
            n,
            ic,
            oc,
        ));
    }

    /// dbias (OC) += Σ_n dout (N, OC), split over N as far as the workspace allows.
    fn bias_grad(&self, dbias: DeviceSlice<f32>, dout: DeviceSlice<f32>, n: usize, oc: usize) {
        let fit = self.split_ws.len() / oc.max(1);
        let splits = k::bias_backward_splits(n, oc).min(fit).max(1);
        let len = k::bias_backward_workspace_len(n, oc, splits);
        let ws = (len > 0).then(|| self.split_ws.slice(0..len));
        self.ok(k::bias_backward_with_workspace(
            self.device(),
            dbias,
            dout,
            ws,
            splits,
            n,
            oc,
        ));
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        for &p in &self.ptrs {
            if p != 0 {
                let _ = self.dev.free(p);
            }
        }
    }
}

/// Rows `t0 .. t0 + n` of a (T, rest...) tensor of row length `row`.
fn rows(s: DeviceSlice<f32>, t0: usize, n: usize, row: usize) -> DeviceSlice<f32> {
    s.slice(t0 * row..(t0 + n) * row)
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn table(&self) -> &TensorTable {
        &self.table
    }

    fn describe(&self) -> String {
        format!("cuda: {}", self.dev.name())
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        Some(self.memory)
    }

    fn write(&mut self, id: TensorId, data: &[f32]) {
        let d = self.f(id);
        assert!(
            data.len() == d.len(),
            "write: {} has {} elements, got {}",
            self.table.name(id),
            d.len(),
            data.len()
        );
        self.ok(self.device().write(d, data));
    }

    fn read(&self, id: TensorId) -> Vec<f32> {
        self.ok(self.device().download(self.f(id)))
    }

    fn write_u32(&mut self, id: TensorId, data: &[u32]) {
        let d = self.u(id);
        assert!(
            data.len() == d.len(),
            "write_u32: {} has {} elements, got {}",
            self.table.name(id),
            d.len(),
            data.len()
        );
        self.ok(self.device().write(d, data));
    }

    fn read_u32(&self, id: TensorId) -> Vec<u32> {
        self.ok(self.device().download(self.u(id)))
    }

    fn zero(&mut self, id: TensorId) {
        let bytes = self.table.spec(id).bytes();
        self.ok(self.device().memset_d8(self.ptrs[id.index()], 0, bytes));
    }

    fn embedding_forward(
        &mut self,
        out: TensorId,
        tokens: TensorId,
        wte: TensorId,
        wpe: Option<TensorId>,
    ) {
        let (b, t, c, v) = shapes::embedding_forward(&self.table, out, tokens, wte, wpe);
        let r = k::embedding_forward(
            self.device(),
            self.f(out),
            self.u(tokens),
            self.f(wte),
            self.fo(wpe),
            b,
            t,
            c,
            v,
        );
        self.ok(r);
    }

    fn embedding_backward(
        &mut self,
        dwte: TensorId,
        dwpe: Option<TensorId>,
        dout: TensorId,
        tokens: TensorId,
    ) {
        let (b, t, c, v) = shapes::embedding_backward(&self.table, dwte, dwpe, dout, tokens);
        let r = k::embedding_backward(
            self.device(),
            self.f(dwte),
            self.fo(dwpe),
            self.f(dout),
            self.u(tokens),
            b,
            t,
            c,
            v,
        );
        self.ok(r);
    }

    fn matmul_forward(
        &mut self,
        out: TensorId,
        inp: TensorId,
        weight: TensorId,
        bias: Option<TensorId>,
    ) {
        let (n, ic, oc) = shapes::linear(&self.table, "matmul_forward", out, inp, weight, bias);
        let r = k::matmul_forward(
            self.device(),
            self.f(out),
            self.f(inp),
            self.f(weight),
            self.fo(bias),
            n,
            ic,
            oc,
        );
        self.ok(r);
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
        let d = self.device();
        if let Some(di) = dinp {
            self.ok(k::matmul_backward_input(
                d,
                self.f(di),
                self.f(dout),
                self.f(weight),
                n,
                ic,
                oc,
            ));
        }
        self.weight_grad(self.f(dweight), self.f(dout), self.f(inp), n, ic, oc);
        if let Some(db) = dbias {
            self.bias_grad(self.f(db), self.f(dout), n, oc);
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
        let r = k::layernorm_forward(
            self.device(),
            self.f(out),
            self.f(mean),
            self.f(rstd),
            self.f(inp),
            self.f(weight),
            self.f(bias),
            n,
            c,
        );
        self.ok(r);
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
        let r = k::layernorm_backward(
            self.device(),
            self.f(dinp),
            self.f(dweight),
            self.f(dbias),
            self.f(dout),
            self.f(inp),
            self.f(weight),
            self.f(mean),
            self.f(rstd),
            n,
            c,
        );
        self.ok(r);
    }

    fn gelu_forward(&mut self, out: TensorId, inp: TensorId) {
        shapes::same(&self.table, "gelu_forward", inp, &[("out", out)]);
        let r = k::gelu_forward(self.device(), self.f(out), self.f(inp));
        self.ok(r);
    }

    fn gelu_backward(&mut self, dinp: TensorId, inp: TensorId, dout: TensorId) {
        shapes::same(
            &self.table,
            "gelu_backward",
            inp,
            &[("dinp", dinp), ("dout", dout)],
        );
        let r = k::gelu_backward(self.device(), self.f(dinp), self.f(inp), self.f(dout));
        self.ok(r);
    }

    fn add(&mut self, out: TensorId, a: TensorId, b: TensorId) {
        shapes::same(&self.table, "add", out, &[("a", a), ("b", b)]);
        let r = k::add(self.device(), self.f(out), self.f(a), self.f(b));
        self.ok(r);
    }

    fn accumulate(&mut self, dst: TensorId, src: TensorId) {
        shapes::same(&self.table, "accumulate", dst, &[("src", src)]);
        let r = k::accumulate(self.device(), self.f(dst), self.f(src));
        self.ok(r);
    }

    fn attention_forward(
        &mut self,
        out: TensorId,
        probs: TensorId,
        q: TensorId,
        kk: TensorId,
        v: TensorId,
        scratch: TensorId,
        dropout: Option<DropoutKey>,
    ) {
        let s = shapes::attention_forward(&self.table, out, probs, q, kk, v, scratch);
        let dropout = dropout.filter(|d| d.p > 0.0);
        let (r, t) = (s.b * s.nh, s.t);
        let d = self.device();
        let p = self.f(probs);
        // scores into probs, softmax in place, dropped-out weights into the scratch
        self.ok(k::attention_scores_forward(d, p, self.f(q), self.f(kk), s));
        let weights = dropout.map(|_| self.f(scratch));
        self.ok(k::causal_softmax_dropout_forward(
            d, p, weights, p, r, t, dropout,
        ));
        self.ok(k::attention_values_forward(
            d,
            self.f(out),
            weights.unwrap_or(p),
            self.f(v),
            s,
        ));
    }

    fn attention_backward(
        &mut self,
        dq: TensorId,
        dk: TensorId,
        dv: TensorId,
        dout: TensorId,
        q: TensorId,
        kk: TensorId,
        v: TensorId,
        probs: TensorId,
        scratch: TensorId,
        dropout: Option<DropoutKey>,
    ) {
        let s = shapes::attention_backward(&self.table, dq, dk, dv, dout, q, kk, v, probs, scratch);
        let dropout = dropout.filter(|d| d.p > 0.0);
        let (r, t) = (s.b * s.nh, s.t);
        let d = self.device();
        let (p, w) = (self.f(probs), self.f(scratch));
        // With dropout the weights are regenerated into the scratch, which then receives their
        // gradient: dv is computed from them before the score gradient overwrites them.
        let weights = match dropout {
            Some(key) => {
                self.ok(k::attention_dropout_weights(d, w, p, r, t, key));
                w
            }
            None => p,
        };
        self.ok(k::attention_values_backward(
            d,
            self.f(dv),
            w,
            self.f(dout),
            weights,
            self.f(v),
            s,
        ));
        self.ok(k::causal_softmax_dropout_backward(
            d, w, w, p, r, t, dropout,
        ));
        self.ok(k::attention_scores_backward(
            d,
            self.f(dq),
            self.f(dk),
            w,
            self.f(q),
            self.f(kk),
            s,
        ));
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
        if s.t == 0 || s.b == 0 {
            return;
        }
        let d = self.device();
        let (hh, cc, gg, whh) = (self.f(h), self.f(c), self.f(gates), self.f(w_hh));
        let (bh, b4) = (s.b * s.h, s.b * 4 * s.h);
        // input contributions of every timestep at once, then the recurrence step by step
        self.ok(k::matmul_forward(
            d,
            gg,
            self.f(x),
            self.f(w_ih),
            Some(self.f(bias)),
            s.t * s.b,
            s.e,
            4 * s.h,
        ));
        for t in 0..s.t {
            let g_t = rows(gg, t, 1, b4);
            if t > 0 {
                self.ok(k::matmul_forward_accumulate(
                    d,
                    g_t,
                    rows(hh, t - 1, 1, bh),
                    whh,
                    s.b,
                    s.h,
                    4 * s.h,
                ));
            }
            let c_prev = (t > 0).then(|| rows(cc, t - 1, 1, bh));
            self.ok(k::lstm_cell_forward(
                d,
                g_t,
                c_prev,
                rows(cc, t, 1, bh),
                rows(hh, t, 1, bh),
                s.b,
                s.h,
            ));
        }
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
        if s.t == 0 || s.b == 0 {
            return;
        }
        let d = self.device();
        let (hh, cc, gg, dg, ddh) = (
            self.f(h),
            self.f(c),
            self.f(gates),
            self.f(dgates),
            self.f(dh),
        );
        let (bh, b4, h4) = (s.b * s.h, s.b * 4 * s.h, 4 * s.h);
        // The gradient reaching c of step t - 1 travels in columns 0..H of dgates[t - 1] (not
        // yet written) until step t - 1's cell reads it there and overwrites it.
        let dc_view = |t: usize| dg.slice(t * b4..t * b4 + (s.b - 1) * h4 + s.h);
        for t in (0..s.t).rev() {
            let dg_t = rows(dg, t, 1, b4);
            self.ok(k::lstm_cell_backward(
                d,
                dg_t,
                (t > 0).then(|| dc_view(t - 1)),
                (t + 1 < s.t).then(|| dc_view(t)),
                h4,
                rows(ddh, t, 1, bh),
                rows(gg, t, 1, b4),
                rows(cc, t, 1, bh),
                (t > 0).then(|| rows(cc, t - 1, 1, bh)),
                s.b,
                s.h,
            ));
            if t > 0 {
                // dh[t-1] += dgates[t] · W_hh
                self.ok(k::matmul_backward_input(
                    d,
                    rows(ddh, t - 1, 1, bh),
                    dg_t,
                    self.f(w_hh),
                    s.b,
                    s.h,
                    h4,
                ));
            }
        }
        let n = s.t * s.b;
        self.weight_grad(self.f(dw_ih), dg, self.f(x), n, s.e, h4);
        if s.t > 1 {
            self.weight_grad(
                self.f(dw_hh),
                rows(dg, 1, s.t - 1, b4),
                rows(hh, 0, s.t - 1, bh),
                (s.t - 1) * s.b,
                s.h,
                h4,
            );
        }
        self.bias_grad(self.f(dbias), dg, n, h4);
        if let Some(dxx) = dx {
            self.ok(k::matmul_backward_input(
                d,
                self.f(dxx),
                dg,
                self.f(w_ih),
                n,
                s.e,
                h4,
            ));
        }
    }

    fn cross_entropy_forward(&mut self, losses: TensorId, logits: TensorId, targets: TensorId) {
        let (n, v) = shapes::cross_entropy_forward(&self.table, losses, logits, targets);
        let r = k::cross_entropy_forward(
            self.device(),
            self.f(losses),
            self.f(logits),
            self.u(targets),
            n,
            v,
        );
        self.ok(r);
    }

    fn cross_entropy_backward(
        &mut self,
        dlogits: TensorId,
        logits: TensorId,
        targets: TensorId,
        scale: f32,
    ) {
        let (n, v) = shapes::cross_entropy_backward(&self.table, dlogits, logits, targets);
        let r = k::cross_entropy_backward(
            self.device(),
            self.f(dlogits),
            self.f(logits),
            self.u(targets),
            scale,
            n,
            v,
        );
        self.ok(r);
    }

    fn loss_sum(&self, losses: TensorId, targets: TensorId) -> (f64, usize) {
        // The per-row losses come back to the host and are summed there in index order, in f64,
        // exactly as the CPU backend sums them.
        crate::ops::loss::loss_sum(&self.read(losses), &self.read_u32(targets))
    }

    fn attention_row_check(&mut self, probs: TensorId, tol: f32) -> RowCheck {
        let (rows, t) = shapes::attention_row_check(&self.table, probs);
        let r = k::attention_row_sum_check(
            self.device(),
            self.row_check,
            self.f(probs),
            rows / t.max(1),
            t,
            tol,
        );
        self.ok(r);
        let (max_dev, bad_rows) = self.ok(k::read_row_sum_check(self.device(), self.row_check));
        RowCheck {
            max_dev,
            bad_rows: bad_rows as usize,
            rows,
        }
    }

    fn sum_squares(&mut self, ids: &[TensorId]) -> Vec<f64> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(REDUCE_BATCH) {
            for (i, &id) in chunk.iter().enumerate() {
                let r = k::sum_squares(
                    self.device(),
                    self.sums.slice(i..i + 1),
                    self.partials,
                    self.f(id),
                );
                self.ok(r);
            }
            let sums = self.ok(self.device().download(self.sums.slice(0..chunk.len())));
            out.extend(sums);
        }
        out
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
        let r = k::adamw_update(
            self.device(),
            self.f(p.param),
            self.f(p.grad),
            self.f(p.m),
            self.f(p.v),
            cfg,
            lr,
            step,
            grad_scale,
            decay,
        );
        self.ok(r);
    }

    fn range_push(&mut self, name: &str) {
        self.dev.range_push(name);
    }

    fn range_pop(&mut self) {
        self.dev.range_pop();
    }

    fn profiler_capture(&mut self, on: bool) -> anyhow::Result<()> {
        self.dev
            .profiler_capture(on)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.dev.name()))
    }

    fn synchronize(&mut self) {
        let r = self.dev.synchronize();
        self.ok(r);
    }
}
