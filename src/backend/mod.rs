//! The `Backend` trait: every op the models need, over tensors of a `TensorTable`.
//!
//! Model code is written once against this trait; the CPU reference (`cpu.rs`) implements it
//! today and the CUDA backend will implement it with handwritten kernels. Tensors are named by
//! `TensorId`; the backend owns the buffers (allocated once from the table). Each op checks the
//! shapes of all its tensors against each other before it runs (`shapes.rs`, shared by every
//! backend) and panics with the op's name, the argument, the expected and the actual shape.
//!
//! Semantics shared by all backends: forward ops overwrite their outputs; backward ops ACCUMULATE
//! into their gradient outputs (the caller zeroes gradients first).

pub mod cpu;
pub mod cuda;
pub mod shapes;

use crate::ops::adamw::AdamWConfig;
use crate::philox::DropoutKey;
use crate::tensor::{Category, ParamIds, TensorId, TensorTable};

pub trait Backend {
    /// "cpu" or "cuda".
    fn name(&self) -> &'static str;
    fn table(&self) -> &TensorTable;
    /// What it runs on, for people ("cpu (8 threads)", "NVIDIA H100 80GB HBM3 (sm_90)").
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// Device memory, measured and analytic (None on the CPU).
    fn device_memory(&self) -> Option<cuda::DeviceMemory> {
        None
    }

