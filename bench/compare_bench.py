"""Benchmark the adapter map (`lorascope.compare.maps.adapter_map`) against N, beside plain loading.

N = 10, 30, 100 synthetic Llama-7B-shaped PEFT adapter folders (q_proj and v_proj of 32 layers,
4096 × 4096, r = 16, fp32: 32 MiB each, 3.2 GiB for N = 100) are written to a temporary folder,
in 5 planted groups (adapters of a group share 4 directions of A per module). The files are read
once so that they sit in the page cache; then each measurement runs in its own subprocess, so
its peak RSS is its own:
  load  `load_run` of the N folders, one at a time, each dropped (what any analysis must pay)
  map   `adapter_map(folders, "dW-right", k=8)`: load + top-8 bases + Gram per module
and prints time and peak RSS against N, the ratio map / load, and whether the planted groups
come back (fcluster on the average-linkage tree).

    .venv/bin/python bench/compare_bench.py            # prints, and writes bench/results/compare_bench.txt

About 10 minutes on 2 CPU cores; 3.2 GiB of temporary disk, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import Report, save_peft_adapter  # bench/report.py: run as a script, bench/ is on sys.path

OUT, IN, RANK, LAYERS, GROUPS, SHARED = 4096, 4096, 16, 32, 5, 4
PROJ = ("q_proj", "v_proj")
RESULTS = Path(__file__).resolve().parent / "results" / "compare_bench.txt"
GOAL = 10  # issue 23: the map of 100 7B-shaped adapters within 10x loading them


def modules() -> list[str]:
    return [f"model.layers.{layer}.self_attn.{p}" for layer in range(LAYERS) for p in PROJ]


def write_adapters(root: Path, n: int) -> list[Path]:
    """n PEFT folders root/a{i:03d}/adapter (all named "adapter", as downloads often are)."""
    import torch

    folders = []
    for i in range(n):
        g = torch.Generator().manual_seed(1000 + i)
        tensors = {}
        for j, m in enumerate(modules()):
            # Group directions: the same for every adapter of group i % GROUPS, per module.
            shared = torch.randn(SHARED, IN, generator=torch.Generator().manual_seed(97 * (i % GROUPS) + j))
            A = torch.randn(RANK, IN, generator=g) / RANK**0.5
            A[:SHARED] += 0.5 * shared  # rows of norm ~32 over noise rows of norm ~16
            tensors[f"base_model.model.{m}.lora_A.weight"] = A
            tensors[f"base_model.model.{m}.lora_B.weight"] = torch.randn(OUT, RANK, generator=g) * 0.01
        folder = root / f"a{i:03d}" / "adapter"
        folders.append(save_peft_adapter(folder, tensors, RANK, PROJ))
    return folders


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(mode: str, folders: list[Path], k: int) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    import numpy as np
    import torch
    from scipy.cluster.hierarchy import fcluster

    from lorascope.runs import load_run

    if mode == "map":  # imported before the clock starts: loading pays none of it either
        from lorascope.compare.maps import adapter_map
    rss0 = peak_rss_mib()
    t0 = time.perf_counter()
    if mode == "load":
        for f in folders:
            run = load_run(f)
            del run
        return {"seconds": time.perf_counter() - t0, "rss": peak_rss_mib(), "rss_imports": rss0}
    import logging

    phases = []  # (bases s, scores s) from adapter_map's own log line

    class Phases(logging.Handler):
        def emit(self, record):
            if record.msg.startswith("adapter map of"):
                phases.append(record.args[-2:])

    logging.getLogger("lorascope.compare.maps").addHandler(Phases())
    logging.getLogger("lorascope.compare.maps").setLevel(logging.INFO)
    amap = adapter_map(folders, "dW-right", k)
    seconds = time.perf_counter() - t0
    S = amap.similarity.to_numpy()
    group = np.arange(len(folders)) % GROUPS
    same = group[:, None] == group[None, :]
    off = ~np.eye(len(folders), dtype=bool)
    labels = fcluster(amap.linkage(), min(GROUPS, len(folders)), "maxclust")
    recovered = all(len(set(labels[group == g])) == 1 for g in set(group)) and len(set(labels)) == len(
        set(group)
    )
    return {
        "seconds": seconds,
        "bases": phases[0][0],
        "scores": phases[0][1],
        "rss": peak_rss_mib(),
        "rss_imports": rss0,
        "within": float(S[same & off].mean()),
        "across": float(S[~same].mean()),
        "floor": amap.floor_range()[1],
        "recovered": recovered,
        "threads": torch.get_num_threads(),
    }


def measure(mode: str, root: Path, n: int, k: int, threads: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--root", str(root), "--n", str(n), "--k", str(k)]
    cmd += ["--threads", str(threads)] if threads else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path]))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,30,100", help="numbers of adapters (default 10,30,100)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--root", type=Path, help="reuse adapters written there (default: a new temp folder)")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    p.add_argument("--threads", type=int, help="torch threads in both measurements (default: torch's choice)")
    p.add_argument("--child", choices=("load", "map"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        folders = sorted(args.root.glob("a*/adapter"))[: args.n]
        print(json.dumps(child(args.child, folders, args.k)))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    import torch

    threads = args.threads or torch.get_num_threads()
    report = Report("compare", threads=threads, torch_version=torch.__version__)
    say = report.say
    with tempfile.TemporaryDirectory(prefix="lorascope-compare-bench-") as tmp:
        root = args.root or Path(tmp)
        have = len(list(root.glob("a*/adapter")))
        if 0 < have < max(sizes):
            sys.exit(f"{root} holds {have} adapters, fewer than {max(sizes)}: give an empty folder")
        if have == 0:
            t0 = time.perf_counter()
            write_adapters(root, max(sizes))
            say(f"wrote {max(sizes)} PEFT folders in {time.perf_counter() - t0:.0f} s")
        files = sorted(root.glob("a*/adapter/adapter_model.safetensors"))[: max(sizes)]
        size = files[0].stat().st_size / 2**20
        for f in files:  # into the page cache: the ratio compares compute, not the disk
            f.read_bytes()
        say(
            f"adapters: PEFT folders, {LAYERS} layers x {','.join(PROJ)} = {2 * LAYERS} modules, {OUT}x{IN}, "
            f"r={RANK}, fp32, {size:.0f} MiB each; {GROUPS} planted groups; factor dW-right, k={args.k}"
        )
        say(
            f"{'N':>5} {'load s':>7} {'map s':>7} {'= bases':>8} {'+ Gram':>7} {'map/load':>9} "
            f"{'s/adapter':>10} {'RSS load MiB':>13} {'RSS map MiB':>12}  within / across / floor   groups"
        )
        ratios = {}
        for n in sizes:
            load, amap = (measure(mode, root, n, args.k, args.threads) for mode in ("load", "map"))
            ratios[n] = amap["seconds"] / load["seconds"]
            say(
                f"{n:>5} {load['seconds']:>7.1f} {amap['seconds']:>7.1f} {amap['bases']:>8.1f} "
                f"{amap['scores']:>7.1f} {amap['seconds'] / load['seconds']:>9.1f} "
                f"{amap['seconds'] / n:>10.2f} "
                f"{load['rss']:>13.0f} {amap['rss']:>12.0f}  "
                f"{amap['within']:.3f} / {amap['across']:.3f} / {amap['floor']:.4f}   "
                f"{'recovered' if amap['recovered'] else 'NOT recovered'}"
            )
        n = max(sizes)
        say(
            f"goal: the map of N = 100 adapters within {GOAL:g}x loading them: N = {n}, {ratios[n]:.1f}x "
            f"({'met' if ratios[n] <= GOAL else 'MISSED'}{'' if n == 100 else '; not the N of the goal'})"
        )
        per_adapter = 2 * LAYERS * IN * args.k * 4 / 2**20
        say(f"load average at the end: {os.getloadavg()[0]:.1f}")
        say(
            f"RSS after imports, before any work: {amap['rss_imports']:.0f} MiB. Bases kept: "
            f"{2 * LAYERS} modules x {IN}x{args.k} float32 = {per_adapter:.0f} MiB per adapter."
        )
    if not args.no_write:
        report.write(RESULTS)


if __name__ == "__main__":
    main()
