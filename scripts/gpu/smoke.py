#!/usr/bin/env python3
"""The GPU check's first step (run.sh): a few training steps of the seed model, the default GPT and
the default LSTM, on the GPU and on the CPU with the same seed, so the first seconds of a GPU lease
answer the first questions: does the CUDA path train, do its losses agree with the CPU reference,
and how fast is each. Writes LOGS/smoke.json after every run (a run cut short keeps what it has)
and prints a table; exits 1 when a GPU run fails or its losses leave the tolerance.

Tolerance: both sides draw the same batches and dropout masks, so their logged losses differ only
by rounding (f32 kernels with FMA contraction and ex2.approx against the CPU's f64 sums), carried
forward by AdamW. The emulator built with FMA contraction measured that drift over 30 steps of the
two default models (docs/KERNEL_BENCH.md, "Rounding"); LOSS_TOL is set well above it and far
below what a wrong kernel does (a loss off by 1e-2 or more within a step or two)."""
import argparse, json, os, re, statistics, subprocess, time

LOSS_TOL = 1e-4

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--logs", required=True)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--devices", default="cuda,cpu")
args = ap.parse_args()

MODELS = [("gpt", []), ("lstm", ["--model", "lstm"]), ("seed", ["--preset", "seed"])]
out_json = os.path.join(args.logs, "smoke.json")
res = {"steps": args.steps, "loss_tol": LOSS_TOL, "models": {}}


def metrics(path):
    rows = []
    try:
        for line in open(path):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    except OSError:
        pass
    return rows


def one_run(model, flags, device):
    out = os.path.join(args.logs, "runs", f"smoke-{model}-{device}")
    cmd = [args.bin, "train", *flags, "--data", args.data, "--steps", str(args.steps),
           "--eval-every", str(args.steps), "--device", device, "--out", out, "--no-progress", "--seed", "1337"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    with open(os.path.join(args.logs, f"smoke-{model}-{device}.log"), "w") as f:
        f.write(" ".join(cmd) + "\n" + p.stdout + p.stderr)
    rows = metrics(os.path.join(out, "metrics.jsonl"))
    train = [r for r in rows if "train_loss" in r]
    tps = [r["tokens_per_s"] for r in train]
    # the first window holds the first step's one-time costs
    tps_med = statistics.median(tps[1:] if len(tps) > 1 else tps) if tps else None
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    mem = re.search(r"device: ([\d.]+) MiB measured by the driver for ([\d.]+) MiB", p.stderr)
    return {
        "exit": p.returncode,
        "wall_s": round(wall, 2),
        "losses": {str(r["step"]): r["train_loss"] for r in train},
        "val_loss": val[-1] if val else None,
        "tokens_per_s": tps_med,
        "measured_mib": float(mem.group(1)) if mem else None,
        "analytic_mib": float(mem.group(2)) if mem else None,
        "error": (p.stderr.strip().splitlines() or [""])[-1] if p.returncode else None,
    }


failed = False
devices = args.devices.split(",")
for model, flags in MODELS:
    entry = res["models"].setdefault(model, {})
    for device in devices:
        entry[device] = one_run(model, flags, device)
        json.dump(res, open(out_json, "w"), indent=1)
    g, c = entry.get("cuda"), entry.get("cpu")
    if g and c:
        common = sorted(set(g["losses"]) & set(c["losses"]), key=int)
        rel = [abs(g["losses"][s] - c["losses"][s]) / abs(c["losses"][s]) for s in common]
        if g["val_loss"] is not None and c["val_loss"] is not None:
            rel.append(abs(g["val_loss"] - c["val_loss"]) / abs(c["val_loss"]))
        entry["steps_compared"] = len(common)
        entry["max_rel_diff"] = max(rel) if rel else None
        ok = g["exit"] == 0 and c["exit"] == 0 and bool(rel) and max(rel) <= LOSS_TOL
        entry["verdict"] = "agree" if ok else "DIFFER" if rel else "FAILED"
        if g["tokens_per_s"] and c["tokens_per_s"]:
            entry["gpu_over_cpu"] = g["tokens_per_s"] / c["tokens_per_s"]
        failed |= not ok
    json.dump(res, open(out_json, "w"), indent=1)

print(f"| model | GPU vs CPU losses (tol {LOSS_TOL:g}) | max rel diff | GPU tok/s | CPU tok/s | GPU/CPU | GPU MiB measured / analytic |")
print("|---|---|---|---|---|---|---|")
for model, e in res["models"].items():
    f = lambda x, d=0: "n/a" if x is None else f"{x:,.{d}f}"
    g, c = e.get("cuda", {}), e.get("cpu", {})
    print(f"| {model} | {e.get('verdict', 'n/a')} ({e.get('steps_compared', 0)} steps + val) | "
          f"{'n/a' if e.get('max_rel_diff') is None else format(e['max_rel_diff'], '.2e')} | "
          f"{f(g.get('tokens_per_s'))} | {f(c.get('tokens_per_s'))} | {f(e.get('gpu_over_cpu'), 1)} | "
          f"{f(g.get('measured_mib'), 1)} / {f(g.get('analytic_mib'), 1)} |")
    for d in devices:
        if e.get(d, {}).get("error"):
            print(f"  {model} on {d} failed: {e[d]['error']}")
raise SystemExit(1 if failed else 0)
