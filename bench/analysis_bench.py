"""Benchmark the analysis against the obvious alternatives, side by side in one run.

(a) SVD of ΔW = s·B A, 4096 × 4096, r = 64: factored (`la.delta_svd`, QR + r×r SVD) vs
    forming ΔW and a dense SVD. Goal: ≥ 100× faster, singular values equal to 1e-4 relative.
(b) `lorascope similarity` on two Llama-7B-shaped adapters (32 layers × q,k,v,o, 4096 × 4096,
    r = 64, saved with run_format.save_adapter): loading both runs + φ for every module (the library
    path the CLI takes, without drawing) vs merely loading the two files. Goal: within 3×. Both
    with the files in the page cache, and evicted from it first (posix_fadvise DONTNEED), so that
    the denominator is a real read from the disk.

    .venv/bin/python bench/analysis_bench.py            # prints, and writes bench/results/analysis_bench.txt

Takes about a minute or two on 2 CPU cores and about 1.5 GB of temporary disk and memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import Report, drop_page_cache  # bench/report.py: run as a script, bench/ is on sys.path

from lorascope import analysis as la
from lorascope.compare import run_similarity
from lorascope.run_format import adapter_metadata, save_adapter
from lorascope.runs import load_run

OUT, IN, RANK, LAYERS = 4096, 4096, 64, 32
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
FACTORS = ("A", "B", "dA", "dW-right", "dW-left")
RESULTS = Path(__file__).resolve().parent / "results" / "analysis_bench.txt"


def timed(fn, repeat: int = 1):
    """(result of the last call, best wall time in seconds over `repeat` calls)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def bench_svd(say) -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(RANK, IN, generator=g) / RANK**0.5
    B = torch.randn(OUT, RANK, generator=g) * 0.01
    s = 2.0
    (U, S, V), t_fact = timed(lambda: la.delta_svd(A, B, s), repeat=5)

    def dense():
        return torch.linalg.svd(s * (B @ A), full_matrices=False)  # fp32, as a user would

    (_, S_dense, _), t_dense = timed(dense, repeat=1)
    rel = float(((S - S_dense[:RANK].double()).abs() / S).max())
    tail = float(S_dense[RANK:].max() / S_dense[0])
    say(f"(a) SVD of dW = s*B@A, {OUT}x{IN}, r={RANK}")
    say(f"    factored (QR + {RANK}x{RANK} SVD, float64): {t_fact * 1e3:9.1f} ms   (best of 5)")
    say(f"    dense (form dW + torch.linalg.svd, float32): {t_dense * 1e3:9.1f} ms")
    speedup = t_dense / t_fact
    say(f"    speed-up: {speedup:.0f}x   (goal >= 100x: {'met' if speedup >= 100 else 'MISSED'})")
    say(
        f"    max relative difference of the {RANK} singular values: {rel:.1e} (goal <= 1e-4: "
        f"{'met' if rel <= 1e-4 else 'MISSED'}); dense sigma_65../sigma_1 <= {tail:.1e}"
    )


def write_llama_run(root: Path, name: str, seed: int) -> Path:
    """A run with adapter.safetensors and adapter_init.safetensors (A0 = A minus a learned part, B0 = 0),
    so that every factor (A, B, dA, dW-right, dW-left) applies."""
    g = torch.Generator().manual_seed(seed)
    tensors, init = {}, {}
    for layer in range(LAYERS):
        for proj in PROJ:
            m = f"model.layers.{layer}.self_attn.{proj}"
            tensors[f"{m}.lora_A"] = torch.randn(RANK, IN, generator=g) / RANK**0.5
            tensors[f"{m}.lora_B"] = torch.randn(OUT, RANK, generator=g) * 0.01
            init[f"{m}.lora_A"] = (
                tensors[f"{m}.lora_A"] - 0.1 * torch.randn(RANK, IN, generator=g) / RANK**0.5
            )
            init[f"{m}.lora_B"] = torch.zeros(OUT, RANK)
    meta = adapter_metadata(
        rank=RANK,
        alpha=2 * RANK,
        scaling=2.0,
        base_model="llama-7b-shaped",
        targets=list(PROJ),
        init="gaussian",
        rslora=False,
    )
    run = root / name
    save_adapter(run / "adapter.safetensors", tensors, meta)
    save_adapter(run / "adapter_init.safetensors", init, meta)
    return run


