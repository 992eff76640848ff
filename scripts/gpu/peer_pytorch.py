#!/usr/bin/env python3
"""The PyTorch peer of robo-poet for the GPU check, on the same card in the same run, with the same
shapes as robo-poet's presets:

* a full training step (forward, cross-entropy, backward, global-norm clipping, AdamW) of the seed
  model, the default GPT and the default LSTM (nn.LSTM, i.e. cuDNN): tokens/s (median step) and
  peak allocated memory, in four modes: eager FP32 (TF32 off), eager with TF32 allowed,
  torch.compile of the model at FP32 (default mode) and torch.compile(mode="reduce-overhead")
  (CUDA graphs); clipping and AdamW (PyTorch's default foreach implementation) stay eager. Compile
  time (the first steps) is reported apart from the step time.
* F.scaled_dot_product_attention forward+backward at FP32, causal, (B 8, NH 4, T 1024 and 4096,
  HS 64), the peer of robo-poet's attention kernels; torch.matmul at 4096³ in FP32, TF32 and
  BF16, the peer of its GEMMs.

Every measurement is time-bounded (--per-measurement-s, and nothing starts after --deadline-s);
a failure or a timeout is recorded in the JSON and the script goes on. The JSON is rewritten
after every measurement, so a run cut short keeps what it measured. Most valuable first: eager
FP32 for the three models, SDPA, matmul, then reduce-overhead, TF32 and the default compile.

Models (must match src/model/attention.rs and lstm.rs):
* seed: token embedding (V, 256), no position embedding, one attention layer of one head (separate
  Q/K/V Linear with bias, scores / sqrt(256), causal mask, softmax, dropout 0.1 after softmax,
  weighted values), vocabulary projection; batch 4, T 128; AdamW lr 1e-3, weight decay 0.
* gpt: token + position embeddings, 4 pre-LN blocks of d 128 (4 heads, output projection, MLP 4C
  with tanh GELU, residuals), final LN, head; batch 32, T 128, dropout 0.1; lr 2e-3, wd 0.1.
* lstm: embedding 64, one nn.LSTM layer of 256, head; batch 32, T 128; lr 4e-3, wd 0.01.
AdamW betas (0.9, 0.95), eps 1e-8, clipping at 1. The loss comes back to the host every step, as
in robo-poet's loop (which logs it).
"""
import argparse, json, math, signal, time, traceback

ap = argparse.ArgumentParser()
ap.add_argument("--json", required=True)
ap.add_argument("--vocab", type=int, default=78)
ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
ap.add_argument("--per-measurement-s", type=float, default=40.0)
ap.add_argument("--deadline-s", type=float, default=100.0, help="start nothing after this many seconds")
ap.add_argument("--only", default="", help="comma-separated measurement names (default: all)")
ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                help="cpu: the CPU peer of the train_step bench (eager FP32 train steps only)")
ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (cpu; 0: PyTorch's default)")
args = ap.parse_args()
T0 = time.time()

import torch
import torch.nn as nn
import torch.nn.functional as F

dev = torch.device(args.device)
CUDA = args.device == "cuda"
if args.threads > 0:
    torch.set_num_threads(args.threads)
V = args.vocab


def sync():
    if CUDA:
        torch.cuda.synchronize()


class SeedAttention(nn.Module):
    def __init__(self, d=256, t=128, p=0.1):
        super().__init__()
        self.p = p
        self.wte = nn.Embedding(V, d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.head = nn.Linear(d, V)
        self.register_buffer("mask", torch.ones(t, t, dtype=torch.bool).tril())

    def forward(self, x):
        h = self.wte(x)
        t = x.shape[1]
        att = (self.q(h) @ self.k(h).transpose(-2, -1)) / math.sqrt(h.shape[-1])
        att = att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(-1)
        att = F.dropout(att, self.p, self.training)
        return self.head(att @ self.v(h))


class Block(nn.Module):
    def __init__(self, d, nh, t, p):
        super().__init__()
        self.nh, self.p = nh, p
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.fc, self.fc_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.register_buffer("mask", torch.ones(t, t, dtype=torch.bool).tril())

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        split = lambda y: y.view(b, t, self.nh, d // self.nh).transpose(1, 2)
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.nh)
        att = att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(-1)
        att = F.dropout(att, self.p, self.training)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, d=128, layers=4, nh=4, t=128, p=0.1):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, d), nn.Embedding(t, d)
        self.blocks = nn.ModuleList(Block(d, nh, t, p) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, V)

    def forward(self, x):
        h = self.wte(x) + self.wpe(torch.arange(x.shape[1], device=x.device))
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln_f(h))


class Lstm(nn.Module):
    def __init__(self, emb=64, hidden=256):
        super().__init__()
        self.wte = nn.Embedding(V, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, V)

    def forward(self, x):
        return self.head(self.lstm(self.wte(x))[0])


# name -> (constructor, batch, seq_len, lr, weight decay)
MODELS = {
    "seed": (SeedAttention, 4, 128, 1e-3, 0.0),
    "gpt": (Gpt, 32, 128, 2e-3, 0.1),
    "lstm": (Lstm, 32, 128, 4e-3, 0.01),
}


