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

mod arena;

use super::shapes;
use super::{Backend, RowCheck, StepInfo, StepRecord, STEP_RECORDS};
use crate::gpu::kernels::{
    self as k, ChunkTable, DeviceDropout, StepScalars, SUM_SQUARES_PARTIALS,
};
use crate::gpu::{Device, DeviceExt, DevicePtr, DeviceSlice, GpuError, GraphId};
use crate::ops::adamw::AdamWConfig;
use crate::ops::lstm::LstmShape;
use crate::philox::DropoutKey;
use crate::tensor::{Category, DType, ParamIds, TensorId, TensorTable};
use std::collections::VecDeque;

pub use arena::{Layout, ParamSlot, Region};

/// How many tensors' sums of squares are reduced before one copy back to the host.
const REDUCE_BATCH: usize = 64;
/// u32 results of the attention row check.
const ROW_CHECK_RESULT: usize = 2;
/// Upper bound on the split-N partial sums of weight and bias gradients, in floats (128 MiB).
const MAX_SPLIT_WORKSPACE: usize = 32 << 20;
/// Blocks a split-K recurrence product aims for: an H100's / H200's 132 SMs.
const SPLITK_MIN_BLOCKS: usize = 132;

/// The longest row count of any activation of `table` (B·T for the models).
fn longest_rows(table: &TensorTable) -> usize {
    table
        .iter()
        .filter(|(_, s)| s.category == Category::Activation && s.shape.len() >= 2)
        .map(|(_, s)| s.numel() / s.shape.last().copied().unwrap_or(1).max(1))
        .max()
        .unwrap_or(0)
}

/// Layers sharing one launch of `linear_backward_params`: the three projections q, k, v are the
/// square matrices of a model (a GPT's MLP and the vocabulary head are not square).
fn fused_layers(oc: usize, ic: usize) -> usize {
    if oc == ic {
        3
    } else {
        1
    }
}

/// Floats of split-N workspace and last-block counters the weight and bias gradients of
/// `table`'s linear layers can use: what `linear_backward_params` wants for every 2-D parameter
/// at the longest row count of any activation (the workspace capped).
fn split_workspace_len(table: &TensorTable) -> (usize, usize) {
    let n_max = longest_rows(table);
    let (mut floats, mut counters) = (0usize, 0usize);
    for (_, s) in table.iter() {
        if s.category != Category::Parameter || s.shape.len() != 2 {
            continue;
        }
        let (oc, ic) = (s.shape[0], s.shape[1]);
        let count = fused_layers(oc, ic);
        let splits = k::linear_backward_params_splits(n_max, ic, oc, count);
        let (f, c) = k::linear_backward_params_workspace(n_max, ic, oc, count, splits);
        floats = floats.max(f);
        counters = counters
            .max(c)
            .max(count * oc.div_ceil(64) * ic.div_ceil(64));
    }
    // the LSTM's per-timestep recurrence products, split over K: h (T, B, H) gives B and H
    for (_, s) in table.iter() {
        if is_lstm_hidden(s) {
            let (b, h) = (s.shape[1], s.shape[2]);
            for (m, nc, kk) in [(b, 4 * h, h), (b, h, 4 * h)] {
                let splits = k::splitk_splits(m, nc, kk, SPLITK_MIN_BLOCKS);
                let (f, c) = k::splitk_workspace(m, nc, splits);
                floats = floats.max(f);
                counters = counters.max(c);
            }
        }
    }
    (floats.min(MAX_SPLIT_WORKSPACE), counters)
}

/// Whether `s` is an LSTM layer's hidden states h (T, B, H).
fn is_lstm_hidden(s: &crate::tensor::TensorSpec) -> bool {
    s.category == Category::Activation
        && s.shape.len() == 3
        && s.name.starts_with("lstm.")
        && s.name.ends_with(".h")
}

