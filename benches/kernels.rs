//! Per-kernel benchmarks: matmul forward and backward, causal softmax + dropout forward,
//! attention forward (scores, softmax + dropout, values) and backward, one LSTM cell step, at
//! the seed configuration's shapes (batch 4, seq 128, d_model 256, 1 head) and one bigger one.
//! Each reports achieved GFLOP/s and GB/s from the counts of `robo_poet::ops::costs`.
//!
//! `cargo bench --bench kernels` (about a minute on a 2-core CPU); a name filter works as usual
//! (`cargo bench --bench kernels -- attention`). With a working GPU the CUDA kernels are timed
//! with CUDA events around the launches (cuEventRecord / cuEventElapsedTime, no host sync inside
//! the timed loop); otherwise the CPU reference ops of src/ops, at the same shapes and with the
//! same counts. The first line printed says which device was measured; criterion's "elem/s" is
//! FLOP/s, and a table of ms, GFLOP/s and GB/s per op closes the run.

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use robo_poet::gpu::kernels as k;
use robo_poet::gpu::{CudaDevice, Device, DeviceExt, DeviceSlice};
use robo_poet::ops;
use robo_poet::ops::attention::AttnShape;
use robo_poet::ops::costs::{self, Cost};
use robo_poet::philox::DropoutKey;
use robo_poet::rng::Rng;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[path = "common/criterion_config.rs"]
mod criterion_config;
#[path = "common/cuda_timer.rs"]
mod cuda_timer;
use cuda_timer::CudaTimer;

/// One benchmark configuration: batch, sequence, width, heads.
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "seed B4 T128 C256 NH1",
        b: 4,
        t: 128,
        c: 256,
        nh: 1,
    },
    Shape {
        name: "big B8 T256 C512 NH4",
        b: 8,
        t: 256,
        c: 512,
        nh: 4,
    },
];

const DROPOUT_P: f32 = 0.1;

impl Shape {
    fn attn(&self) -> AttnShape {
        AttnShape {
            b: self.b,
            t: self.t,
            nh: self.nh,
            hs: self.c / self.nh,
        }
    }
    fn n(&self) -> usize {
        self.b * self.t
    }
    fn r(&self) -> usize {
        self.b * self.nh
    }
}

fn key() -> DropoutKey {
    DropoutKey {
        p: DROPOUT_P,
        seed: 1,
        step: 1,
        tensor: 0,
    }
}

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * 0.5).collect()
}