    fn write(&mut self, id: TensorId, data: &[f32]);
    fn read(&self, id: TensorId) -> Vec<f32>;
    fn write_u32(&mut self, id: TensorId, data: &[u32]);
    fn read_u32(&self, id: TensorId) -> Vec<u32>;
    fn zero(&mut self, id: TensorId);
    /// Zeroes every tensor of a category (gradients and workspace before a backward pass).
    fn zero_category(&mut self, category: Category) {
        let ids: Vec<TensorId> = self
            .table()
            .iter()
            .filter(|(_, s)| s.category == category)
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            self.zero(id);
        }
    }

    /// out (B,T,C) = wte[tokens] (+ wpe[t]). tokens (B,T) u32, wte (V,C), wpe (≥T, C).
    fn embedding_forward(
        &mut self,
        out: TensorId,
        tokens: TensorId,
        wte: TensorId,
        wpe: Option<TensorId>,
    );
    fn embedding_backward(
        &mut self,
        dwte: TensorId,
        dwpe: Option<TensorId>,
        dout: TensorId,
        tokens: TensorId,
    );

    /// out (…, OC) = inp (…, IC) · weight (OC, IC)ᵀ + bias (OC).
    fn matmul_forward(
        &mut self,
        out: TensorId,
        inp: TensorId,
        weight: TensorId,
        bias: Option<TensorId>,
    );
    fn matmul_backward(
        &mut self,
        dinp: Option<TensorId>,
        dweight: TensorId,
        dbias: Option<TensorId>,
        dout: TensorId,
        inp: TensorId,
        weight: TensorId,
    );

    /// out (…, C) = layernorm(inp) · weight + bias; saves mean (…) and rstd (…).
    fn layernorm_forward(
        &mut self,
        out: TensorId,
        mean: TensorId,
        rstd: TensorId,
        inp: TensorId,
        weight: TensorId,
        bias: TensorId,
    );
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
    );

    fn gelu_forward(&mut self, out: TensorId, inp: TensorId);
    fn gelu_backward(&mut self, dinp: TensorId, inp: TensorId, dout: TensorId);

    /// out = a + b (residual).
    fn add(&mut self, out: TensorId, a: TensorId, b: TensorId);
    /// dst += src.
    fn accumulate(&mut self, dst: TensorId, src: TensorId);

    /// Causal scaled-dot-product attention: q, k, v, out (B,T,C); probs (B,NH,T,T) saved
    /// (softmax before dropout); dropout after softmax when `dropout` is given. `scratch`
    /// (B,NH,T,T) is workspace shared by all layers (the CUDA backend keeps the dropped-out
    /// weights and the score gradients there); its contents afterwards are unspecified.
    fn attention_forward(
        &mut self,
        out: TensorId,
        probs: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        scratch: TensorId,
        dropout: Option<DropoutKey>,
    );
    /// `scratch` as in `attention_forward`.
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
    );

    /// Causal attention without a T×T tensor (flash-style): out (B,T,C) and each row's
    /// logsumexp lse (B,NH,T) saved; dropout after softmax as in `attention_forward`, with the
    /// same mask bits. NH comes from lse's shape.
    fn attention_fused_forward(
        &mut self,
        out: TensorId,
        lse: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        dropout: Option<DropoutKey>,
    );
    /// dq, dk, dv (B,T,C) += the gradients of `attention_fused_forward`, from its output `out`
    /// and `lse`; `delta` (B,NH,T) is workspace (the rows' dO · O).
    #[allow(clippy::too_many_arguments)]
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
    );
    /// The fused path's row check: |Σ_j exp(s_ij − lse_i) − 1| recomputed for every row from q, k
    /// and the saved lse (on the GPU a kernel: only the two results cross to the host).
    fn attention_lse_check(
        &mut self,
        q: TensorId,
        k: TensorId,
        lse: TensorId,
        tol: f32,
    ) -> RowCheck;

    /// One LSTM layer over a time-major sequence: x (T,B,E) → h, c (T,B,H), gates (T,B,4H).
    fn lstm_forward(
        &mut self,
        h: TensorId,
        c: TensorId,
        gates: TensorId,
        x: TensorId,
        w_ih: TensorId,
        w_hh: TensorId,
        bias: TensorId,
    );
    /// Backward through time; `dh` (T,B,H) is consumed, `dgates` (T,B,4H) is scratch.
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
    );

    /// losses (…) = cross-entropy of softmax(logits (…, V)) at targets (…) (IGNORE → 0).
    fn cross_entropy_forward(&mut self, losses: TensorId, logits: TensorId, targets: TensorId);
    /// dlogits += scale · (softmax − onehot), IGNORE rows untouched.
    fn cross_entropy_backward(
        &mut self,
        dlogits: TensorId,
        logits: TensorId,
        targets: TensorId,
        scale: f32,
    );
    /// (Σ loss over counted targets, count), summed in f64 on the host in index order.
    fn loss_sum(&self, losses: TensorId, targets: TensorId) -> (f64, usize);

    // ---- fused ops: one launch on the GPU where the defaults below take several. Each default is
    // the unfused sequence, which the CPU reference runs as is.

    /// out_j = inp · weight_jᵀ + bias_j for the three projections q, k, v of one input.
    fn qkv_forward(
        &mut self,
        out: [TensorId; 3],
        inp: TensorId,
        weight: [TensorId; 3],
        bias: [Option<TensorId>; 3],
    ) {
        for j in 0..3 {
            self.matmul_forward(out[j], inp, weight[j], bias[j]);
        }
    }
    /// The backward of [`Backend::qkv_forward`]: dinp += Σ_j dout_j · weight_j and each weight's
    /// and bias's gradient.
    fn qkv_backward(
        &mut self,
        dinp: TensorId,
        dweight: [TensorId; 3],
        dbias: [Option<TensorId>; 3],
        dout: [TensorId; 3],
        inp: TensorId,
        weight: [TensorId; 3],
    ) {
        for j in 0..3 {
            self.matmul_backward(Some(dinp), dweight[j], dbias[j], dout[j], inp, weight[j]);
        }
    }
    /// pre = inp · weightᵀ + bias, out = gelu(pre).
    fn linear_gelu_forward(
        &mut self,
        pre: TensorId,
        out: TensorId,
        inp: TensorId,
        weight: TensorId,
        bias: Option<TensorId>,
    ) {
        self.matmul_forward(pre, inp, weight, bias);
        self.gelu_forward(out, pre);
    }
    /// The backward of a linear layer whose input is gelu(pre): dpre += gelu'(pre) ⊙ (dout ·
    /// weight), plus the weight's and bias's gradients. `dact` (the shape of inp) is scratch for
    /// the gradient of gelu's output, which the GPU never stores.
    #[allow(clippy::too_many_arguments)]
    fn linear_gelu_backward(
        &mut self,
        dpre: TensorId,
        dweight: TensorId,
        dbias: Option<TensorId>,
        dout: TensorId,
        inp: TensorId,
        weight: TensorId,
        pre: TensorId,
        dact: TensorId,
    ) {
        self.matmul_backward(Some(dact), dweight, dbias, dout, inp, weight);
        self.gelu_backward(dpre, pre, dact);
    }
    /// res = a + b, then out = layernorm(res) (mean, rstd saved).
    #[allow(clippy::too_many_arguments)]
    fn add_layernorm_forward(
        &mut self,
        res: TensorId,
        out: TensorId,
        mean: TensorId,
        rstd: TensorId,
        a: TensorId,
        b: TensorId,
        weight: TensorId,
        bias: TensorId,
    ) {
        self.add(res, a, b);
        self.layernorm_forward(out, mean, rstd, res, weight, bias);
    }
    /// [`Backend::layernorm_backward`], then dinp += dresidual (the gradient that reaches the
    /// same tensor through the residual connection).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward_residual(
        &mut self,
        dinp: TensorId,
        dweight: TensorId,
        dbias: TensorId,
        dout: TensorId,
        inp: TensorId,
        weight: TensorId,
        mean: TensorId,
        rstd: TensorId,
        dresidual: TensorId,
    ) {
        self.layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd);
        self.accumulate(dinp, dresidual);
    }
    /// The training step's loss: losses as [`Backend::cross_entropy_forward`], and dlogits
    /// (zero before: the step's gradients and workspace are cleared first) += scale · (softmax −
    /// onehot), as [`Backend::cross_entropy_backward`].
    fn cross_entropy_forward_backward(
        &mut self,
        losses: TensorId,
        dlogits: TensorId,
        logits: TensorId,
        targets: TensorId,
        scale: f32,
    ) {
        self.cross_entropy_forward(losses, logits, targets);
        self.cross_entropy_backward(dlogits, logits, targets, scale);
    }

    // ---- the training step as a unit (src/train.rs drives it): on the GPU nothing in it waits
    // for the host, so it can be captured into a CUDA graph and replayed.

    /// Uploads a batch's input tensors (token ids, targets); on the GPU one async copy when the
    /// tensors are adjacent in device memory.
    fn write_inputs(&mut self, inputs: &[(TensorId, &[u32])]) {
        for (id, data) in inputs {
            self.write_u32(*id, data);
        }
    }
    /// Zeroes every gradient and every workspace tensor before a training step (one memset on the
    /// GPU, where they are adjacent).
    fn clear_step_buffers(&mut self) {
        self.zero_category(Category::Gradient);
        self.zero_category(Category::Workspace);
    }
    /// Runs one training step: `step` issues its ops (clearing, forward, backward,
    /// [`Backend::finish_step`]) on the backend it is given. The CUDA backend writes `info` to
    /// device memory first and, with CUDA graphs on, records the ops once and replays them.
    fn run_step(&mut self, info: &StepInfo, step: &mut dyn FnMut(&mut dyn Backend));
    /// Closes a training step: the loss sum of `losses` over the scored `targets`, the global
    /// gradient norm of `params` (before clipping), clipping to `clip`, and AdamW on every
    /// parameter, unless the loss or the norm is not finite; that halts the run: no update from
    /// then on (the host stops at the first halted record it reads). The results stay on the
    /// backend until [`Backend::take_step_records`].
    #[allow(clippy::too_many_arguments)]
    fn finish_step(
        &mut self,
        losses: TensorId,
        targets: TensorId,
        params: &[ParamIds],
        cfg: &AdamWConfig,
        clip: f32,
        info: &StepInfo,
    );
    /// The records of the steps finished since the last call, in step order (on the GPU one copy
    /// back, which waits for them). At most [`STEP_RECORDS`] are kept.
    fn take_step_records(&mut self) -> Vec<StepRecord>;
    /// Σ g² of each parameter's gradient (in `params` order of the last `finish_step`), before
    /// clipping, of the last finished step; from the first non-finite step on, of that step.
    fn last_grad_sq(&mut self) -> Vec<f64>;
    /// The device's operation counts (launches, memsets, copies, syncs), where there is one.
    fn device_counts(&self) -> Option<crate::gpu::DeviceCounts> {
        None
    }
    /// CUDA graphs for the training step on (the default) or off; no effect without a GPU.
    fn set_cuda_graph(&mut self, _on: bool) {}
    /// Whether LSTM layers may run their recurrence on the persistent (one launch per layer and
    /// direction) kernels, where the device holds them (the default), or always per timestep.
    /// Nothing on the CPU.
    fn set_lstm_persistent(&mut self, _on: bool) {}
    /// The arithmetic of the linear layers' GEMMs: fp32 (the default, the only one the CPU
    /// has), or the tensor cores' tf32 / bf16 on a GPU. Err (with what to do) where the backend
    /// cannot.
    fn set_precision(&mut self, p: crate::gpu::kernels::Precision) -> Result<(), String> {
        match p {
            crate::gpu::kernels::Precision::Fp32 => Ok(()),
            other => Err(format!(
                "--precision {other} runs the matrix products on a GPU's tensor cores; the CPU backend computes in \
                 fp32: use --device cuda (or --device emu to emulate the kernels), or --precision fp32"
            )),
        }
    }
    /// The precision set by [`Backend::set_precision`].
    fn precision(&self) -> crate::gpu::kernels::Precision {
        crate::gpu::kernels::Precision::Fp32
    }
    /// Kernel launches (eager or recorded) of the last LSTM layer forward and backward, where a
    /// device counts them; None without LSTM layers or a device.
    fn lstm_layer_launches(&self) -> Option<(u64, u64)> {
        None
    }
    /// How the training step runs when that is worth a note (e.g. CUDA graphs were asked for
    /// and capture failed); None when there is nothing to say.
    fn step_note(&self) -> Option<String> {
        None
    }

    /// Row sums of attention probabilities (B,NH,T,T): the largest |Σ_j p − 1| over all rows
    /// and how many rows exceed `tol` (a NaN row counts). On the GPU a reduction kernel: only
    /// the two results cross to the host.
    fn attention_row_check(&mut self, probs: TensorId, tol: f32) -> RowCheck;

    /// Σ x² of each tensor, in f64, deterministic.
    fn sum_squares(&mut self, ids: &[TensorId]) -> Vec<f64>;
    /// One AdamW step of one parameter (its gradient first multiplied by `grad_scale`).
    fn adamw_update(&mut self, p: ParamIds, cfg: &AdamWConfig, lr: f32, step: u64, grad_scale: f32);

    // Profiling hooks: NVTX ranges and the profiler's capture window on the CUDA backend, no-ops
    // elsewhere. Ranges nest; each push is closed by one pop.
    /// Opens a named range on the profiler's timeline.
    fn range_push(&mut self, _name: &str) {}
    /// Closes the innermost open range.
    fn range_pop(&mut self) {}
    /// Starts (`on`) or stops what `nsys --capture-range=cudaProfilerApi` / `ncu
    /// --profile-from-start off` record (cuProfilerStart / cuProfilerStop).
    fn profiler_capture(&mut self, _on: bool) -> anyhow::Result<()> {
        Ok(())
    }
    /// Waits until all queued device work has finished (for timing).
    fn synchronize(&mut self) {}
}