/// f64 partials and counters of the layernorm backward at `table`'s shapes (its 1-D parameters'
/// widths at the longest row count).
fn layernorm_workspace_len(table: &TensorTable) -> (usize, usize) {
    let n_max = longest_rows(table);
    let (mut f, mut c) = (0usize, 0usize);
    for (_, s) in table.iter() {
        if s.category != Category::Parameter || s.shape.len() != 1 {
            continue;
        }
        let w = s.shape[0];
        let (pf, pc) = k::layernorm_backward_workspace(w, k::layernorm_backward_splits(n_max, w));
        f = f.max(pf);
        c = c.max(pc).max(w.div_ceil(32));
    }
    (f, c)
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

/// The device state of the training step (kernels/step.cuh).
struct StepBuffers {
    scalars: DeviceSlice<u8>,
    state: DeviceSlice<u8>,
    ring: DeviceSlice<u8>,
    tensor_sq: DeviceSlice<f64>,
    chunk_partials: DeviceSlice<f64>,
    chunks: ChunkTable,
}

/// Whether the step runs as a CUDA graph.
enum Graph {
    /// Not captured yet (or the seed changed).
    None,
    Ready {
        graph: GraphId,
        seed: u64,
    },
    /// Capture failed once: the steps run eagerly from then on, and the note says why.
    Failed(String),
}

pub struct CudaBackend {
    dev: Box<dyn Device>,
    table: TensorTable,
    /// Device address of each tensor, by `TensorId` index (0 for a tensor with no storage of
    /// its own: the arena's padding row).
    ptrs: Vec<DevicePtr>,
    arena: DevicePtr,
    layout: Layout,
    partials: DeviceSlice<f64>,
    sums: DeviceSlice<f64>,
    /// attention_row_check's two results (largest deviation as f32 bits, rows over tolerance).
    row_check: DeviceSlice<u32>,
    /// Partial sums of the split-N weight and bias gradients (one buffer, reused in stream order).
    split_ws: DeviceSlice<f32>,
    /// Last-block counters of linear_backward_params and layernorm_backward (zero between
    /// launches: the last block of each tile resets its own).
    counters: DeviceSlice<u32>,
    ln_partials: DeviceSlice<f64>,
    /// The grid barrier of the persistent LSTM kernels (kernels/grid.cuh: count, generation).
    lstm_barrier: DeviceSlice<u32>,
    /// Each LSTM layer shape (B, H) of the table with its persistent split, or why the layer
    /// runs on the per-timestep kernels.
    lstm_plans: Vec<((usize, usize), Result<k::PersistentPlan, String>)>,
    /// Whether LSTM layers use the persistent kernels where their plan allows (else always the
    /// per-timestep kernels).
    lstm_persistent: bool,
    /// The arithmetic of the linear layers' GEMMs (the LSTM recurrence and every other op stay
    /// f32).
    precision: k::Precision,
    /// Launches (eager or captured) of the last LSTM layer forward and backward, for
    /// profile-step.
    lstm_layer_launches: (u64, u64),
    step: StepBuffers,
    /// What the device's StepScalars hold (None: never written).
    scalars: Option<StepScalars>,
    /// Steps finished on the device and not read back yet, in order.
    pending: VecDeque<u64>,
    graphs_enabled: bool,
    graph: Graph,
    /// Ops are being recorded into a graph: nothing may wait for the device or change the
    /// per-step values.
    capturing: std::cell::Cell<bool>,
    /// The first error during a capture (the capture is then abandoned for eager steps).
    capture_error: std::cell::RefCell<Option<String>>,
    memory: DeviceMemory,
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl CudaBackend {
    /// Allocates every tensor of `table` (plus the backend's workspace) on `dev` as one arena
    /// (see `arena`), zeroed. Out of device memory: the error says what the configuration needs
    /// and what to change.
    pub fn new(dev: Box<dyn Device>, mut table: TensorTable) -> anyhow::Result<Self> {
        // f64 partial sums and results of sum_squares, as f32 pairs (the table holds f32 and u32).
        let reduce = table.add(
            "cuda.reduce",
            Category::Workspace,
            &[2 * (SUM_SQUARES_PARTIALS + REDUCE_BATCH) + ROW_CHECK_RESULT],
        );
        let (split_len, counter_len) = split_workspace_len(&table);
        let split_len = split_len.max(1);
        let split = table.add("cuda.split_partials", Category::Workspace, &[split_len]);
        let (ln_len, ln_counters) = layernorm_workspace_len(&table);
        let ln = table.add(
            "cuda.ln_partials",
            Category::Workspace,
            &[2 * ln_len.max(1)],
        );
        let counter_len = counter_len.max(ln_counters).max(1);
        let counters = table.add_u32("cuda.counters", Category::Workspace, &[counter_len]);
        // the step's persistent state: scalars, state, record ring, per-tensor sums, chunk table
        let n_params = table
            .iter()
            .filter(|(_, s)| s.category == Category::Parameter)
            .count();
        let rec = std::mem::size_of::<k::StepRecord>();
        let scalars = table.add_u32(
            "cuda.step.scalars",
            Category::Workspace,
            &[k::STEP_SCALARS_BYTES / 4],
        );
        let state = table.add_u32(
            "cuda.step.state",
            Category::Workspace,
            &[std::mem::size_of::<k::StepState>() / 4],
        );
        let ring = table.add_u32(
            "cuda.step.records",
            Category::Workspace,
            &[STEP_RECORDS * rec / 4],
        );
        let tensor_sq = table.add_u32(
            "cuda.step.tensor_sq",
            Category::Workspace,
            &[2 * n_params.max(1)],
        );
        // the chunk table, from the parameters' sizes (their layout offsets are known below)
        let pre = arena::layout(&table, &[]);
        let host_chunks = k::chunk_table(
            &pre.slots
                .iter()
                .map(|s| (s.offset, s.len, s.decay))
                .collect::<Vec<_>>(),
        );
        let n_chunks = host_chunks.1.len();
        let chunk_partials = table.add_u32(
            "cuda.step.chunk_partials",
            Category::Workspace,
            &[2 * n_chunks.max(1)],
        );
        let chunk_table = table.add_u32(
            "cuda.step.chunks",
            Category::Workspace,
            &[5 * n_chunks.max(1)],
        );
        // The LSTM layers' (B, H), from their h (T, B, H): each gets a persistent-kernel plan.
        let mut lstm_shapes: Vec<(usize, usize)> = table
            .iter()
            .filter(|(_, s)| is_lstm_hidden(s))
            .map(|(_, s)| (s.shape[1], s.shape[2]))
            .collect();
        lstm_shapes.sort_unstable();
        lstm_shapes.dedup();
        let barrier = table.add_u32(
            "cuda.lstm.barrier",
            Category::Workspace,
            &[if lstm_shapes.is_empty() { 1 } else { 2 }],
        );
        let persistent = [
            counters,
            scalars,
            state,
            ring,
            tensor_sq,
            chunk_table,
            barrier,
        ];
        let mut layout = arena::layout(&table, &persistent);
        // The alignment padding between tensors is allocated too: a row of its own keeps the
        // table's total equal to the allocation.
        let padding = layout.total - table.total_bytes();
        if padding > 0 {
            table.add_u32("cuda.arena.padding", Category::Workspace, &[padding / 4]);
            layout.offsets.push(usize::MAX); // no storage of its own
        }
        let analytic_bytes = table.total_bytes();
        debug_assert_eq!(analytic_bytes, layout.total);
        let (free_before, total_bytes) = dev
            .mem_get_info()
            .map_err(|e| anyhow::anyhow!("{}: {e}", dev.name()))?;
        let arena = match dev.alloc(layout.total) {
            Ok(p) => p,
            Err(GpuError::OutOfMemory { .. }) => {
                let by_cat: Vec<String> = table
                    .bytes_by_category()
                    .iter()
                    .map(|(c, b)| format!("{} {}", c.label(), mib(*b)))
                    .collect();
                anyhow::bail!(
                    "out of device memory on {}: this configuration needs {} ({}) and the GPU had {} free of {}; \
                     try a smaller --batch or --seq-len (attention memory grows with batch · heads · seq_len²)",
                    dev.name(),
                    mib(analytic_bytes),
                    by_cat.join(", "),
                    mib(free_before),
                    mib(total_bytes)
                );
            }
            Err(e) => anyhow::bail!("allocating device memory on {}: {e}", dev.name()),
        };
        dev.memset_d8(arena, 0, layout.total)
            .map_err(|e| anyhow::anyhow!("zeroing device memory: {e}"))?;
        let ptrs: Vec<DevicePtr> = layout
            .offsets
            .iter()
            .map(|&o| if o == usize::MAX { 0 } else { arena + o as u64 })
            .collect();
        let at = |id: TensorId| ptrs[id.index()];
        let r = at(reduce);
        let chunk_base = at(chunk_table);
        let chunks = ChunkTable {
            offset: DeviceSlice::new(chunk_base, n_chunks),
            len: DeviceSlice::new(chunk_base + 8 * n_chunks as u64, n_chunks),
            tensor: DeviceSlice::new(chunk_base + 12 * n_chunks as u64, n_chunks),
            decay: DeviceSlice::new(chunk_base + 16 * n_chunks as u64, n_chunks),
            chunks: n_chunks,
            tensors: n_params,
        };
        if n_chunks > 0 {
            let mut bytes: Vec<u8> = bytemuck::cast_slice(&host_chunks.0).to_vec();
            bytes.extend_from_slice(bytemuck::cast_slice(&host_chunks.1));
            bytes.extend_from_slice(bytemuck::cast_slice(&host_chunks.2));
            bytes.extend_from_slice(bytemuck::cast_slice(&host_chunks.3));
            dev.copy_htod(chunk_base, &bytes)
                .map_err(|e| anyhow::anyhow!("uploading the chunk table: {e}"))?;
        }
        let step = StepBuffers {
            scalars: DeviceSlice::new(at(scalars), k::STEP_SCALARS_BYTES),
            state: DeviceSlice::new(at(state), std::mem::size_of::<k::StepState>()),
            ring: DeviceSlice::new(at(ring), STEP_RECORDS * rec),
            tensor_sq: DeviceSlice::new(at(tensor_sq), n_params),
            chunk_partials: DeviceSlice::new(at(chunk_partials), n_chunks),
            chunks,
        };
        let (free_after, _) = dev
            .mem_get_info()
            .map_err(|e| anyhow::anyhow!("{}: {e}", dev.name()))?;
        Ok(CudaBackend {
            partials: DeviceSlice::new(r, SUM_SQUARES_PARTIALS),
            sums: DeviceSlice::new(r + (SUM_SQUARES_PARTIALS * 8) as u64, REDUCE_BATCH),
            row_check: DeviceSlice::new(
                r + ((SUM_SQUARES_PARTIALS + REDUCE_BATCH) * 8) as u64,
                ROW_CHECK_RESULT,
            ),
            split_ws: DeviceSlice::new(at(split), split_len),
            counters: DeviceSlice::new(at(counters), counter_len),
            ln_partials: DeviceSlice::new(at(ln), ln_len.max(1)),
            lstm_barrier: DeviceSlice::new(at(barrier), if lstm_shapes.is_empty() { 1 } else { 2 }),
            lstm_plans: lstm_shapes
                .iter()
                .map(|&(b, h)| ((b, h), k::lstm_persistent_plan(dev.as_ref(), b, h)))
                .collect(),
            lstm_persistent: true,
            precision: k::Precision::Fp32,
            lstm_layer_launches: (0, 0),
            step,
            scalars: None,
            pending: VecDeque::new(),
            graphs_enabled: true,
            graph: Graph::None,
            capturing: std::cell::Cell::new(false),
            capture_error: std::cell::RefCell::new(None),
            memory: DeviceMemory {
                analytic_bytes,
                measured_bytes: free_before.saturating_sub(free_after),
                total_bytes,
                free_bytes: free_after,
            },
            dev,
            table,
            ptrs,
            arena,
            layout,
        })
    }

    /// The device this backend runs on.
    pub fn device(&self) -> &dyn Device {
        &*self.dev
    }

    /// Device memory: the table's figure and the driver's.
    pub fn memory(&self) -> DeviceMemory {
        self.memory
    }

    /// Where the tensors live in the arena.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A device error: a panic with the device's name (the trait's ops cannot fail, and a broken
    /// device is nothing a training loop can go on from), except during a graph capture, where
    /// the first error is kept and the capture abandoned for eager steps.
    #[track_caller]
    fn ok<T: Default>(&self, r: Result<T, GpuError>) -> T {
        match r {
            Ok(v) => v,
            Err(e) if self.capturing.get() => {
                self.capture_error
                    .borrow_mut()
                    .get_or_insert_with(|| e.to_string());
                T::default()
            }
            Err(e) => panic!("CUDA backend on {}: {e}", self.dev.name()),
        }
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

    /// A region of the arena as floats.
    fn region(&self, r: Region) -> DeviceSlice<f32> {
        DeviceSlice::new(self.arena + r.start as u64, r.bytes / 4)
    }

    /// Makes the device's StepScalars hold `s` (one async copy when they differ). Outside a
    /// capture only: a captured step reads what run_step wrote before it.
    fn ensure_scalars(&mut self, s: StepScalars) {
        if self.scalars == Some(s) {
            return;
        }
        if self.capturing.get() {
            let have = self.scalars;
            self.capture_error.borrow_mut().get_or_insert_with(|| {
                format!("a captured op needs the per-step values {s:?}, not {have:?}: they must come from run_step's StepInfo")
            });
            return;
        }
        let r = self
            .dev
            .upload_async(self.step.scalars.ptr(), bytemuck::bytes_of(&s));
        self.ok(r);
        self.scalars = Some(s);
    }

    /// The device step counter set to `step` (for ops outside a training step, such as a check's
    /// forward pass with dropout).
    fn ensure_step(&mut self, step: u64) {
        let s = StepScalars {
            step,
            ..self.scalars.unwrap_or_default()
        };
        self.ensure_scalars(s);
    }

    fn ensure_loss_scale(&mut self, loss_scale: f32) {
        let s = StepScalars {
            loss_scale,
            ..self.scalars.unwrap_or_default()
        };
        self.ensure_scalars(s);
    }

    /// The device form of a dropout key: its step read from the StepScalars.
    fn device_dropout(&mut self, key: Option<DropoutKey>) -> Option<DeviceDropout> {
        let key = key.filter(|d| d.p > 0.0)?;
        self.ensure_step(key.step);
        Some(DeviceDropout {
            key,
            step: DeviceSlice::new(self.step.scalars.ptr(), 1),
        })
    }

    /// The launch shape of the weight and bias gradients of `count` layers at (n, ic, oc): as many
    /// splits as the launcher wants, as far as the workspace allows.
    fn params_splits(&self, n: usize, ic: usize, oc: usize, count: usize) -> usize {
        let want = k::linear_backward_params_splits(n, ic, oc, count);
        let fit = self.split_ws.len() / (count * (oc * ic + oc)).max(1);
        let tiles_fit = self.counters.len() >= count * oc.div_ceil(64) * ic.div_ceil(64);
        if tiles_fit {
            want.min(fit).max(1)
        } else {
            1
        }
    }

    /// dweight_j (OC, IC) += dout_jᵀ · inp and dbias_j += Σ_n dout_j, for `count` layers sharing
    /// `inp`, in one launch.
    #[allow(clippy::too_many_arguments)]
    fn params_grad(
        &self,
        dweight: &[DeviceSlice<f32>],
        dbias: &[Option<DeviceSlice<f32>>],
        dout: &[DeviceSlice<f32>],
        inp: DeviceSlice<f32>,
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        let splits = self.params_splits(n, ic, oc, dweight.len());
        let r = k::linear_backward_params(
            self.device(),
            self.precision,
            dweight,
            dbias,
            dout,
            inp,
            Some(self.split_ws),
            Some(self.counters),
            splits,
            n,
            ic,
            oc,
        );
        self.ok(r);
    }

    /// The split count of a split-K product with an (m, nc) output over k: enough blocks to fill
    /// the GPU's SMs, as far as the workspace allows.
    fn splitk(&self, m: usize, nc: usize, k: usize) -> usize {
        let want = k::splitk_splits(m, nc, k, SPLITK_MIN_BLOCKS);
        let fit = self.split_ws.len() / (m * nc).max(1);
        let (_, tiles) = k::splitk_workspace(m, nc, 2);
        if self.counters.len() >= tiles {
            want.min(fit).max(1)
        } else {
            1
        }
    }

    /// The layernorm backward in one launch (dinp += ... (+ dresidual), dweight, dbias).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self,
        dinp: TensorId,
        dweight: TensorId,
        dbias: TensorId,
        dout: TensorId,
        inp: TensorId,
        weight: TensorId,
        mean: TensorId,
        rstd: TensorId,
        dresidual: Option<TensorId>,
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
        if let Some(r) = dresidual {
            shapes::same(&self.table, "accumulate", dinp, &[("src", r)]);
        }
        let want = k::layernorm_backward_splits(n, c);
        let (pf, pc) = k::layernorm_backward_workspace(c, want);
        let splits = if pf <= self.ln_partials.len() && pc <= self.counters.len() {
            want
        } else {
            1
        };
        let ws = Some((self.ln_partials, self.counters));
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
            self.fo(dresidual),
            ws,
            splits,
            n,
            c,
        );
        self.ok(r);
    }

    /// Whether a training step runs as a CUDA graph, and if not, why (None: it does).
    /// Uses the persistent LSTM kernels where a layer's plan allows (the default), or always the
    /// per-timestep kernels (for comparisons).
    pub fn set_lstm_persistent(&mut self, on: bool) {
        self.lstm_persistent = on;
    }

    /// The GEMM kernel set of the linear layers (fp32 SIMT, or the tensor cores at tf32 / bf16);
    /// a step graph captured with another precision is dropped.
    pub fn set_precision(&mut self, p: k::Precision) {
        if p == self.precision {
            return;
        }
        self.precision = p;
        if let Graph::Ready { graph, .. } = self.graph {
            let _ = self.dev.destroy_graph(graph);
            self.graph = Graph::None;
        }
    }

    /// The persistent split of an LSTM layer of shape (B, H), when it runs on the persistent
    /// kernels.
    fn lstm_plan(&self, b: usize, h: usize) -> Option<k::PersistentPlan> {
        if !self.lstm_persistent {
            return None;
        }
        self.lstm_plans
            .iter()
            .find(|(shape, _)| *shape == (b, h))
            .and_then(|(_, plan)| plan.as_ref().ok().copied())
    }

    /// How the LSTM layers run, when that deserves a note: the per-timestep kernels were asked
    /// for, or a layer does not fit the persistent kernels (and why).
    pub fn lstm_note(&self) -> Option<String> {
        if self.lstm_plans.is_empty() {
            return None;
        }
        if !self.lstm_persistent {
            return Some("LSTM: per-timestep kernels (--lstm-recurrence per-timestep)".into());
        }
        let why: Vec<String> = self
            .lstm_plans
            .iter()
            .filter_map(|((b, h), plan)| {
                plan.as_ref()
                    .err()
                    .map(|e| format!("layer (B {b}, H {h}) runs per timestep: {e}"))
            })
            .collect();
        (!why.is_empty()).then(|| format!("LSTM: {}", why.join("; ")))
    }

    /// One LSTM layer forward on the device (the shapes checked): the input GEMM, then the
    /// recurrence in one persistent launch or step by step.
    #[allow(clippy::too_many_arguments)]
    fn lstm_forward_layer(
        &mut self,
        s: LstmShape,
        h: TensorId,
        c: TensorId,
        gates: TensorId,
        x: TensorId,
        w_ih: TensorId,
        w_hh: TensorId,
        bias: TensorId,
    ) {
        let d = self.device();
        let (hh, cc, gg, whh) = (self.f(h), self.f(c), self.f(gates), self.f(w_hh));
        let (bh, b4) = (s.b * s.h, s.b * 4 * s.h);
        // input contributions of every timestep at once, then the recurrence step by step
        self.ok(k::matmul_forward(
            d,
            self.precision,
            gg,
            self.f(x),
            self.f(w_ih),
            Some(self.f(bias)),
            s.t * s.b,
            s.e,
            4 * s.h,
        ));
        if let Some(plan) = self.lstm_plan(s.b, s.h) {
            // the whole recurrence in one cooperative launch, W_hh resident on chip
            self.ok(k::lstm_persistent_forward(
                d,
                &plan,
                gg,
                cc,
                hh,
                whh,
                self.lstm_barrier,
                s.t,
                s.b,
                s.h,
            ));
            return;
        }
        for t in 0..s.t {
            let g_t = rows(gg, t, 1, b4);
            if t > 0 {
                // gates[t] += h[t-1] · W_hhᵀ: a (B, 4H) output has few tiles; split over K. The
                // recurrence stays f32 at every precision, as the persistent kernels compute it.
                let splits = self.splitk(s.b, 4 * s.h, s.h);
                self.ok(k::matmul_forward_accumulate_splitk(
                    d,
                    k::Precision::Fp32,
                    g_t,
                    rows(hh, t - 1, 1, bh),
                    whh,
                    Some(self.split_ws),
                    Some(self.counters),
                    splits,
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

    /// One LSTM layer backward on the device (the shapes checked): the recurrence in one
    /// persistent launch or step by step, then the weight, bias and input gradients as GEMMs.
    #[allow(clippy::too_many_arguments)]
    fn lstm_backward_layer(
        &mut self,
        s: LstmShape,
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
        let plan = self.lstm_plan(s.b, s.h);
        if let Some(plan) = &plan {
            // backpropagation through time in one cooperative launch (dgates of every step)
            self.ok(k::lstm_persistent_backward(
                d,
                plan,
                dg,
                ddh,
                gg,
                cc,
                self.f(w_hh),
                self.lstm_barrier,
                s.t,
                s.b,
                s.h,
            ));
        }
        // else the recurrence step by step
        let steps = if plan.is_some() { 0 } else { s.t };
        for t in (0..steps).rev() {
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
                // dh[t-1] += dgates[t] · W_hh: a (B, H) output of 4 tiles at the default size,
                // split over K = 4H so the reduction spreads over the GPU
                let splits = self.splitk(s.b, s.h, h4);
                self.ok(k::matmul_backward_input_splitk(
                    d,
                    k::Precision::Fp32,
                    rows(ddh, t - 1, 1, bh),
                    dg_t,
                    self.f(w_hh),
                    Some(self.split_ws),
                    Some(self.counters),
                    splits,
                    s.b,
                    s.h,
                    h4,
                ));
            }
        }
        let n = s.t * s.b;
        self.params_grad(
            &[self.f(dw_ih)],
            &[Some(self.f(dbias))],
            &[dg],
            self.f(x),
            n,
            s.e,
            h4,
        );
        if s.t > 1 {
            self.params_grad(
                &[self.f(dw_hh)],
                &[None],
                &[rows(dg, 1, s.t - 1, b4)],
                rows(hh, 0, s.t - 1, bh),
                (s.t - 1) * s.b,
                s.h,
                h4,
            );
        }
        if let Some(dxx) = dx {
            self.ok(k::matmul_backward_input(
                d,
                self.precision,
                self.f(dxx),
                dg,
                self.f(w_ih),
                n,
                s.e,
                h4,
            ));
        }
    }

    /// Kernel launches issued so far, eager or recorded into a graph.
    fn launches_so_far(&self) -> u64 {
        let c = self.dev.counts();
        c.launches + c.captured_launches
    }

    pub fn graph_note(&self) -> Option<String> {
        match &self.graph {
            _ if !self.graphs_enabled => Some("CUDA graphs are off (--cuda-graph off)".into()),
            Graph::Failed(why) => Some(format!(
                "CUDA graph capture failed, so steps run eagerly: {why}"
            )),
            _ => None,
        }
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if let Graph::Ready { graph, .. } = self.graph {
            let _ = self.dev.destroy_graph(graph);
        }
        let _ = self.dev.free(self.arena);
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
        let p = self.ptrs[id.index()];
        if p != 0 {
            self.ok(self.device().memset_d8(p, 0, bytes));
        }
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
            self.precision,
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
        if let Some(di) = dinp {
            self.ok(k::matmul_backward_input(
                self.device(),
                self.precision,
                self.f(di),
                self.f(dout),
                self.f(weight),
                n,
                ic,
                oc,
            ));
        }
        self.params_grad(
            &[self.f(dweight)],
            &[self.fo(dbias)],
            &[self.f(dout)],
            self.f(inp),
            n,
            ic,
            oc,
        );
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
        self.layernorm_bwd(dinp, dweight, dbias, dout, inp, weight, mean, rstd, None);
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
        let dropout = self.device_dropout(dropout);
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
        let dropout = self.device_dropout(dropout);
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

    fn attention_fused_forward(
        &mut self,
        out: TensorId,
        lse: TensorId,
        q: TensorId,
        kk: TensorId,
        v: TensorId,
        dropout: Option<DropoutKey>,
    ) {
        let s = shapes::attention_fused(
            &self.table,
            "attention_fused_forward",
            q,
            lse,
            &[("out", out), ("k", kk), ("v", v)],
            &[],
        );
        let dropout = self.device_dropout(dropout);
        let r = k::attention_fused_forward(
            self.device(),
            self.f(out),
            self.f(lse),
            self.f(q),
            self.f(kk),
            self.f(v),
            s,
            dropout,
            self.precision,
        );
        self.ok(r);
    }

    fn attention_fused_backward(
        &mut self,
        dq: TensorId,
        dk: TensorId,
        dv: TensorId,
        dout: TensorId,
        q: TensorId,
        kk: TensorId,
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
                ("k", kk),
                ("v", v),
                ("out", out),
            ],
            &[("delta", delta)],
        );
        let dropout = self.device_dropout(dropout);
        let r = k::attention_fused_backward(
            self.device(),
            self.f(dq),
            self.f(dk),
            self.f(dv),
            self.f(dout),
            self.f(q),
            self.f(kk),
            self.f(v),
            self.f(out),
            self.f(lse),
            self.f(delta),
            s,
            dropout,
            self.precision,
        );
        self.ok(r);
    }

    fn attention_lse_check(
        &mut self,
        q: TensorId,
        kk: TensorId,
        lse: TensorId,
        tol: f32,
    ) -> RowCheck {
        let s = shapes::attention_fused(
            &self.table,
            "attention_lse_check",
            q,
            lse,
            &[("k", kk)],
            &[],
        );
        let r = k::attention_lse_check(
            self.device(),
            self.row_check,
            self.f(q),
            self.f(kk),
            self.f(lse),
            s,
            tol,
            self.precision,
        );
        self.ok(r);
        let (max_dev, bad_rows) = self.ok(k::read_row_sum_check(self.device(), self.row_check));
        RowCheck {
            max_dev,
            bad_rows: bad_rows as usize,
            rows: s.b * s.nh * s.t,
        }
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
        let l0 = self.launches_so_far();
        self.lstm_forward_layer(s, h, c, gates, x, w_ih, w_hh, bias);
        self.lstm_layer_launches.0 = self.launches_so_far() - l0;
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
        let l0 = self.launches_so_far();
        self.lstm_backward_layer(
            s, dx, dw_ih, dw_hh, dbias, dgates, dh, h, c, gates, x, w_ih, w_hh,
        );
        self.lstm_layer_launches.1 = self.launches_so_far() - l0;
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

    fn write_inputs(&mut self, inputs: &[(TensorId, &[u32])]) {
        // One staged copy over the inputs' span when they are all inputs of the arena's inputs
        // region (adjacent; the alignment gaps between them are sent as zeros).
        let region = self.layout.inputs;
        let mut lo = usize::MAX;
        let mut hi = 0;
        for (id, data) in inputs {
            let spec = self.table.spec(*id);
            assert!(
                spec.dtype == DType::U32 && data.len() == spec.numel(),
                "write_inputs: {} has {} u32 elements, got {}",
                spec.name,
                spec.numel(),
                data.len()
            );
            let off = self.layout.offsets[id.index()];
            lo = lo.min(off);
            hi = hi.max(off + spec.bytes());
        }
        if inputs.is_empty() {
            return;
        }
        let inside = lo >= region.start && hi <= region.start + region.bytes;
        if !inside {
            for (id, data) in inputs {
                let r = self
                    .dev
                    .upload_async(self.ptrs[id.index()], bytemuck::cast_slice(data));
                self.ok(r);
            }
            return;
        }
        let mut staged = vec![0u8; hi - lo];
        for (id, data) in inputs {
            let off = self.layout.offsets[id.index()] - lo;
            let bytes: &[u8] = bytemuck::cast_slice(data);
            staged[off..off + bytes.len()].copy_from_slice(bytes);
        }
        let r = self.dev.upload_async(self.arena + lo as u64, &staged);
        self.ok(r);
    }

    fn clear_step_buffers(&mut self) {
        let c = self.layout.cleared;
        if c.bytes > 0 {
            let r = self.dev.memset_d8(self.arena + c.start as u64, 0, c.bytes);
            self.ok(r);
        }
    }

    fn qkv_forward(
        &mut self,
        out: [TensorId; 3],
        inp: TensorId,
        weight: [TensorId; 3],
        bias: [Option<TensorId>; 3],
    ) {
        let mut dims = None;
        for j in 0..3 {
            let d = shapes::linear(
                &self.table,
                "matmul_forward",
                out[j],
                inp,
                weight[j],
                bias[j],
            );
            assert!(
                dims.is_none_or(|x| x == d),
                "qkv_forward: the three projections must have the same shape"
            );
            dims = Some(d);
        }
        let (n, ic, oc) = dims.expect("three projections");
        let r = k::matmul_forward_qkv(
            self.device(),
            self.precision,
            out.map(|o| self.f(o)),
            self.f(inp),
            weight.map(|w| self.f(w)),
            bias.map(|b| self.fo(b)),
            n,
            ic,
            oc,
        );
        self.ok(r);
    }

    fn qkv_backward(
        &mut self,
        dinp: TensorId,
        dweight: [TensorId; 3],
        dbias: [Option<TensorId>; 3],
        dout: [TensorId; 3],
        inp: TensorId,
        weight: [TensorId; 3],
    ) {
        let mut dims = None;
        for j in 0..3 {
            let d = shapes::matmul_backward(
                &self.table,
                Some(dinp),
                dweight[j],
                dbias[j],
                dout[j],
                inp,
                weight[j],
            );
            assert!(
                dims.is_none_or(|x| x == d),
                "qkv_backward: the three projections must have the same shape"
            );
            dims = Some(d);
        }
        let (n, ic, oc) = dims.expect("three projections");
        let r = k::matmul_backward_input_qkv(
            self.device(),
            self.precision,
            self.f(dinp),
            dout.map(|d| self.f(d)),
            weight.map(|w| self.f(w)),
            n,
            ic,
            oc,
        );
        self.ok(r);
        self.params_grad(
            &dweight.map(|w| self.f(w)),
            &dbias.map(|b| self.fo(b)),
            &dout.map(|d| self.f(d)),
            self.f(inp),
            n,
            ic,
            oc,
        );
    }

    fn linear_gelu_forward(
        &mut self,
        pre: TensorId,
        out: TensorId,
        inp: TensorId,
        weight: TensorId,
        bias: Option<TensorId>,
    ) {
        let (n, ic, oc) = shapes::linear(&self.table, "matmul_forward", pre, inp, weight, bias);
        shapes::same(&self.table, "gelu_forward", pre, &[("out", out)]);
        let r = k::matmul_forward_gelu(
            self.device(),
            self.precision,
            self.f(pre),
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
        let (n, ic, oc) =
            shapes::matmul_backward(&self.table, Some(dact), dweight, dbias, dout, inp, weight);
        shapes::same(
            &self.table,
            "gelu_backward",
            pre,
            &[("dinp", dpre), ("dout", dact)],
        );
        let r = k::matmul_backward_input_gelu(
            self.device(),
            self.precision,
            self.f(dpre),
            self.f(pre),
            self.f(dout),
            self.f(weight),
            n,
            ic,
            oc,
        );
        self.ok(r);
        self.params_grad(
            &[self.f(dweight)],
            &[self.fo(dbias)],
            &[self.f(dout)],
            self.f(inp),
            n,
            ic,
            oc,
        );
    }

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
        shapes::same(&self.table, "add", res, &[("a", a), ("b", b)]);
        let (n, c) = shapes::layernorm_forward(&self.table, out, mean, rstd, res, weight, bias);
        let r = k::add_layernorm_forward(
            self.device(),
            self.f(res),
            self.f(out),
            self.f(mean),
            self.f(rstd),
            self.f(a),
            self.f(b),
            self.f(weight),
            self.f(bias),
            n,
            c,
        );
        self.ok(r);
    }

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
        self.layernorm_bwd(
            dinp,
            dweight,
            dbias,
            dout,
            inp,
            weight,
            mean,
            rstd,
            Some(dresidual),
        );
    }

    fn cross_entropy_forward_backward(
        &mut self,
        losses: TensorId,
        dlogits: TensorId,
        logits: TensorId,
        targets: TensorId,
        scale: f32,
    ) {
        let (n, v) = shapes::cross_entropy_forward(&self.table, losses, logits, targets);
        shapes::cross_entropy_backward(&self.table, dlogits, logits, targets);
        self.ensure_loss_scale(scale);
        let r = k::cross_entropy_forward_backward(
            self.device(),
            self.f(losses),
            self.f(dlogits),
            self.f(logits),
            self.u(targets),
            self.step.scalars,
            n,
            v,
        );
        self.ok(r);
    }

    fn run_step(&mut self, info: &StepInfo, step: &mut dyn FnMut(&mut dyn Backend)) {
        self.ensure_scalars(StepScalars {
            step: info.step,
            lr: info.lr,
            loss_scale: info.loss_scale,
        });
        if !self.graphs_enabled || matches!(self.graph, Graph::Failed(_)) {
            step(self);
            return;
        }
        if let Graph::Ready { graph, seed } = self.graph {
            if seed == info.seed {
                let r = self.dev.launch_graph(graph);
                self.ok(r);
                self.pending.push_back(info.step);
                return;
            }
            let _ = self.dev.destroy_graph(graph);
            self.graph = Graph::None;
        }
        // Capture: the ops record instead of running; the graph then runs this step.
        if let Err(e) = self.dev.begin_capture() {
            self.graph = Graph::Failed(e.to_string());
            step(self);
            return;
        }
        self.capturing.set(true);
        *self.capture_error.borrow_mut() = None;
        step(self);
        self.capturing.set(false);
        let ended = self.dev.end_capture();
        let error = self.capture_error.borrow_mut().take();
        match (error, ended) {
            (None, Ok(graph)) => {
                self.graph = Graph::Ready {
                    graph,
                    seed: info.seed,
                };
                let r = self.dev.launch_graph(graph);
                self.ok(r);
                self.pending.push_back(info.step);
            }
            (why, ended) => {
                let why = match (why, ended) {
                    (Some(w), Ok(g)) => {
                        let _ = self.dev.destroy_graph(g);
                        w
                    }
                    (Some(w), Err(_)) => w,
                    (None, Err(e)) => e.to_string(),
                    (None, Ok(_)) => unreachable!("handled above"),
                };
                self.graph = Graph::Failed(why);
                step(self);
            }
        }
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
        assert!(
            params.len() == self.layout.slots.len()
                && params
                    .iter()
                    .zip(&self.layout.slots)
                    .all(|(p, s)| *p == s.ids),
            "finish_step: the parameters must be the table's, in table order"
        );
        assert_eq!(
            self.table.numel(losses),
            self.table.numel(targets),
            "finish_step: losses {} and targets {} differ in length",
            self.table.name(losses),
            self.table.name(targets)
        );
        self.ensure_scalars(StepScalars {
            step: info.step,
            lr: info.lr,
            loss_scale: info.loss_scale,
        });
        let (grads, params_r, m, v) = (
            self.region(self.layout.grads),
            self.region(self.layout.params),
            self.region(self.layout.m),
            self.region(self.layout.v),
        );
        let r = k::step_finalize(
            self.device(),
            self.step.state,
            self.step.ring,
            self.step.tensor_sq,
            self.step.chunk_partials,
            grads,
            &self.step.chunks,
            self.f(losses),
            self.u(targets),
            self.step.scalars,
            clip,
            cfg,
        );
        self.ok(r);
        let r = k::adamw_multi(
            self.device(),
            params_r,
            grads,
            m,
            v,
            &self.step.chunks,
            self.step.state,
            self.step.scalars,
            cfg,
        );
        self.ok(r);
        if !self.capturing.get() {
            self.pending.push_back(info.step);
        }
    }

    fn take_step_records(&mut self) -> Vec<StepRecord> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let raw = self.ok(self.device().download(self.step.ring));
        let ring: &[k::StepRecord] = bytemuck::cast_slice(&raw);
        let out = self
            .pending
            .drain(..)
            .filter_map(|step| {
                let r = ring[(step % STEP_RECORDS as u64) as usize];
                (r.step == step).then(|| StepRecord {
                    step,
                    loss: r.loss_sum / r.scored.max(1) as f64,
                    grad_norm: r.grad_sq.sqrt(),
                    updated: r.updated != 0,
                })
            })
            .collect();
        out
    }

    fn last_grad_sq(&mut self) -> Vec<f64> {
        self.ok(self.device().download(self.step.tensor_sq))
    }

    fn device_counts(&self) -> Option<crate::gpu::DeviceCounts> {
        Some(self.dev.counts())
    }

    fn set_cuda_graph(&mut self, on: bool) {
        self.graphs_enabled = on;
    }

    fn step_note(&self) -> Option<String> {
        match (self.graph_note(), self.lstm_note()) {
            (Some(g), Some(l)) => Some(format!("{g}; {l}")),
            (g, l) => g.or(l),
        }
    }

    fn set_lstm_persistent(&mut self, on: bool) {
        CudaBackend::set_lstm_persistent(self, on);
    }

    fn set_precision(&mut self, p: crate::gpu::kernels::Precision) -> Result<(), String> {
        CudaBackend::set_precision(self, p);
        Ok(())
    }

    fn precision(&self) -> crate::gpu::kernels::Precision {
        self.precision
    }

    fn lstm_layer_launches(&self) -> Option<(u64, u64)> {
        (!self.lstm_plans.is_empty()).then_some(self.lstm_layer_launches)
    }
}
