#!/usr/bin/env python3
"""The PyTorch peer of robo-poet's default models, same shapes, for the GPU check: tokens/s of a
full training step (forward, backward, AdamW) and peak allocated memory, fp32 without TF32 (our
kernels are plain fp32). Attention: GPT-style pre-LN stack, separate Q/K/V projections, causal
softmax, dropout on the attention weights after softmax. LSTM: embedding, nn.LSTM, vocab head."""
import argparse, json, math, time

ap = argparse.ArgumentParser()
ap.add_argument("--json", required=True)
ap.add_argument("--vocab", type=int, default=78)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--seq-len", type=int, default=128)
ap.add_argument("--steps", type=int, default=50)
args = ap.parse_args()

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = torch.device("cuda")
V, B, T = args.vocab, args.batch, args.seq_len


class Block(nn.Module):
    def __init__(self, d, nh, p):
        super().__init__()
        self.nh, self.p = nh, p
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.fc, self.fc_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        split = lambda y: y.view(b, t, self.nh, d // self.nh).transpose(1, 2)
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.nh)
        mask = torch.ones(t, t, device=x.device, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        att = F.dropout(att, self.p, self.training)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, d=128, layers=4, nh=4, p=0.1):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, d), nn.Embedding(T, d)
        self.blocks = nn.ModuleList(Block(d, nh, p) for _ in range(layers))
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


def measure(model, lr, wd):
    model = model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    x = torch.randint(0, V, (B, T), device=dev)
    y = torch.randint(0, V, (B, T), device=dev)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    def step():
        loss = F.cross_entropy(model(x).view(-1, V), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step().item()  # the loss comes back to the host each step, as in robo-poet's loop
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    return {
        "tokens_per_s": B * T / med,
        "median_step_ms": med * 1e3,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
        "params": sum(p.numel() for p in model.parameters()),
    }


res = {
    "attention": measure(Gpt(), 2e-3, 0.1),
    "lstm": measure(Lstm(), 4e-3, 0.01),
    "note": f"PyTorch {torch.__version__}, {torch.cuda.get_device_name()}, fp32 (TF32 off), eager, B={B} T={T} V={V}; "
            "the LSTM uses cuDNN's fused LSTM.",
}
json.dump(res, open(args.json, "w"), indent=1)
print(json.dumps(res, indent=1))