/// How many finished steps' records a backend keeps for [`Backend::take_step_records`].
pub const STEP_RECORDS: usize = 256;

/// What changes from one training step to the next. On the GPU these live in device memory and
/// the kernels read them there (written by one copy before each step), never as kernel
/// arguments, so a step captured into a CUDA graph replays correctly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    /// 1-based optimizer step (dropout masks, AdamW's bias correction).
    pub step: u64,
    pub lr: f32,
    /// 1 / scored targets of the batch.
    pub loss_scale: f32,
    /// The run's seed (dropout masks); a CUDA graph is recaptured if it changes.
    pub seed: u64,
}

/// One finished training step, as [`Backend::take_step_records`] returns it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepRecord {
    pub step: u64,
    /// Mean loss over the scored targets (Σ in f64).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// AdamW ran (false for a non-finite step and for every step after one).
    pub updated: bool,
}

/// The host side of [`Backend::finish_step`], for backends that run on the host: the halt
/// flag, the records since the last read and the last step's per-parameter sums.
#[derive(Debug, Default)]
pub struct StepLedger {
    pub halted: bool,
    pub records: std::collections::VecDeque<StepRecord>,
    pub grad_sq: Vec<f64>,
}

impl StepLedger {
    /// Records a step from its loss sum, scored count and per-parameter Σ g²; returns the clip
    /// factor to update with, or None when the step must not update (it is not finite, or the
    /// run halted before).
    pub fn close(
        &mut self,
        step: u64,
        loss_sum: f64,
        scored: usize,
        grad_sq: Vec<f64>,
        clip: f32,
    ) -> Option<f32> {
        let loss = loss_sum / scored.max(1) as f64;
        let norm = grad_sq.iter().sum::<f64>().sqrt();
        let finite = loss.is_finite() && norm.is_finite();
        if !self.halted {
            self.grad_sq = grad_sq;
        }
        self.halted |= !finite;
        let updated = !self.halted;
        self.records.push_back(StepRecord {
            step,
            loss,
            grad_norm: norm,
            updated,
        });
        while self.records.len() > STEP_RECORDS {
            self.records.pop_front();
        }
        updated.then(|| crate::ops::adamw::clip_scale(norm, clip))
    }
}

