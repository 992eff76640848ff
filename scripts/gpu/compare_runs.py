#!/usr/bin/env python3
"""Summarises a GPU check folder (scripts/gpu/run.sh) as markdown on stdout: test results,
sanitizers, GPU vs CPU training losses, tokens/s, device memory, and the PyTorch peer ratios."""
import json, os, re, statistics, sys

out = sys.argv[1]


def read(name):
    try:
        with open(os.path.join(out, name), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def metrics(run):
    rows = []
    for line in read(f"runs/{run}/metrics.jsonl").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def test_counts(log):
    passed = sum(int(m) for m in re.findall(r"test result: \w+\. (\d+) passed", log))
    failed = sum(int(m) for m in re.findall(r"; (\d+) failed", log))
    skipped = log.count("SKIPPED")
    return f"{passed} passed, {failed} failed" + (f", {skipped} SKIPPED lines" if skipped else "")


print("# GPU check summary\n")
smi = read("nvidia-smi.txt")
gpu = re.search(r"\|\s+\d+\s+(NVIDIA [^|]*?)\s{2,}", smi)
print(f"- GPU: {gpu.group(1).strip() if gpu else 'unknown (see nvidia-smi.txt)'}")
print(f"- commit: {read('COMMIT').strip() or 'unknown'}")
print(f"- GPU kernel tests: {test_counts(read('gpu_kernels.log'))}")
print(f"- GPU backend tests: {test_counts(read('gpu_backend.log'))}")
mc = re.search(r"ERROR SUMMARY: (\d+) error", read("memcheck.log"))
print(f"- compute-sanitizer memcheck: {mc.group(0) if mc else 'no summary (see memcheck.log)'}")
rc = re.search(r"RACECHECK SUMMARY: (\d+) hazard[^\n]*", read("racecheck.log"))
print(f"- compute-sanitizer racecheck: {rc.group(0) if rc else 'no summary (see racecheck.log)'}")

peer = {}
try:
    peer = json.loads(read("peer_pytorch.json") or "{}")
except ValueError:
    pass



def load_json(name):
    try:
        return json.loads(read(name) or "null")
    except ValueError:
        return None


check = load_json("check.json")
print("\n## robo-poet check (seed config), CPU and GPU\n")
if check:
    print(f"passed: {check.get('passed')}\n")
    print("| check | device | result | expected | measured |")
    print("|---|---|---|---|---|")
    for l in check.get("lines", []):
        print(f"| {l['check']} | {l['device']} | {l['status'].upper()} | {l['expected']} | {l['measured']} |")
else:
    print("- no report (see check.json)")

mem = load_json("memory.json")
print("\n## Memory: analytic vs driver-measured (seed width, both models)\n")
if mem and mem.get("gpu", {}).get("measured"):
    print("| seq_len | attention analytic MiB | attention measured MiB | LSTM analytic MiB | LSTM measured MiB |")
    print("|---|---|---|---|---|")
    mib = lambda b: f"{b / 2**20:.2f}"
    for c in mem["configs"]:
        a, l = c["attention"].get("cuda") or {}, c["lstm"].get("cuda") or {}
        print(f"| {c['seq_len']} | {mib(a.get('analytic_bytes', 0))} | {mib(a.get('measured_bytes', 0))} | {mib(l.get('analytic_bytes', 0))} | {mib(l.get('measured_bytes', 0))} |")
    print(f"\nmemory crossover seq_len: {mem.get('memory_crossover_seq_len')}")
else:
    print(f"- no measurement: {(mem or {}).get('gpu', {}).get('note', 'see memory.json')}")
print("\n## Training: GPU vs CPU, same seed\n")
print("| model | steps compared | first rel diff | last rel diff | GPU tok/s (median) | CPU tok/s | speed-up | device MiB measured | analytic MiB | PyTorch tok/s | ours / PyTorch | PyTorch peak MiB | ours / PyTorch memory |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for model in ["attention", "lstm"]:
    g = {r["step"]: r for r in metrics(f"{model}-cuda") if "train_loss" in r}
    c = {r["step"]: r for r in metrics(f"{model}-cpu") if "train_loss" in r}
    common = sorted(set(g) & set(c))
    rel = [abs(g[s]["train_loss"] - c[s]["train_loss"]) / abs(c[s]["train_loss"]) for s in common]
    tps = lambda d: statistics.median([r["tokens_per_s"] for s, r in sorted(d.items())][1:] or [float("nan")])
    gt, ct = tps(g), tps(c)
    mem = re.search(r"device: ([\d.]+) MiB measured by the driver for ([\d.]+) MiB", read(f"train-{model}-cuda.log"))
    measured, analytic = (float(mem.group(1)), float(mem.group(2))) if mem else (float("nan"), float("nan"))
    p = peer.get(model, {})
    pt, pm = p.get("tokens_per_s", float("nan")), p.get("peak_mib", float("nan"))
    f = lambda x, d=1: "n/a" if x != x else f"{x:,.{d}f}"
    print(f"| {model} | {len(common)} | {f(rel[0], 6) if rel else 'n/a'} | {f(rel[-1], 6) if rel else 'n/a'} | {f(gt, 0)} | {f(ct, 0)} | {f(gt / ct, 1)}x | {f(measured)} | {f(analytic)} | {f(pt, 0)} | {f(gt / pt, 2)} | {f(pm)} | {f(measured / pm, 2)} |")
if peer.get("note"):
    print(f"\nPyTorch peer: {peer['note']}")

print("\n## Kernels and one profiled step\n")
bench = read("bench_kernels.log").splitlines()
head = next((l for l in bench if l.startswith("kernels: measuring")), "")
rows = [l for l in bench if l.startswith("|")]
if rows:
    print(f"{head} (benches/kernels.rs, per-call means over criterion's runs)\n")
    print("\n".join(rows))
else:
    print("- kernel bench: no table (see bench_kernels.log)")
step_line = next((l for l in read("profile_step.log").splitlines() if l.startswith("profiled step")), "")
print(f"\n- profile-step (seed preset, cuda): {step_line or 'no result (see profile_step.log)'}")
for tool, table in [("ncu", "ncu/kernels.md"), ("nsys", "nsys/kernels.txt")]:
    text = read(table)
    if text.strip():
        print(f"\n{tool} ({table}):\n")
        print(text if tool == "ncu" else "```\n" + text.strip() + "\n```")
    else:
        print(f"- {tool}: no table (see profile_{tool}.log)")