/// Every op of the benchmark, per shape: its name, its count and a closure timing `iters` calls.
type Timed<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// The CPU reference ops (src/ops) at shape `s`, timed with the host clock.
fn cpu_ops(s: Shape) -> Vec<(&'static str, Cost, Timed<'static>)> {
    let mut rng = Rng::new(7);
    let (n, c, a, r, t) = (s.n(), s.c, s.attn(), s.r(), s.t);
    let x = randn(&mut rng, n * c);
    let w = randn(&mut rng, c * c);
    let bias = randn(&mut rng, c);
    let (q, kk, v) = (
        randn(&mut rng, n * c),
        randn(&mut rng, n * c),
        randn(&mut rng, n * c),
    );
    let scores = randn(&mut rng, r * t * t);
    let gates = randn(&mut rng, s.b * 4 * c);
    let c_prev = randn(&mut rng, s.b * c);
    let host = |mut f: Box<dyn FnMut()>| -> Timed<'static> {
        Box::new(move |iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                f();
            }
            t0.elapsed()
        })
    };
    let mut ops: Vec<(&'static str, Cost, Timed<'static>)> = Vec::new();
    {
        let (x, w, bias) = (x.clone(), w.clone(), bias.clone());
        let mut out = vec![0.0; n * c];
        ops.push((
            "matmul forward",
            costs::matmul_forward(n, c, c, true),
            host(Box::new(move || {
                ops::matmul::matmul_forward(&mut out, &x, &w, Some(&bias), n, c, c)
            })),
        ));
    }
    {
        let (x, w, dout) = (x.clone(), w.clone(), q.clone());
        let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c * c]);
        ops.push((
            "matmul backward",
            costs::matmul_backward(n, c, c),
            host(Box::new(move || {
                ops::matmul::matmul_backward(Some(&mut dx), &mut dw, None, &dout, &x, &w, n, c, c)
            })),
        ));
    }
    {
        let scores = scores.clone();
        let (mut probs, mut weights) = (vec![0.0; r * t * t], vec![0.0; r * t * t]);
        ops.push((
            "causal softmax+dropout forward",
            costs::causal_softmax_dropout_forward(r, t, true),
            host(Box::new(move || {
                ops::attention::causal_softmax_forward(&mut probs, &scores, r, t);
                ops::attention::dropout_forward(&mut weights, &probs, key(), 0);
            })),
        ));
    }
    {
        let (q, kk, v) = (q.clone(), kk.clone(), v.clone());
        let (mut out, mut probs) = (vec![0.0; n * c], vec![0.0; r * t * t]);
        ops.push((
            "attention forward",
            costs::attention_forward(s.b, t, s.nh, a.hs, true),
            host(Box::new(move || {
                ops::attention::attention_forward(&mut out, &mut probs, &q, &kk, &v, a, Some(key()))
            })),
        ));
    }
    {
        let (q, kk, v, dout) = (q.clone(), kk.clone(), v.clone(), x.clone());
        let mut probs = vec![0.0; r * t * t];
        let mut out = vec![0.0; n * c];
        ops::attention::attention_forward(&mut out, &mut probs, &q, &kk, &v, a, Some(key()));
        let (mut dq, mut dk, mut dv) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n * c]);
        ops.push((
            "attention backward",
            costs::attention_backward(s.b, t, s.nh, a.hs, true),
            host(Box::new(move || {
                ops::attention::attention_backward(
                    &mut dq,
                    &mut dk,
                    &mut dv,
                    &dout,
                    &q,
                    &kk,
                    &v,
                    &probs,
                    a,
                    Some(key()),
                )
            })),
        ));
    }
    {
        let (b, gates0) = (s.b, gates.clone());
        let mut g = gates0.clone();
        let (mut cc, mut h) = (vec![0.0; b * c], vec![0.0; b * c]);
        ops.push((
            "lstm cell forward",
            costs::lstm_cell_forward(b, c),
            host(Box::new(move || {
                ops::lstm::lstm_cell_forward(&mut g, Some(&c_prev), &mut cc, &mut h, b, c)
            })),
        ));
    }
    ops
}