/// What [`Backend::attention_row_check`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowCheck {
    /// Largest |Σ_j p − 1| over the rows (NaN if any row is NaN).
    pub max_dev: f32,
    /// Rows whose deviation exceeds the tolerance or is NaN.
    pub bad_rows: usize,
    /// Rows checked (B·NH·T).
    pub rows: usize,
}

impl RowCheck {
    /// The larger of two deviations, a NaN winning (a NaN row is the worst row).
    pub fn worst(a: f32, b: f32) -> f32 {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else {
            a.max(b)
        }
    }

    /// Two checks as one: the worst deviation, the bad and checked rows added.
    pub fn merge(self, o: RowCheck) -> RowCheck {
        RowCheck {
            max_dev: RowCheck::worst(self.max_dev, o.max_dev),
            bad_rows: self.bad_rows + o.bad_rows,
            rows: self.rows + o.rows,
        }
    }
}

/// Which backend to run on.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The GPU when one works, else the CPU (with a one-line note).
    Auto,
    Cpu,
    Cuda,
    /// The CUDA backend on the emulated device (kernels run on the CPU, slowly): for testing the
    /// CUDA host path end to end without a GPU.
    #[value(hide = true)]
    Emu,
}

/// Whether `device` will run the CUDA backend (for `auto`: whether a GPU works here).
pub fn uses_cuda(device: DeviceChoice) -> bool {
    match device {
        DeviceChoice::Cpu => false,
        DeviceChoice::Cuda | DeviceChoice::Emu => true,
        DeviceChoice::Auto => crate::gpu::CudaDevice::open().is_ok(),
    }
}

