"""W at the scale people adapt: amplification and intruder dimensions on a Llama-7B-shaped base.

Builds once (about 13.5 GB, a few minutes) a Llama-7B-shaped checkpoint: 32 layers, hidden 4096,
MLP 11008, vocabulary 32000, bf16, in two safetensors shards with an index, like the hub's
Llama-2-7b-hf. q_proj and v_proj have a decaying spectrum (a rank-256 part with σ_i ∝ i^-0.7
over a Gaussian bulk); every other tensor is zeros, written so that the files have their real
sizes. On it, a PEFT adapter (q_proj, v_proj, r = 64). Then, each route in its own process (so
that its peak RSS is its own), side by side in one run:

  read          the 64 W tensors through lorascope.base_model (the floor: no analysis)
  amplification lorascope.compare.w_and_delta.amplification_table, cold (empty W-spectra cache) and warm
  intruders     lorascope.compare.w_and_delta.intruder_tables (k = 10), cold and warm
  dense         on one module, the dense route these replace: SVDs of the whole W (and W + ΔW)

Routes that leave nothing behind (hot reads, warm analyses) run `--repeat` times (3) and the
fastest counts, so that other work on a shared 2-core machine does not decide a ratio.

    .venv/bin/python bench/w_scale_bench.py            # prints, and writes bench/results/w_scale_bench.txt
    .venv/bin/python bench/w_scale_bench.py --clean    # then deletes the base and the bench's caches

The base lives in <lorascope cache>/bench/llama-7b-shaped ($LORASCOPE_CACHE, else
~/.cache/lorascope): reused by the next run, never in the repository, never built by tests.
The W-spectra cache of the run is a fresh folder beside it, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from report import Report, drop_page_cache  # bench/report.py: run as a script, bench/ is on sys.path

HIDDEN, MLP, LAYERS, VOCAB, RANK = 4096, 11008, 32, 32000, 64
TARGETS = ("q_proj", "v_proj")
SHARD_BYTES = 10 * 10**9  # the hub's Llama-2-7b-hf: a 9.98 GB and a 3.5 GB shard
RESULTS = Path(__file__).resolve().parent / "results" / "w_scale_bench.txt"
ROOT = Path(__file__).resolve().parents[1]


def modules() -> list[str]:
    return [f"model.layers.{i}.self_attn.{p}" for i in range(LAYERS) for p in TARGETS]


# ----------------------------------------------------------------------------- building the base


def _tensors():
    """(key, shape) in the order of a Llama checkpoint."""
    yield "model.embed_tokens.weight", (VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (HIDDEN,)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield p + f"self_attn.{proj}.weight", (HIDDEN, HIDDEN)
        yield p + "post_attention_layernorm.weight", (HIDDEN,)
        yield p + "mlp.gate_proj.weight", (MLP, HIDDEN)
        yield p + "mlp.up_proj.weight", (MLP, HIDDEN)
        yield p + "mlp.down_proj.weight", (HIDDEN, MLP)
    yield "model.norm.weight", (HIDDEN,)
    yield "lm_head.weight", (VOCAB, HIDDEN)


def _decaying(key: str):
    """(out, in) bf16 with σ_i ∝ i^-0.7 on a rank-256 part plus a Gaussian bulk, seeded by the key."""
    import zlib

    import torch

    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    n, rank = HIDDEN, 256
    left = torch.randn(n, rank, generator=g) / n**0.5
    right = torch.randn(n, rank, generator=g) / n**0.5
    sigma = 8.0 * torch.arange(1, rank + 1, dtype=torch.float32) ** -0.7
    W = (left * sigma) @ right.T + 0.05 * torch.randn(n, n, generator=g) / n**0.5
    return W.to(torch.bfloat16)


def _write_shard(path: Path, entries: list[tuple[str, tuple]]) -> None:
    """A safetensors file written tensor by tensor (the format: u64 header size, JSON header, bytes):
    zeros for the tensors the bench does not read, so memory stays at one tensor."""
    header, offset = {}, 0
    for key, shape in entries:
        size = 2 * int(math.prod(shape))
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    import torch

    zeros = bytes(2 * MLP * HIDDEN)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for key, shape in entries:
            if key.endswith(tuple(f"{p}.weight" for p in TARGETS)):
                f.write(_decaying(key).view(torch.int16).numpy().tobytes())
            else:
                size = 2 * int(math.prod(shape))
                for start in range(0, size, len(zeros)):
                    f.write(zeros[: min(len(zeros), size - start)])
    os.replace(tmp, path)


def build_base(folder: Path, say) -> None:
    if (folder / "model.safetensors.index.json").is_file():
        return
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], [], 0
    for key, shape in _tensors():
        nbytes = 2 * int(math.prod(shape))
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((key, shape))
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for i, entries in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _write_shard(folder / name, entries)
        weight_map.update({key: name for key, _ in entries})
        total += sum(2 * int(math.prod(s)) for _, s in entries)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": MLP, "num_hidden_layers": LAYERS, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": VOCAB, "torch_dtype": "bfloat16",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))  # last: marks complete
    say(f"built {folder} ({total / 1e9:.1f} GB in {len(shards)} shards) in {time.perf_counter() - t0:.0f} s")


def build_adapter(folder: Path, base: Path) -> None:
    if (folder / "adapter_config.json").is_file():
        return
    import torch

    from lorascope import run_format
    from lorascope.peft_format import export_peft

    g = torch.Generator().manual_seed(0)
    adapters = {}
    for m in modules():
        A = torch.randn(RANK, HIDDEN, generator=g) / RANK**0.5
        adapters[m] = run_format.Adapter(A, 0.01 * torch.randn(HIDDEN, RANK, generator=g), 2.0)
    export_peft(run_format.Run(path=folder, adapters=adapters, meta={"base_model": str(base)}), folder)


# ----------------------------------------------------------------------------- the routes (child processes)


def _dense_amplification(W, A, B, s, k):
    """Table 7 for one module as before the truncated route: a dense SVD of the whole W."""
    import torch

    from lorascope.analysis import delta_svd, random_orthonormal

    W = W.double()
    U, S, V = delta_svd(A, B, s)
    U, V = U[:, :k], V[:, :k]
    sigma_w = torch.linalg.svdvals(W)  # all 4096 σ, to use k of them
    U_r, V_r = random_orthonormal(W.shape[0], k, 0), random_orthonormal(W.shape[1], k, 1)
    proj_dw = float(torch.linalg.matrix_norm(U.T @ W @ V))
    return {
        "proj_dw": proj_dw,
        "proj_w": float(torch.linalg.vector_norm(sigma_w[:k])),
        "proj_random": float(torch.linalg.matrix_norm(U_r.T @ W @ V_r)),
    }


def _dense_intruders(W, A, B, s, k=10, eps=0.5):
    """Intruder dimensions as before: dense SVDs of W and of the formed W + ΔW."""
    import torch

    W = W.double()
    U_w = torch.linalg.svd(W, full_matrices=False)[0]
    U_ft = torch.linalg.svd(W + s * (B.double() @ A.double()), full_matrices=False)[0][:, :k]
    max_cos = (U_ft.T @ U_w).abs().amax(1)
    return {"count": int((max_cos < eps).sum()), "max_cos_min": float(max_cos.min())}


def child(route: str, adapter: Path) -> None:
    import torch

    # Every route's modules imported before the clock starts: compiling or importing them is not the
    # route's cost (without a bytecode cache, importing lorascope.base_model alone took about 1 s).
    import lorascope.analysis.amplification
    import lorascope.analysis.intruders
    import lorascope.base_model  # noqa: F401
    from lorascope.runs import load_run

    run = load_run(adapter)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out: dict = {}
    if route == "read":
        from lorascope.base_model import iter_base_weights

        out["tensors"] = sum(1 for _ in iter_base_weights(run, modules()))
    elif route == "amplification":
        from lorascope.compare.w_and_delta import amplification_table

        df = amplification_table(run)
        out["amplification_q0"] = float(df["amplification"].iloc[0])
        out["proj_w_q0"] = float(df["proj_w"].iloc[0])
    elif route == "intruders":
        from lorascope.compare.w_and_delta import intruder_tables

        table, _ = intruder_tables(run)
        out["count"] = int(table["count"].sum())
        out["min_max_cos_q0"] = float(table["min_max_cos"].iloc[0])
    elif route == "left-methods":
        import numpy as np

        from lorascope.analysis.truncated import left_basis, top_svd
        from lorascope.base_model import base_weights

        m = modules()[0]
        W = base_weights(run, [m])[m]
        U_ft = top_svd(W, 10, delta=run.adapters[m])[0]
        max_cos = {}
        for method in ("eigh", "svd"):
            t1 = time.perf_counter()
            U_w = left_basis(W, method=method)
            out[f"{method}_seconds"] = time.perf_counter() - t1
            max_cos[method] = (U_ft.T @ U_w).abs().amax(1).numpy()
        out["max_cos_diff"] = float(np.abs(max_cos["eigh"] - max_cos["svd"]).max())
        out["same_count"] = bool(((max_cos["eigh"] < 0.5) == (max_cos["svd"] < 0.5)).all())
    elif route in ("dense-amplification", "dense-intruders", "one-amplification", "one-intruders"):
        from lorascope.base_model import base_weights

        m = modules()[0]
        W = base_weights(run, [m])[m]
        a = run.adapters[m]
        t0 = time.perf_counter()  # the decomposition only: reading is the floor's business
        if route == "dense-amplification":
            out.update(_dense_amplification(W, a.A, a.B, a.scaling, RANK))
        elif route == "dense-intruders":
            out.update(_dense_intruders(W, a.A, a.B, a.scaling))
        elif route == "one-amplification":
            from lorascope.analysis.amplification import amplification

            res = amplification(W, a)
            out.update(proj_dw=res["proj_dw"], proj_w=res["proj_w"], proj_random=res["proj_random"])
        else:
            from lorascope.analysis.intruders import intruder_dimensions

            res = intruder_dimensions(W, a, k=10)
            out.update(count=res["count"], max_cos_min=float(res["max_cos"].min()))
    else:
        raise SystemExit(f"unknown route {route}")
    out["seconds"] = time.perf_counter() - t0
    out["rss_start_gb"] = rss0 / 2**20
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(out), flush=True)


def run_child(route: str, adapter: Path, cache: Path, threads: int | None) -> dict:
    env = dict(os.environ, LORASCOPE_CACHE=str(cache), PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "--child", route, "--adapter", str(adapter)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{route} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1].removeprefix("RESULT "))
    out["load"] = os.getloadavg()[0]
    return out


def best_of(repeat: int, route: str, adapter: Path, cache: Path, threads: int | None) -> dict:
    """The fastest of `repeat` runs of a route that leaves no state behind (hot reads, warm analyses):
    on a 2-core machine shared with other work, the minimum is the route's cost, the rest is noise.
    Records every time in "all_seconds"."""
    runs = [run_child(route, adapter, cache, threads) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "all_seconds": [r["seconds"] for r in runs]}


# ----------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--where", type=Path, help="folder for the base (default: <lorascope cache>/bench)")
    p.add_argument("--threads", type=int, help="torch threads in every route (default: torch's choice)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each hot/warm route; the fastest counts")
    p.add_argument(
        "--skip-intruders", action="store_true", help="skip intruders cold and warm (~20 min of full bases)"
    )
    p.add_argument("--clean", action="store_true", help="delete the base and adapter when done")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    args = p.parse_args()
    if args.child:
        child(args.child, args.adapter)
        return

    sys.path.insert(0, str(ROOT))
    from lorascope.models import cache_dir

    where = args.where or cache_dir() / "bench"
    base, adapter = where / "llama-7b-shaped", where / "llama-7b-shaped-peft-r64"
    spectra = where / f"wspectra-{os.getpid()}"
    import torch

    report = Report(
        "W-scale", threads=args.threads or torch.get_num_threads(), torch_version=torch.__version__
    )
    say = report.say
    build_base(base, say)
    build_adapter(adapter, base)
    size = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 1e9
    say(
        f"base: {base} ({size:.1f} GB bf16, {LAYERS} layers, hidden {HIDDEN}, MLP {MLP}); "
        f"adapter: PEFT, {', '.join(TARGETS)}, r = {RANK}: {len(modules())} modules"
    )

    def show(name: str, r: dict, per: int | None = None, extra: str = "") -> None:
        each = f"  ({r['seconds'] / per:6.2f} s per module)" if per else ""
        runs = r.get("all_seconds", [])
        best = f"   best of {', '.join(f'{t:.1f}' for t in runs)} s" if len(runs) > 1 else ""
        say(
            f"  {name:<38} {r['seconds']:8.1f} s{each}   peak RSS {r['peak_rss_gb']:.2f} GB "
            f"(after imports {r['rss_start_gb']:.2f})   load {r['load']:.1f}{extra}{best}"
        )

    n = len(modules())
    try:
        drop_page_cache(base.glob("*.safetensors"))
        cold_read = run_child("read", adapter, spectra, args.threads)
        read = best_of(args.repeat, "read", adapter, spectra, args.threads)
        say(f"the floor: read the {n} W tensors (q, v of every layer; bf16 -> float32 (out, in))")
        show("files out of the page cache", cold_read, n)
        show("files in the page cache", read, n)
        results = {}
        say("amplification (Table 7, k = r = 64), every module; W's top-64 by block Krylov, cached:")
        for state in ("cold", "warm"):
            route = ("amplification", adapter, spectra, args.threads)
            results[f"amp-{state}"] = r = (
                run_child(*route) if state == "cold" else best_of(args.repeat, *route)
            )
            show(f"{state} W-spectra cache", r, n, f"   = {r['seconds'] / read['seconds']:.1f}x the floor")
        say("intruder dimensions (k = 10, eps = 0.5), every module; W + dW's top-10 matrix-free:")
        for state in () if args.skip_intruders else ("cold", "warm"):
            route = ("intruders", adapter, spectra, args.threads)
            results[f"int-{state}"] = r = (
                run_child(*route) if state == "cold" else best_of(args.repeat, *route)
            )
            ratio = f"   = {r['seconds'] / read['seconds']:.1f}x the floor"
            show(f"{state} W-spectra cache", r, n, ratio)
        say(f"one module ({modules()[0]}), the decomposition alone (W already read):")
        empty = where / f"wspectra-empty-{os.getpid()}"
        one_amp = run_child("one-amplification", adapter, empty, args.threads)
        dense_amp = run_child("dense-amplification", adapter, empty, args.threads)
        one_int = run_child("one-intruders", adapter, empty, args.threads)
        dense_int = run_child("dense-intruders", adapter, empty, args.threads)
        show("amplification, truncated (uncached)", one_amp)
        show("amplification, dense svdvals(W) float64", dense_amp)
        show("intruders, eigh + matrix-free (uncached)", one_int)
        show("intruders, dense svd(W) + svd(W + dW)", dense_int)
        left = run_child("left-methods", adapter, empty, args.threads)
        say(
            f"  W's full left basis: eigh(W Wᵀ) {left['eigh_seconds']:.1f} s, svd(W) "
            f"{left['svd_seconds']:.1f} s; max |cos| of the top-10 of W + dW differ by "
            f"{left['max_cos_diff']:.1e} "
            f"(same intruders at eps = 0.5: {left['same_count']})"
        )
        for key in ("proj_dw", "proj_w", "proj_random"):
            rel = abs(one_amp[key] - dense_amp[key]) / abs(dense_amp[key])
            say(f"    {key}: truncated {one_amp[key]:.9g}, dense {dense_amp[key]:.9g} (rel. diff. {rel:.1e})")
        say(
            f"    intruders: count {one_int['count']} vs {dense_int['count']}, min max|cos| "
            f"{one_int['max_cos_min']:.6f} vs {dense_int['max_cos_min']:.6f}"
        )
        per_cold = results["amp-cold"]["seconds"] / n
        say("verdict:")
        ratio = results["amp-warm"]["seconds"] / read["seconds"]
        verdict = "met" if ratio <= 3 else "MISSED"
        say(f"  amplification warm = {ratio:.1f}x the floor (goal <= 3x: {verdict})")
        speedup = dense_amp["seconds"] / per_cold
        say(
            f"  amplification cold: {per_cold:.2f} s per module (read, hash, top-64, store, numbers) against "
            f"{dense_amp['seconds']:.1f} s for one dense svdvals = {speedup:.0f}x faster "
            f"(goal >= 20x: {'met' if speedup >= 20 else 'MISSED'})"
        )
        if "int-cold" in results:
            per = results["int-cold"]["seconds"] / n
            say(
                f"  intruders cold: {per:.1f} s per module, dominated by W's full left basis (eigh of W Wᵀ, "
                f"{one_int['seconds']:.1f} s with the top-10 of W + dW) against {dense_int['seconds']:.1f} s "
                f"dense; warm: {results['int-warm']['seconds'] / n:.2f} s per module"
            )
            ratio = results["int-warm"]["seconds"] / read["seconds"]
            verdict = "met" if ratio <= 3 else "MISSED"
            say(
                f"  intruders warm = {ratio:.1f}x the floor (goal <= 3x: {verdict}; the top-10 of W + dW "
                "is new for every adapter: each block Krylov step is two products with W)"
            )
        peak = max(r["peak_rss_gb"] for r in (read, *results.values()))
        verdict = "met" if peak < 3 else "MISSED"
        say(f"  peak RSS of any whole-base route: {peak:.2f} GB (goal < 3 GB: {verdict})")
        cached = sum(f.stat().st_size for f in spectra.rglob("*.safetensors")) / 1e9
        say(f"  W-spectra cache after the run: {cached:.2f} GB (top-64 and full left bases of {n} W)")
    finally:
        shutil.rmtree(spectra, ignore_errors=True)
        shutil.rmtree(where / f"wspectra-empty-{os.getpid()}", ignore_errors=True)
        if args.clean:
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(adapter, ignore_errors=True)
    if not args.no_write:
        report.write(RESULTS)


if __name__ == "__main__":
    main()