/// The CUDA kernels at shape `s` on `dev`, timed with CUDA events (the host clock on the
/// emulator, which has none).
fn gpu_ops<'a>(
    dev: &'a dyn Device,
    emulated: bool,
    s: Shape,
) -> Vec<(&'static str, Cost, Timed<'a>)> {
    let mut rng = Rng::new(7);
    let (n, c, a, r, t, b) = (s.n(), s.c, s.attn(), s.r(), s.t, s.b);
    let up = |v: Vec<f32>| -> DeviceSlice<f32> { dev.upload(&v).expect("upload") };
    let zeros = |len: usize| up(vec![0.0; len]);
    let x = up(randn(&mut rng, n * c));
    let w = up(randn(&mut rng, c * c));
    let bias = up(randn(&mut rng, c));
    let (q, kk, v) = (
        up(randn(&mut rng, n * c)),
        up(randn(&mut rng, n * c)),
        up(randn(&mut rng, n * c)),
    );
    let scores = up(randn(&mut rng, r * t * t));
    let (probs, weights) = (zeros(r * t * t), zeros(r * t * t));
    let (dweights, dscores) = (zeros(r * t * t), zeros(r * t * t));
    let (out, dx, dw) = (zeros(n * c), zeros(n * c), zeros(c * c));
    let (dq, dk, dv) = (zeros(n * c), zeros(n * c), zeros(n * c));
    let (gates, c_prev) = (up(randn(&mut rng, b * 4 * c)), up(randn(&mut rng, b * c)));
    let (lse, delta) = (zeros(r * t), zeros(r * t));
    let (cc, h) = (zeros(b * c), zeros(b * c));
    // The split-N workspace allocated once, as the CUDA backend does (not inside the timing).
    let splits = k::matmul_backward_weight_splits(n, c, c);
    let ws_len = k::matmul_backward_weight_workspace_len(n, c, c, splits);
    let split_ws = (ws_len > 0).then(|| zeros(ws_len));
    // the dropout step lives in device memory, as the CUDA backend keeps it
    let drop = k::DeviceDropout::on_device(dev, key()).expect("upload");
    let timer = (!emulated).then(|| std::rc::Rc::new(CudaTimer::new().expect("CUDA events")));
    let events = |mut f: Box<dyn FnMut() + 'a>| -> Timed<'a> {
        let timer = timer.clone();
        Box::new(move |iters| {
            let mut all = || {
                for _ in 0..iters {
                    f();
                }
            };
            match &timer {
                Some(t) => t.time(all).expect("CUDA event timing"),
                None => {
                    let t0 = Instant::now();
                    all();
                    t0.elapsed()
                }
            }
        })
    };
    let ok = |r: Result<(), robo_poet::gpu::GpuError>| r.expect("kernel launch");
    let attn_fwd = move || {
        ok(k::attention_scores_forward(dev, scores, q, kk, a));
        ok(k::causal_softmax_dropout_forward(
            dev,
            probs,
            Some(weights),
            scores,
            r,
            t,
            Some(drop),
        ));
        ok(k::attention_values_forward(dev, out, weights, v, a));
    };
    attn_fwd();
    vec![
        (
            "matmul forward",
            costs::matmul_forward(n, c, c, true),
            events(Box::new(move || {
                ok(k::matmul_forward(
                    dev,
                    k::Precision::Fp32,
                    out,
                    x,
                    w,
                    Some(bias),
                    n,
                    c,
                    c,
                ))
            })),
        ),
        (
            "matmul forward tf32",
            costs::matmul_forward(n, c, c, true),
            events(Box::new(move || {
                ok(k::matmul_forward(
                    dev,
                    k::Precision::Tf32,
                    out,
                    x,
                    w,
                    Some(bias),
                    n,
                    c,
                    c,
                ))
            })),
        ),
        (
            "matmul forward bf16",
            costs::matmul_forward(n, c, c, true),
            events(Box::new(move || {
                ok(k::matmul_forward(
                    dev,
                    k::Precision::Bf16,
                    out,
                    x,
                    w,
                    Some(bias),
                    n,
                    c,
                    c,
                ))
            })),
        ),
        (
            "matmul backward",
            costs::matmul_backward(n, c, c),
            events(Box::new(move || {
                ok(k::matmul_backward_input(
                    dev,
                    k::Precision::Fp32,
                    dx,
                    out,
                    w,
                    n,
                    c,
                    c,
                ));
                ok(k::matmul_backward_weight_with_workspace(
                    dev,
                    k::Precision::Fp32,
                    dw,
                    out,
                    x,
                    split_ws,
                    splits,
                    n,
                    c,
                    c,
                ));
            })),
        ),
        (
            "causal softmax+dropout forward",
            costs::causal_softmax_dropout_forward(r, t, true),
            events(Box::new(move || {
                ok(k::causal_softmax_dropout_forward(
                    dev,
                    probs,
                    Some(weights),
                    scores,
                    r,
                    t,
                    Some(drop),
                ))
            })),
        ),
        (
            "attention forward",
            costs::attention_forward(b, t, s.nh, a.hs, true),
            events(Box::new(attn_fwd)),
        ),
        (
            "attention backward",
            costs::attention_backward(b, t, s.nh, a.hs, true),
            events(Box::new(move || {
                ok(k::attention_values_backward(
                    dev, dv, dweights, x, weights, v, a,
                ));
                ok(k::causal_softmax_dropout_backward(
                    dev,
                    dscores,
                    dweights,
                    probs,
                    r,
                    t,
                    Some(drop),
                ));
                ok(k::attention_scores_backward(dev, dq, dk, dscores, q, kk, a));
            })),
        ),
        (
            "lstm cell forward",
            costs::lstm_cell_forward(b, c),
            events(Box::new(move || {
                ok(k::lstm_cell_forward(dev, gates, Some(c_prev), cc, h, b, c))
            })),
        ),
        (
            "fused attention forward",
            costs::fused_attention_forward(b, t, s.nh, a.hs, true),
            events(Box::new(move || {
                ok(k::attention_fused_forward(
                    dev,
                    out,
                    lse,
                    q,
                    kk,
                    v,
                    a,
                    Some(drop),
                    k::Precision::Fp32,
                ))
            })),
        ),
        (
            "fused attention backward",
            costs::fused_attention_backward(b, t, s.nh, a.hs, true),
            events(Box::new(move || {
                ok(k::attention_fused_backward(
                    dev,
                    dq,
                    dk,
                    dv,
                    x,
                    q,
                    kk,
                    v,
                    out,
                    lse,
                    delta,
                    a,
                    Some(drop),
                    k::Precision::Fp32,
                ))
            })),
        ),
    ]
}