class Timeout(Exception):
    pass


def on_alarm(signum, frame):
    raise Timeout()


signal.signal(signal.SIGALRM, on_alarm)


def set_tf32(on):
    if not CUDA:
        return
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def train_step_measure(name, mode):
    ctor, B, T, lr, wd = MODELS[name]
    torch.manual_seed(0)
    set_tf32(mode == "eager_tf32")
    model = ctor().to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    x = torch.randint(0, V, (B, T), device=dev)
    y = torch.randint(0, V, (B, T), device=dev)

    # The compiled modes compile the model (forward and, through AOTAutograd, backward), the
    # common way to use torch.compile; clipping and AdamW (foreach) stay eager.
    run = model
    if mode == "compile":
        run = torch.compile(model)
    elif mode == "compile_reduce_overhead":
        run = torch.compile(model, mode="reduce-overhead")

    def fn():
        loss = F.cross_entropy(run(x).view(-1, V), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    sync()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    t_first = time.perf_counter()
    for _ in range(3):  # compiles (and records the graph) in the compiled modes
        fn().item()
    sync()
    warm_s = time.perf_counter() - t_first
    for _ in range(3):
        fn().item()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        fn().item()
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    return {
        "tokens_per_s": B * T / med,
        "median_step_ms": med * 1e3,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if CUDA else None,
        "first_3_steps_s": warm_s,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": B,
        "seq_len": T,
    }


def sdpa_measure(T, B=8, NH=4, HS=64):
    set_tf32(False)
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, NH, T, HS, device=dev, requires_grad=True) for _ in range(3))
    go = torch.randn(B, NH, T, HS, device=dev)

    def once():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o.backward(go)

    for _ in range(3):
        once()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        start.record()
        once()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    med = sorted(times)[len(times) // 2]
    # causal: half of the T×T products; forward 2 matmuls, backward 5 (recompute included) -> 2·(7/2)·B·NH·T²·HS FLOPs
    flops = 7 * B * NH * T * T * HS
    return {"fwd_bwd_ms": med, "tflops_causal": flops / (med * 1e-3) / 1e12, "shape": [B, NH, T, HS],
            "backend": str(torch.backends.cuda.preferred_sdp_backend()) if hasattr(torch.backends.cuda, "preferred_sdp_backend") else "default"}


def matmul_measure(prec, n=4096):
    """torch.matmul of two n×n matrices: the peer of the GEMM kernels (fp32 SIMT, tf32, bf16)."""
    set_tf32(prec == "tf32")
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    med = sorted(times)[len(times) // 2]
    return {"ms": med, "tflops": 2 * n**3 / (med * 1e-3) / 1e12, "n": n}


PLAN = [("train", m, "eager_fp32") for m in ("seed", "gpt", "lstm")]
PLAN += [("sdpa", 1024, None), ("sdpa", 4096, None)]
PLAN += [("matmul", p, None) for p in ("fp32", "tf32", "bf16")]
PLAN += [("train", m, "compile_reduce_overhead") for m in ("seed", "gpt", "lstm")]
PLAN += [("train", m, "eager_tf32") for m in ("seed", "gpt", "lstm")]
PLAN += [("train", m, "compile") for m in ("seed", "gpt", "lstm")]
if not CUDA:
    PLAN = [("train", m, "eager_fp32") for m in ("seed", "gpt", "lstm")]

res = {
    "note": f"PyTorch {torch.__version__}, "
            f"{torch.cuda.get_device_name() if CUDA else f'CPU, {torch.get_num_threads()} threads'}, "
            f"vocab {V}, {args.steps} timed steps per measurement (median), peak = torch.cuda.max_memory_allocated",
    "train": {},
    "sdpa": {},
    "matmul": {},
}
only = {s for s in args.only.split(",") if s}
for kind, what, mode in PLAN:
    key = {"train": f"{what}/{mode}", "sdpa": f"T{what}", "matmul": f"matmul_{what}"}[kind]
    if only and key not in only:
        continue
    entry = res["train"].setdefault(str(what), {}) if kind == "train" else res[kind]
    slot = mode if kind == "train" else key
    if time.time() - T0 > args.deadline_s:
        entry[slot] = {"error": f"not run: the {args.deadline_s:.0f} s deadline had passed"}
        continue
    signal.alarm(max(1, int(args.per_measurement_s)))
    t0 = time.time()
    try:
        measure = {"train": lambda: train_step_measure(what, mode), "sdpa": lambda: sdpa_measure(what),
                   "matmul": lambda: matmul_measure(what)}[kind]
        entry[slot] = measure()
    except Timeout:
        entry[slot] = {"error": f"timed out after {args.per_measurement_s:.0f} s"}
    except Exception as e:  # recorded, not fatal
        entry[slot] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        traceback.print_exc()
    finally:
        signal.alarm(0)
    entry[slot]["wall_s"] = time.time() - t0
    print(f"{key}: {json.dumps(entry[slot])}", flush=True)
    try:
        torch._dynamo.reset()
    except Exception:
        pass
    if CUDA:
        torch.cuda.empty_cache()
    json.dump(res, open(args.json, "w"), indent=1)
json.dump(res, open(args.json, "w"), indent=1)