def bench_similarity(say, cli: bool) -> None:
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="lorascope-bench-") as tmp:
        root = Path(tmp)
        run_a, run_b = write_llama_run(root, "r64-s0", 0), write_llama_run(root, "r64-s1", 1)
        size = sum(f.stat().st_size for r in (run_a, run_b) for f in r.glob("*.safetensors")) / 2**20
        n_modules = LAYERS * len(PROJ)
        say(
            f"(b) lorascope similarity, two Llama-7B-shaped adapters: {n_modules} modules "
            f"({LAYERS} layers x {','.join(PROJ)}), {OUT}x{IN}, r={RANK}, {size:.0f} MiB on disk"
        )

        def load_only():  # both files of both runs: load_run reads the init too
            return [load_file(str(f)) for f in files]

        files = [r / f for r in (run_a, run_b) for f in ("adapter.safetensors", "adapter_init.safetensors")]

        def cold(fn):
            """fn with the two files evicted from the page cache first: read from the disk."""

            def run():
                drop_page_cache(files)
                return fn()

            return run

        def read_all():
            # load_file maps the file: bytes are read only when touched. Copying every tensor
            # once is the least any analysis must pay, so that is the fair denominator.
            return [[t.clone() for t in d.values()] for d in load_only()]

        _, t_lazy = timed(load_only, repeat=3)
        _, t_load = timed(read_all, repeat=3)
        _, t_load_cold = timed(cold(read_all), repeat=3)
        say(f"    load the two files (safetensors.load_file, mmap, lazy):      {t_lazy:7.2f} s   (best of 3)")
        say(f"    load the two files and read every byte (the denominator):    {t_load:7.2f} s   (best of 3)")
        say(f"    the same, the files evicted from the page cache first:       {t_load_cold:7.2f} s")
        for factor in FACTORS:

            def similarity(factor=factor):
                a, b = load_run(run_a), load_run(run_b)
                return run_similarity(a, b, factor).summary()

            repeat = 2
            summary, t_sim = timed(similarity, repeat=repeat)
            _, t_sim_cold = timed(cold(similarity), repeat=repeat)
            ratio, ratio_cold = t_sim / t_load, t_sim_cold / t_load_cold
            say(
                f"    load_run x2 + phi of all modules, factor {factor:<8}:     {t_sim:7.2f} s   "
                f"= {ratio:.2f}x loading "
                f"(goal <= 3x: {'met' if ratio <= 3 else 'MISSED'}); mean phi_11 {summary.phi_11.mean():.3f}"
            )
            say(
                f"      files out of the page cache:                               {t_sim_cold:7.2f} s   "
                f"= {ratio_cold:.2f}x loading them from the disk "
                f"(goal <= 3x: {'met' if ratio_cold <= 3 else 'MISSED'})"
            )
        if cli:
            from lorascope.cli import main

            t0 = time.perf_counter()
            with open(os.devnull, "w") as devnull:
                stdout, sys.stdout = sys.stdout, devnull
                try:
                    rc = main(["similarity", str(run_a), str(run_b), "--out", str(root / "out")])
                finally:
                    sys.stdout = stdout
            t_cli = time.perf_counter() - t0
            pngs = len(list((root / "out").glob("*.png")))
            say(f"    for reference, the whole CLI incl. {pngs} heatmap PNGs (rc={rc}):   {t_cli:7.2f} s")


def main() -> None:
    global LAYERS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-cli", action="store_true", help="skip the end-to-end CLI timing (drawing figures)")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--layers", type=int, default=32, help="layers of the two adapters (default: 32)")
    p.add_argument("--skip-svd", action="store_true", help="skip (a), the dense SVD of one ΔW")
    p.add_argument(
        "--note", default="", help="a line for the results file (e.g. that the machine was shared)"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = Report("analysis", threads=torch.get_num_threads(), torch_version=torch.__version__)
    say = report.say
    if args.note:
        say(args.note)
    LAYERS = args.layers
    if not args.skip_svd:
        bench_svd(say)
    bench_similarity(say, cli=not args.no_cli)
    if not args.no_write:
        report.write(RESULTS)


if __name__ == "__main__":
    main()