/// Total time and calls per (op, shape), over everything criterion ran (warm-up included).
type Totals = RefCell<BTreeMap<(usize, usize), (String, Cost, Duration, u64)>>;

fn run(c: &mut Criterion, gpu: Option<&CudaDevice>, totals: &Totals) {
    for (si, s) in SHAPES.iter().enumerate() {
        let ops = match gpu {
            Some(dev) => gpu_ops(dev, false, *s),
            None => cpu_ops(*s),
        };
        let mut g = c.benchmark_group(format!("kernels {}", s.name));
        let quick = criterion_config::quick();
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(if quick { 150 } else { 300 }))
            .measurement_time(Duration::from_millis(if quick { 600 } else { 1500 }));
        for (oi, (name, cost, mut timed)) in ops.into_iter().enumerate() {
            g.throughput(Throughput::Elements(cost.flops));
            g.bench_function(BenchmarkId::from_parameter(name), |bench| {
                bench.iter_custom(|iters| {
                    let d = timed(iters);
                    let mut t = totals.borrow_mut();
                    let e = t.entry((si, oi)).or_insert((
                        format!("{name} @ {}", s.name),
                        cost,
                        Duration::ZERO,
                        0,
                    ));
                    e.2 += d;
                    e.3 += iters;
                    d
                })
            });
        }
        g.finish();
    }
}

/// The fused-vs-materialized sweep: attention forward + backward at (B 8, NH 4, HS 64), the
/// shape of the GPU check's PyTorch SDPA peer, over T.
const SWEEP_T: [usize; 6] = [128, 256, 512, 1024, 2048, 4096];
const SWEEP: (usize, usize, usize) = (8, 4, 64);

/// One path's forward + backward at `a` on `dev`, as the CUDA backend runs it (dropout on); the
/// fused kernels' products at precision `p` (the materialized path is fp32 only).
fn attention_pass<'a>(
    dev: &'a dyn Device,
    a: AttnShape,
    fused: bool,
    p: k::Precision,
) -> Box<dyn FnMut() + 'a> {
    let (n, rows, tt) = (a.b * a.t * a.c(), a.b * a.nh * a.t, a.b * a.nh * a.t * a.t);
    let mut rng = Rng::new(3);
    let up = |v: Vec<f32>| -> DeviceSlice<f32> { dev.upload(&v).expect("upload") };
    let (q, kk, v, dout) = (
        up(randn(&mut rng, n)),
        up(randn(&mut rng, n)),
        up(randn(&mut rng, n)),
        up(randn(&mut rng, n)),
    );
    // zeroed on the device: the T×T buffers are GiBs at T 4096
    let zeros = |len: usize| -> DeviceSlice<f32> {
        let s = dev.alloc_slice::<f32>(len).expect("alloc");
        dev.zero(s).expect("memset");
        s
    };
    let (out, dq, dk, dv) = (zeros(n), zeros(n), zeros(n), zeros(n));
    let drop = k::DeviceDropout::on_device(dev, key()).expect("upload");
    let ok = |r: Result<(), robo_poet::gpu::GpuError>| r.expect("kernel launch");
    if fused {
        let (lse, delta) = (zeros(rows), zeros(rows));
        Box::new(move || {
            ok(k::attention_fused_forward(
                dev,
                out,
                lse,
                q,
                kk,
                v,
                a,
                Some(drop),
                p,
            ));
            ok(k::attention_fused_backward(
                dev,
                dq,
                dk,
                dv,
                dout,
                q,
                kk,
                v,
                out,
                lse,
                delta,
                a,
                Some(drop),
                p,
            ));
        })
    } else {
        let (r, t) = (a.b * a.nh, a.t);
        let (probs, w) = (zeros(tt), zeros(tt));
        Box::new(move || {
            ok(k::attention_scores_forward(dev, probs, q, kk, a));
            ok(k::causal_softmax_dropout_forward(
                dev,
                probs,
                Some(w),
                probs,
                r,
                t,
                Some(drop),
            ));
            ok(k::attention_values_forward(dev, out, w, v, a));
            ok(k::attention_dropout_weights(dev, w, probs, r, t, drop));
            ok(k::attention_values_backward(dev, dv, w, dout, w, v, a));
            ok(k::causal_softmax_dropout_backward(
                dev,
                w,
                w,
                probs,
                r,
                t,
                Some(drop),
            ));
            ok(k::attention_scores_backward(dev, dq, dk, w, q, kk, a));
        })
    }
}

