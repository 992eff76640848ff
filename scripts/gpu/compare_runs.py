#!/usr/bin/env python3
"""Summarises a GPU check folder (scripts/gpu/run.sh) as markdown on stdout, in the order of the
check: the smoke step (GPU vs CPU losses, tokens/s), the parity tests, robo-poet against each
PyTorch peer (one table, a ratio per row), the benches and profiled steps, memory, `check`, and
the sanitizers. Every section says so when its step did not run or left nothing to read."""
import json, os, re, sys

out = sys.argv[1]


def read(name):
    try:
        with open(os.path.join(out, name), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def load_json(name):
    try:
        return json.loads(read(name) or "null")
    except ValueError:
        return None


def num(x, d=0):
    return "n/a" if x is None or x != x else f"{x:,.{d}f}"


def ratio(a, b, d=2):
    return "n/a" if not a or not b else f"{a / b:.{d}f}x"


def test_counts(log):
    if not log.strip():
        return "did not run"
    passed = sum(int(m) for m in re.findall(r"test result: \w+\. (\d+) passed", log))
    failed = sum(int(m) for m in re.findall(r"; (\d+) failed", log))
    skipped = log.count("SKIPPED")
    return f"{passed} passed, {failed} failed" + (f", {skipped} SKIPPED lines" if skipped else "")


print("# GPU check summary\n")
smi = read("nvidia-smi.txt")
gpu = re.search(r"\|\s+\d+\s+(NVIDIA [^|]*?)\s{2,}", smi)
print(f"- GPU: {gpu.group(1).strip() if gpu else 'unknown (see setup.txt)'}")
print(f"- commit: {read('COMMIT').strip() or 'unknown'}")

# 1. smoke
smoke = load_json("smoke.json")
print("\n## 1. Smoke: GPU vs CPU, same seed\n")
if smoke and smoke.get("models"):
    print(f"{smoke['steps']} training steps per run; logged losses (window means) and the final validation loss compared, tolerance {smoke['loss_tol']:g} relative.\n")
    print("| model | losses | max rel diff | GPU tok/s | CPU tok/s | GPU/CPU | GPU MiB measured / analytic |")
    print("|---|---|---|---|---|---|---|")
    for model, e in smoke["models"].items():
        g, c = e.get("cuda", {}), e.get("cpu", {})
        mrd = e.get("max_rel_diff")
        print(f"| {model} | {e.get('verdict', 'n/a')} | {'n/a' if mrd is None else format(mrd, '.2e')} | "
              f"{num(g.get('tokens_per_s'))} | {num(c.get('tokens_per_s'))} | {ratio(g.get('tokens_per_s'), c.get('tokens_per_s'), 1)} | "
              f"{num(g.get('measured_mib'), 1)} / {num(g.get('analytic_mib'), 1)} |")
        for d in ("cuda", "cpu"):
            if e.get(d, {}).get("error"):
                print(f"\n{model} on {d} failed: `{e[d]['error']}`")
else:
    print("- no result (see smoke.log)")

# 2. parity
print("\n## 2. Parity tests\n")
print(f"- GPU kernel tests: {test_counts(read('gpu_kernels.log'))}")
backend = read("gpu_backend.log")
print(f"- GPU backend tests: {test_counts(backend)}")
for line in backend.splitlines():
    if "max loss rel diff" in line or "largest |row sum" in line:
        print(f"  - {line.strip()}")
for line in read("gpu_kernels.log").splitlines():
    if line.startswith("test ") and line.rstrip().endswith("FAILED"):
        print(f"  - {line.strip()}")

# 3. robo-poet against the PyTorch peer
peer = load_json("peer_pytorch.json") or {}
print("\n## 3. robo-poet vs PyTorch (same card, same run, same shapes)\n")
if peer:
    print(f"{peer.get('note', '')}\n")
    ours = {m: (smoke or {}).get("models", {}).get(m, {}).get("cuda", {}) for m in ("seed", "gpt", "lstm")}
    print("| model | peer | peer tok/s | robo-poet tok/s | robo-poet / peer | peer peak MiB | robo-poet MiB (driver) | memory ratio | peer first 3 steps s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, modes in peer.get("train", {}).items():
        o = ours.get(model, {})
        for mode, r in modes.items():
            if "error" in r:
                print(f"| {model} | {mode} | {r['error']} | {num(o.get('tokens_per_s'))} | n/a | n/a | {num(o.get('measured_mib'), 1)} | n/a | n/a |")
                continue
            print(f"| {model} | {mode} | {num(r['tokens_per_s'])} | {num(o.get('tokens_per_s'))} | "
                  f"{ratio(o.get('tokens_per_s'), r['tokens_per_s'])} | {num(r['peak_mib'], 1)} | {num(o.get('measured_mib'), 1)} | "
                  f"{ratio(o.get('measured_mib'), r['peak_mib'])} | {num(r.get('first_3_steps_s'), 1)} |")
    if peer.get("sdpa"):
        print("\nPyTorch `scaled_dot_product_attention`, FP32, causal, forward+backward (robo-poet's figure at these shapes: the kernel bench below, where it has the row):\n")
        print("| shape (B, NH, T, HS) | ms | TFLOP/s (causal FLOPs) |")
        print("|---|---|---|")
        for key, r in peer["sdpa"].items():
            if "error" in r:
                print(f"| {key} | {r['error']} | |")
            else:
                print(f"| {tuple(r['shape'])} | {r['fwd_bwd_ms']:.3f} | {r['tflops_causal']:.1f} |")
    if peer.get("matmul"):
        print("\nPyTorch matmul, 4096³ (the GEMM kernels' peer):\n")
        print("| precision | ms | TFLOP/s |")
        print("|---|---|---|")
        for key, r in peer["matmul"].items():
            print(f"| {key} | {r['error']} | |" if "error" in r else f"| {key} | {r['ms']:.3f} | {r['tflops']:.1f} |")
else:
    print("- no peer figures (see peer_pytorch.log)")

# speed: benches and profiled steps
print("\n## Benches and profiled steps\n")
for line in read("profile_step.log").splitlines():
    if line.startswith("profiled step") or line.startswith("step counts"):
        print(f"- {line.strip()}")
bench = read("bench_attention_vs_lstm.log").splitlines()
rows = []
for i, line in enumerate(bench):
    m = re.match(r"^attention vs lstm/(.+?)\s*$", line)
    if m and i + 2 < len(bench):
        thr = next((l for l in bench[i + 1:i + 4] if "thrpt:" in l), "")
        t = re.search(r"thrpt:\s+\[[^ ]+ [^ ]+ ([^ ]+ [^ ]+)", thr)
        rows.append((m.group(1), t.group(1) if t else "?"))
if rows:
    print("\nattention_vs_lstm (criterion, median throughput):\n")
    print("| benchmark | tokens/s |")
    print("|---|---|")
    for name, t in rows:
        print(f"| {name} | {t} |")
table = [l for l in read("bench_attention_vs_lstm.log").splitlines() if l.startswith("|")]
if table:
    print()
    print("\n".join(table))
kb = read("bench_kernels.log").splitlines()
head = next((l for l in kb if l.startswith("kernels: measuring")), "")
krows = [l for l in kb if l.startswith("|")]
if krows:
    print(f"\n{head} (benches/kernels.rs)\n")
    print("\n".join(krows))
else:
    print("\n- kernel bench: no table (see bench_kernels.log)")

# 4. accounting
mem = load_json("memory.json")
print("\n## 4. Memory: analytic vs driver-measured (seed width, both models)\n")
if mem and mem.get("gpu", {}).get("measured"):
    print("| seq_len | attention analytic MiB | attention measured MiB | LSTM analytic MiB | LSTM measured MiB |")
    print("|---|---|---|---|---|")
    mib = lambda b: f"{b / 2**20:.2f}"
    for c in mem["configs"]:
        a, l = c["attention"].get("cuda") or {}, c["lstm"].get("cuda") or {}
        print(f"| {c['seq_len']} | {mib(a.get('analytic_bytes', 0))} | {mib(a.get('measured_bytes', 0))} | {mib(l.get('analytic_bytes', 0))} | {mib(l.get('measured_bytes', 0))} |")
    print(f"\nmemory crossover seq_len: {mem.get('memory_crossover_seq_len')}")
else:
    print(f"- no measurement: {(mem or {}).get('gpu', {}).get('note', 'see memory.log')}")

check = load_json("check.json")
print("\n## robo-poet check (seed config), CPU and GPU\n")
if check:
    print(f"passed: {check.get('passed')}\n")
    print("| check | device | result | expected | measured |")
    print("|---|---|---|---|---|")
    for l in check.get("lines", []):
        print(f"| {l['check']} | {l['device']} | {l['status'].upper()} | {l['expected']} | {l['measured']} |")
else:
    print("- no report (see check.log)")

# 5. sanitizers
print("\n## 5. compute-sanitizer (2 training steps of each model)\n")
mc = re.search(r"ERROR SUMMARY: (\d+) error", read("memcheck.log"))
print(f"- memcheck: {mc.group(0) if mc else 'no summary (see memcheck.log)'}")
rc = re.search(r"RACECHECK SUMMARY: (\d+) hazard[^\n]*", read("racecheck.log"))
print(f"- racecheck: {rc.group(0) if rc else 'no summary (see racecheck.log)'}")
ncu = read("ncu/kernels.md")
if ncu.strip():
    print("\n## ncu (seed step)\n")
    print(ncu)