/// Builds the backend for a device choice and a tensor table. `--device cuda` without a usable
/// GPU is an error saying what is missing; `auto` then falls back to the CPU with a one-line note
/// (unless `quiet`).
pub fn create(
    device: DeviceChoice,
    table: TensorTable,
    quiet: bool,
) -> anyhow::Result<Box<dyn Backend>> {
    create_reserving(device, table, quiet, 0)
}

/// As [`create`], first checking that the host can hold what the backend allocates there (on the
/// CPU the whole table) plus `host_reserve` bytes more (train's checkpoint copies): a run that
/// does not fit is refused before any allocation (`crate::resources`).
pub fn create_reserving(
    device: DeviceChoice,
    table: TensorTable,
    quiet: bool,
    host_reserve: u128,
) -> anyhow::Result<Box<dyn Backend>> {
    use crate::gpu::{CudaDevice, EmuDevice};
    use crate::resources;
    let cpu = |table: TensorTable| -> anyhow::Result<Box<dyn Backend>> {
        resources::ensure_cpu_fits(&table, host_reserve)?;
        Ok(Box::new(cpu::CpuBackend::new(table)))
    };
    let on = |dev: Box<dyn crate::gpu::Device>,
              table: TensorTable|
     -> anyhow::Result<Box<dyn Backend>> {
        resources::ensure_host_reserve(host_reserve, &table)?;
        Ok(Box::new(cuda::CudaBackend::new(dev, table)?))
    };
    match device {
        DeviceChoice::Cpu => cpu(table),
        DeviceChoice::Cuda => {
            let dev = CudaDevice::open()
                .map_err(|e| anyhow::anyhow!("--device cuda: {e}; use --device cpu"))?;
            on(Box::new(dev), table)
        }
        // The emulator keeps "device" buffers in host memory.
        DeviceChoice::Emu => {
            resources::ensure_cpu_fits(&table, host_reserve)?;
            on(Box::<EmuDevice>::default(), table)
        }
        DeviceChoice::Auto => match CudaDevice::open() {
            Ok(dev) => on(Box::new(dev), table),
            Err(why) => {
                if !quiet {
                    eprintln!(
                        "note: running on the CPU ({} threads): {}",
                        rayon::current_num_threads(),
                        short_reason(&why)
                    );
                }
                cpu(table)
            }
        },
    }
}

/// Why there is no GPU, in a few words: the first thing a new user reads from `train`, so the
/// build details (`robo-poet kernels` prints them) are left out.
pub fn short_reason(why: &crate::gpu::cuda::Unavailable) -> String {
    use crate::gpu::cuda::Unavailable;
    match why {
        Unavailable::NoKernels(_) => {
            "no CUDA kernels in this build (see README, Developers; details: robo-poet kernels)"
                .to_string()
        }
        Unavailable::NoDriver => "no CUDA driver (libcuda.so not found)".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::gpu::cuda::Unavailable;

    #[test]
    fn the_cpu_fallback_note_is_short() {
        let long = format!("NVRTC was not found at build time: {}", "x".repeat(300));
        for why in [Unavailable::NoKernels(long), Unavailable::NoDriver] {
            let s = super::short_reason(&why);
            assert!(s.len() <= 90, "{} characters: {s}", s.len());
        }
        assert!(super::short_reason(&Unavailable::NoKernels(String::new()))
            .contains("README, Developers"));
    }
}