/// Launches of each path's forward + backward, counted on the emulated device (tiny shape: the
/// count does not depend on it).
fn attention_launches() -> (u64, u64) {
    let dev = robo_poet::gpu::EmuDevice::default();
    let a = AttnShape {
        b: 1,
        t: 5,
        nh: 2,
        hs: 4,
    };
    let count = |fused| {
        let mut pass = attention_pass(&dev, a, fused, k::Precision::Fp32);
        let before = dev.counts();
        pass();
        (dev.counts() - before).launches
    };
    (count(false), count(true))
}

/// fused (fp32, and tf32 / bf16 products on the tensor cores) vs materialized attention, forward +
/// backward, over T: CUDA-event timed on a GPU (with criterion); without one, the analytic FLOPs
/// and bytes of both and the emulator's launch count.
fn attention_sweep(c: &mut Criterion, gpu: Option<&CudaDevice>) {
    let (b, nh, hs) = SWEEP;
    let (mat_launches, fused_launches) = attention_launches();
    let mut rows = vec![];
    for t in SWEEP_T {
        let a = AttnShape { b, t, nh, hs };
        let mat = costs::attention_forward(b, t, nh, hs, true)
            + costs::attention_backward(b, t, nh, hs, true);
        let fus = costs::fused_attention_forward(b, t, nh, hs, true)
            + costs::fused_attention_backward(b, t, nh, hs, true);
        let mut ms = [f64::NAN; 4];
        if let Some(dev) = gpu {
            let timer = CudaTimer::new().expect("CUDA events");
            let mut g = c.benchmark_group(format!("attention fwd+bwd B{b} NH{nh} HS{hs}"));
            let quick = criterion_config::quick();
            g.sample_size(10)
                .sampling_mode(SamplingMode::Flat)
                .warm_up_time(Duration::from_millis(if quick { 100 } else { 300 }))
                .measurement_time(Duration::from_millis(if quick { 400 } else { 1500 }));
            let paths = [
                ("materialized", false, k::Precision::Fp32),
                ("fused", true, k::Precision::Fp32),
                ("fused tf32", true, k::Precision::Tf32),
                ("fused bf16", true, k::Precision::Bf16),
            ];
            for (i, (name, fused, p)) in paths.into_iter().enumerate() {
                let mut pass = attention_pass(dev, a, fused, p);
                let mut total = (Duration::ZERO, 0u64);
                g.bench_function(BenchmarkId::new(name, t), |bench| {
                    bench.iter_custom(|iters| {
                        let d = timer
                            .time(|| {
                                for _ in 0..iters {
                                    pass();
                                }
                            })
                            .expect("CUDA event timing");
                        total = (total.0 + d, total.1 + iters);
                        d
                    })
                });
                ms[i] = 1e3 * total.0.as_secs_f64() / total.1.max(1) as f64;
            }
            g.finish();
        }
        rows.push((t, mat, fus, ms));
    }
    println!("\nattention forward + backward, fused vs materialized, B {b} NH {nh} HS {hs}, dropout 0.1 ({}):", if gpu.is_some() { "CUDA events" } else { "no GPU: analytic counts; launches from the emulated device" });
    println!("| T | materialized ms | fused ms | materialized / fused | fused tf32 ms | fused bf16 ms | materialized GFLOP | fused GFLOP | materialized MB | fused MB | launches materialized / fused |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (t, mat, fus, ms) in rows {
        let f = |x: f64| {
            if x.is_nan() {
                "-".to_string()
            } else {
                format!("{x:.3}")
            }
        };
        println!(
            "| {t} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {mat_launches} / {fused_launches} |",
            f(ms[0]),
            f(ms[1]),
            if ms[0].is_nan() { "-".to_string() } else { format!("{:.2}x", ms[0] / ms[1]) },
            f(ms[2]),
            f(ms[3]),
            mat.flops as f64 / 1e9,
            fus.flops as f64 / 1e9,
            mat.bytes as f64 / 1e6,
            fus.bytes as f64 / 1e6
        );
    }
}

