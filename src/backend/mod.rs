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
pub mod parity;
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
