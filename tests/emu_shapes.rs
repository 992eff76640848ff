//! Shape assertions on the CUDA path: every op of the CUDA backend checks its tensors' shapes
//! before it launches anything, with the same message as the CPU backend (the checks are shared,
//! src/backend/shapes.rs), naming the op, the argument, the expected and the actual shape.

use robo_poet::backend::cpu::CpuBackend;
use robo_poet::backend::cuda::CudaBackend;
use robo_poet::backend::Backend;
use robo_poet::gpu::{Device, DevicePtr, EmuDevice, GpuError, LaunchConfig};
use robo_poet::ops::adamw::AdamWConfig;
use robo_poet::tensor::{Category, ParamIds, TensorTable};
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The emulated device, counting kernel launches.
struct Counting {
    inner: EmuDevice,
    launches: Arc<AtomicUsize>,
}

impl Device for Counting {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn alloc(&self, bytes: usize) -> Result<DevicePtr, GpuError> {
        self.inner.alloc(bytes)
    }
    fn free(&self, ptr: DevicePtr) -> Result<(), GpuError> {
        self.inner.free(ptr)
    }
    fn copy_htod(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError> {
        self.inner.copy_htod(dst, src)
    }
    fn copy_dtoh(&self, dst: &mut [u8], src: DevicePtr) -> Result<(), GpuError> {
        self.inner.copy_dtoh(dst, src)
    }
    fn copy_dtod(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<(), GpuError> {
        self.inner.copy_dtod(dst, src, bytes)
    }
    fn memset_d8(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<(), GpuError> {
        self.inner.memset_d8(dst, value, bytes)
    }
    fn upload_async(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError> {
        self.inner.upload_async(dst, src)
    }
    fn synchronize(&self) -> Result<(), GpuError> {
        self.inner.synchronize()
    }
    fn counts(&self) -> robo_poet::gpu::DeviceCounts {
        self.inner.counts()
    }
    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<(), GpuError> {
        self.inner.set_max_dynamic_shared(kernel, bytes)
    }
    fn max_shared_optin(&self) -> u32 {
        self.inner.max_shared_optin()
    }
    fn mem_get_info(&self) -> Result<(usize, usize), GpuError> {
        self.inner.mem_get_info()
    }
    unsafe fn launch(
        &self,
        kernel: &str,
        config: &LaunchConfig,
        params: &mut [*mut c_void],
    ) -> Result<(), GpuError> {
        self.launches.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwarded unchanged; the caller upholds `Device::launch`'s contract.
        unsafe { self.inner.launch(kernel, config, params) }
    }
    unsafe fn launch_cooperative(
        &self,
        kernel: &str,
        config: &LaunchConfig,
        params: &mut [*mut c_void],
    ) -> Result<(), GpuError> {
        self.launches.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwarded unchanged; the caller upholds the trait's contract.
        unsafe { self.inner.launch_cooperative(kernel, config, params) }
    }
    fn max_active_blocks_per_sm(
        &self,
        kernel: &str,
        block_threads: u32,
        dynamic_shared: u32,
    ) -> Result<u32, GpuError> {
        self.inner
            .max_active_blocks_per_sm(kernel, block_threads, dynamic_shared)
    }
    fn sm_count(&self) -> u32 {
        self.inner.sm_count()
    }
}

/// One deliberately wrong call: the op, the shape of the wrong tensor as printed, and the call.
type Case = (&'static str, &'static str, Box<dyn Fn(&mut dyn Backend)>);

/// B 2, T 3, C 4, NH 2, V 5, OC 6; LSTM T 3, B 2, E 4, H 3. Every `bad*` tensor is off by one
/// somewhere.
fn cases(t: &mut TensorTable) -> Vec<Case> {
    let act = |t: &mut TensorTable, n: &str, s: &[usize]| t.add(n, Category::Activation, s);
    let tokens = t.add_u32("tokens", Category::Input, &[2, 3]);
    let targets = t.add_u32("targets", Category::Input, &[2, 3]);
    let wte = t.add_param("wte", &[5, 4], true);
    let wpe = t.add_param("wpe", &[3, 4], true);
    let x = act(t, "x", &[2, 3, 4]);
    let y = act(t, "y", &[2, 3, 4]);
    let bad_c = act(t, "bad_c", &[2, 3, 5]);
    let w = t.add_param("w", &[6, 4], true);
    let bias = t.add_param("b", &[6], false);
    let bad_oc = act(t, "bad_oc", &[2, 3, 7]);
    let ln_w = t.add_param("ln.w", &[4], false);
    let ln_b = t.add_param("ln.b", &[4], false);
    let bad_ln = t.add_param("bad_ln", &[5], false);
    let mean = act(t, "mean", &[2, 3]);
    let rstd = act(t, "rstd", &[2, 3]);
    let bad_stat = act(t, "bad_stat", &[2, 4]);
    let probs = act(t, "probs", &[2, 2, 3, 3]);
    let scratch = act(t, "scratch", &[2, 2, 3, 3]);
    let bad_tt = act(t, "bad_tt", &[2, 2, 3, 4]);
    let lx = act(t, "lstm.x", &[3, 2, 4]);
    let (h, c) = (act(t, "h", &[3, 2, 3]), act(t, "c", &[3, 2, 3]));
    let gates = act(t, "gates", &[3, 2, 12]);
    let bad_gates = act(t, "bad_gates", &[3, 2, 11]);
    let w_ih = t.add_param("w_ih", &[12, 4], true);
    let w_hh = t.add_param("w_hh", &[12, 3], true);
    let bad_w_hh = t.add_param("bad_w_hh", &[12, 4], true);
    let lb = t.add_param("lstm.b", &[12], false);
    let logits = act(t, "logits", &[2, 3, 5]);
    let bad_logits = act(t, "bad_logits", &[2, 4, 5]);
    let bad_losses = act(t, "bad_losses", &[2, 4]);
    let p = t.add_param("p", &[4], true);
    let q = t.add_param("q", &[5], true);
    let mixed = ParamIds { grad: q.grad, ..p };
    let (wte_p, wpe_p, w_p, b_p) = (wte.param, wpe.param, w.param, bias.param);
    let (ln_wp, ln_bp) = (ln_w.param, ln_b.param);
    let (wih, whh, lbp, bad_whh) = (w_ih.param, w_hh.param, lb.param, bad_w_hh.param);
    let v: Vec<Case> = vec![
        (
            "embedding_forward",
            "[2, 3, 5]",
            Box::new(move |be| be.embedding_forward(bad_c, tokens, wte_p, Some(wpe_p))),
        ),
        (
            "embedding_backward",
            "[2, 3, 5]",
            Box::new(move |be| be.embedding_backward(wte.grad, Some(wpe.grad), bad_c, tokens)),
        ),
        (
            "matmul_forward",
            "[2, 3, 7]",
            Box::new(move |be| be.matmul_forward(bad_oc, x, w_p, Some(b_p))),
        ),
        (
            "matmul_backward",
            "[2, 3, 7]",
            Box::new(move |be| {
                be.matmul_backward(Some(y), w.grad, Some(bias.grad), bad_oc, x, w_p)
            }),
        ),
        (
            "layernorm_forward",
            "[2, 4]",
            Box::new(move |be| be.layernorm_forward(y, mean, bad_stat, x, ln_wp, ln_bp)),
        ),
        (
            "layernorm_backward",
            "[5]",
            Box::new(move |be| {
                be.layernorm_backward(y, bad_ln.grad, ln_b.grad, x, x, ln_wp, mean, rstd)
            }),
        ),
        (
            "gelu_forward",
            "[2, 3, 5]",
            Box::new(move |be| be.gelu_forward(bad_c, x)),
        ),
        (
            "gelu_backward",
            "[2, 3, 5]",
            Box::new(move |be| be.gelu_backward(y, x, bad_c)),
        ),
        ("add", "[2, 3, 5]", Box::new(move |be| be.add(y, x, bad_c))),
        (
            "accumulate",
            "[2, 3, 5]",
            Box::new(move |be| be.accumulate(y, bad_c)),
        ),
        (
            "attention_forward",
            "[2, 2, 3, 4]",
            Box::new(move |be| be.attention_forward(y, probs, x, x, x, bad_tt, None)),
        ),
        (
            "attention_backward",
            "[2, 2, 3, 4]",
            Box::new(move |be| be.attention_backward(y, y, y, x, x, x, x, bad_tt, scratch, None)),
        ),
        (
            "attention_row_check",
            "[2, 2, 3, 4]",
            Box::new(move |be| {
                be.attention_row_check(bad_tt, 1e-5);
            }),
        ),
        (
            "lstm_forward",
            "[12, 4]",
            Box::new(move |be| be.lstm_forward(h, c, gates, lx, wih, bad_whh, lbp)),
        ),
        (
            "lstm_backward",
            "[3, 2, 11]",
            Box::new(move |be| {
                be.lstm_backward(
                    None, w_ih.grad, w_hh.grad, lb.grad, bad_gates, h, h, c, gates, lx, wih, whh,
                )
            }),
        ),
        (
            "cross_entropy_forward",
            "[2, 4]",
            Box::new(move |be| be.cross_entropy_forward(bad_losses, logits, targets)),
        ),
        (
            "cross_entropy_backward",
            "[2, 4, 5]",
            Box::new(move |be| be.cross_entropy_backward(bad_logits, logits, targets, 1.0)),
        ),
        (
            "adamw_update",
            "[5]",
            Box::new(move |be| be.adamw_update(mixed, &AdamWConfig::default(), 1e-3, 1, 1.0)),
        ),
    ];
    v
}

fn panic_message(f: impl FnOnce()) -> Option<String> {
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).err()?;
    Some(
        err.downcast_ref::<String>()
            .cloned()
            .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    )
}

#[test]
fn emu_every_op_checks_shapes_before_launching_like_the_cpu() {
    let mut t = TensorTable::new();
    let cases = cases(&mut t);
    let launches = Arc::new(AtomicUsize::new(0));
    let dev = Counting {
        inner: EmuDevice::new(),
        launches: launches.clone(),
    };
    let mut cuda = CudaBackend::new(Box::new(dev), t.clone()).unwrap();
    let mut cpu = CpuBackend::new(t);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // the expected panics, silently
    let mut failures = Vec::new();
    for (op, got, call) in &cases {
        let before = launches.load(Ordering::SeqCst);
        let on_cuda = panic_message(|| call(&mut cuda));
        let after = launches.load(Ordering::SeqCst);
        let on_cpu = panic_message(|| call(&mut cpu));
        let ok = match (&on_cuda, &on_cpu) {
            (Some(g), Some(c)) => {
                g == c
                    && g.starts_with(&format!("shape mismatch in {op}: "))
                    && g.contains("expected")
                    && g.contains(&format!("got {got}"))
                    && after == before
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{op}: cuda {on_cuda:?} ({} launches), cpu {on_cpu:?}",
                after - before
            ));
        }
    }
    std::panic::set_hook(hook);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(cases.len(), 18, "one case per op with tensors");
}