/// The GEMM sweep: out = x · wᵀ (matmul_forward, no bias) at each precision, square sizes and
/// the default models' linear-layer shapes (M = tokens per step, N = out features, K = in).
const GEMM_SQUARE: [usize; 5] = [512, 1024, 2048, 4096, 8192];
const GEMM_MODEL_SHAPES: [(&str, usize, usize, usize); 4] = [
    ("GPT qkv/proj", 4096, 128, 128),
    ("GPT mlp fc", 4096, 512, 128),
    ("GPT mlp proj", 4096, 128, 512),
    ("LSTM W_ih", 4096, 1024, 64),
];

/// Dense peak FLOP/s of the cards the GPU check runs on, per precision (NVIDIA's H100/H200 SXM
/// datasheets: FP32 67 TFLOP/s, TF32 tensor 495, BF16 tensor 989, without sparsity).
fn peak_tflops(device: &str, p: k::Precision) -> Option<f64> {
    let hopper = device.contains("H100") || device.contains("H200");
    hopper.then_some(match p {
        k::Precision::Fp32 => 67.0,
        k::Precision::Tf32 => 495.0,
        k::Precision::Bf16 => 989.0,
    })
}

/// fp32 / tf32 / bf16 GEMMs: on a GPU the median of 5 CUDA-event-timed launches after one
/// warm-up (no criterion: the 8192³ fp32 call alone takes tens of ms), GFLOP/s and the fraction
/// of the card's peak; without one, the table of shapes and FLOPs with the GPU figures owed.
fn gemm_sweep(gpu: Option<&CudaDevice>) {
    let mut shapes: Vec<(String, usize, usize, usize)> = GEMM_SQUARE
        .iter()
        .map(|&n| (format!("{n}³"), n, n, n))
        .collect();
    shapes.extend(
        GEMM_MODEL_SHAPES
            .iter()
            .map(|&(name, m, n, kk)| (format!("{name} {m}x{n}x{kk}"), m, n, kk)),
    );
    let device = gpu.map(|d| d.name());
    println!(
        "\nGEMM out = x·wᵀ (matmul_forward) by precision ({}):",
        device.as_deref().map_or(
            "no GPU: shapes and FLOPs only, the GPU figures are owed to the check bundle"
                .to_string(),
            |d| format!("{d}, CUDA events, median of 5")
        )
    );
    println!("| shape (M x N x K) | GFLOP | fp32 tiles | fp32 ms | fp32 TFLOP/s | tf32 ms | tf32 TFLOP/s | bf16 ms | bf16 TFLOP/s | % of peak fp32 / tf32 / bf16 | fp32 on 64 x 64 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for (name, m, n, kk) in shapes {
        let flops = 2.0 * (m * n * kk) as f64;
        let big = k::gemm_uses_big_tiles(k::Precision::Fp32, m, n);
        let tiles = if big { "128 x 128" } else { "64 x 64" };
        let mut cells = vec![];
        let mut peaks = vec![];
        let Some(dev) = gpu else {
            for _ in k::Precision::ALL {
                cells.extend(["-".to_string(), "-".to_string()]);
                peaks.push("-".to_string());
            }
            println!(
                "| {name} | {:.2} | {tiles} | {} | {} | - |",
                flops / 1e9,
                cells.join(" | "),
                peaks.join(" / ")
            );
            continue;
        };
        // one set of operands per shape, for every precision
        let mut rng = Rng::new(5);
        let x = dev.upload(&randn(&mut rng, m * kk)).expect("upload");
        let w = dev.upload(&randn(&mut rng, n * kk)).expect("upload");
        let out = dev.alloc_slice::<f32>(m * n).expect("alloc");
        let timer = CudaTimer::new().expect("CUDA events");
        let median_ms = |launch: &dyn Fn()| {
            launch();
            let mut ms: Vec<f64> = (0..5)
                .map(|_| 1e3 * timer.time(launch).expect("CUDA event timing").as_secs_f64())
                .collect();
            ms.sort_by(f64::total_cmp);
            ms[2]
        };
        for p in k::Precision::ALL {
            let ms = median_ms(&|| {
                k::matmul_forward(dev, p, out, x, w, None, m, kk, n).expect("kernel launch")
            });
            let tflops = flops / (ms / 1e3) / 1e12;
            cells.push(format!("{ms:.3}"));
            cells.push(format!("{tflops:.1}"));
            peaks.push(
                peak_tflops(device.as_deref().unwrap_or(""), p)
                    .map_or("-".to_string(), |pk| format!("{:.0}%", 100.0 * tflops / pk)),
            );
        }
        // where the launcher takes 128 x 128 tiles, the 64 x 64 kernel on the same operands
        let small = if big {
            format!(
                "{:.3}",
                median_ms(&|| {
                    k::matmul_forward_on_tiles(
                        dev,
                        k::Precision::Fp32,
                        k::GemmTiles::Small,
                        out,
                        x,
                        w,
                        None,
                        m,
                        kk,
                        n,
                    )
                    .expect("kernel launch")
                })
            )
        } else {
            "-".to_string()
        };
        for s in [x, w, out] {
            dev.free_slice(s).expect("free");
        }
        println!(
            "| {name} | {:.2} | {tiles} | {} | {} | {small} |",
            flops / 1e9,
            cells.join(" | "),
            peaks.join(" / ")
        );
    }
}

/// `ROBO_POET_BENCH_EMU=1`: runs every GPU op once on the emulated device at a tiny shape, a
/// check of the GPU path's launches (shapes, argument order) on a machine without a GPU.
fn emulated_dry_run() {
    let dev = robo_poet::gpu::EmuDevice::default();
    let tiny = Shape {
        name: "tiny B2 T8 C16 NH2",
        b: 2,
        t: 8,
        c: 16,
        nh: 2,
    };
    for (name, cost, mut timed) in gpu_ops(&dev, true, tiny) {
        let d = timed(1);
        println!(
            "emulated {name} @ {}: ran once in {d:?} ({} FLOP, {} B)",
            tiny.name, cost.flops, cost.bytes
        );
    }
}

fn main() {
    if std::env::var_os("ROBO_POET_BENCH_EMU").is_some() {
        return emulated_dry_run();
    }
    let (gpu, on) = match CudaDevice::open() {
        Ok(d) => {
            let on = format!("the CUDA kernels on {} (CUDA-event timing)", d.name());
            (Some(d), on)
        }
        Err(why) => (
            None,
            format!(
                "the CPU reference ops (src/ops) on {} threads, host timing; no GPU: {why}",
                rayon::current_num_threads()
            ),
        ),
    };
    println!("kernels: measuring {on}");
    let mut c = criterion_config::criterion().configure_from_args();
    let totals = Totals::default();
    run(&mut c, gpu.as_ref(), &totals);
    attention_sweep(&mut c, gpu.as_ref());
    gemm_sweep(gpu.as_ref());
    c.final_summary();
    let t = totals.borrow();
    if t.is_empty() {
        return;
    }
    println!("\nkernels: {on}");
    println!("| op @ shape | mean ms | GFLOP/s | GB/s | MFLOP per call | MB per call |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, cost, d, calls) in t.values() {
        let secs = d.as_secs_f64() / (*calls).max(1) as f64;
        println!(
            "| {name} | {:.3} | {:.1} | {:.1} | {:.3} | {:.3} |",
            1e3 * secs,
            cost.flops as f64 / secs / 1e9,
            cost.bytes as f64 / secs / 1e9,
            cost.flops as f64 / 1e6,
            cost.bytes as f64 / 1e6
        );
    }
}
