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

# The two bases: Llama-2-7B's whole checkpoint; Llama-70B's attention projections q_proj, v_proj only
# (GQA: 8 key-value heads of 128, so v_proj is 1024 x 8192), the tensors the adapter touches.
SHAPES = {
    "7b": {"hidden": 4096, "mlp": 11008, "layers": 32, "vocab": 32000, "kv": 4096, "rank": 64,
           "heads": 32, "shard": 10 * 10**9, "whole": True},
    "70b": {"hidden": 8192, "mlp": 28672, "layers": 80, "vocab": 32000, "kv": 1024, "rank": 16,
            "heads": 64, "shard": 5 * 10**9, "whole": False},
}  # fmt: skip
TARGETS = ("q_proj", "v_proj")
RESULTS = {
    "7b": Path(__file__).resolve().parent / "results" / "w_scale_bench.txt",
    "70b": Path(__file__).resolve().parent / "results" / "w_scale_bench_70b.txt",
}
ROOT = Path(__file__).resolve().parents[1]
CFG = dict(SHAPES["7b"], name="7b", analysed=32)  # set by configure(): the shape and the layers analysed


def configure(shape: str, layers: int | None) -> None:
    CFG.update(SHAPES[shape], name=shape)
    CFG["analysed"] = min(layers or CFG["layers"], CFG["layers"])


def out_features(proj: str) -> int:
    return CFG["kv"] if proj in ("k_proj", "v_proj") else CFG["hidden"]


def modules(layers: int | None = None) -> list[str]:
    """The adapted modules of the first `layers` layers (default: the layers analysed)."""
    n = CFG["analysed"] if layers is None else layers
    return [f"model.layers.{i}.self_attn.{p}" for i in range(n) for p in TARGETS]


# ----------------------------------------------------------------------------- building the base


def _tensors():
    """(key, shape) in the order of a Llama checkpoint (70b: the attention projections q, v only)."""
    H, M, V = CFG["hidden"], CFG["mlp"], CFG["vocab"]
    whole = CFG["whole"]
    if whole:
        yield "model.embed_tokens.weight", (V, H)
    for i in range(CFG["layers"]):
        p = f"model.layers.{i}."
        if whole:
            yield p + "input_layernorm.weight", (H,)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj") if whole else TARGETS:
            yield p + f"self_attn.{proj}.weight", (out_features(proj), H)
        if whole:
            yield p + "post_attention_layernorm.weight", (H,)
            yield p + "mlp.gate_proj.weight", (M, H)
            yield p + "mlp.up_proj.weight", (M, H)
            yield p + "mlp.down_proj.weight", (H, M)
    if whole:
        yield "model.norm.weight", (H,)
        yield "lm_head.weight", (V, H)


def _decaying(key: str, shape: tuple[int, int]):
    """(out, in) bf16 with σ_i ∝ i^-0.7 on a rank-256 part plus a Gaussian bulk, seeded by the key."""
    import zlib

    import torch

    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    (out, n), rank = shape, 256
    left = torch.randn(out, rank, generator=g) / out**0.5
    right = torch.randn(n, rank, generator=g) / n**0.5
    sigma = 8.0 * torch.arange(1, rank + 1, dtype=torch.float32) ** -0.7
    W = (left * sigma) @ right.T + 0.05 * torch.randn(out, n, generator=g) / n**0.5
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

    zeros = bytes(64 * 2**20)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for key, shape in entries:
            if key.endswith(tuple(f"{p}.weight" for p in TARGETS)):
                f.write(_decaying(key, shape).view(torch.int16).numpy().tobytes())
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
        if current and size + nbytes > CFG["shard"]:
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
    heads = CFG["heads"]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": CFG["hidden"],
        "intermediate_size": CFG["mlp"], "num_hidden_layers": CFG["layers"], "num_attention_heads": heads,
        "num_key_value_heads": heads * CFG["kv"] // CFG["hidden"], "vocab_size": CFG["vocab"],
        "torch_dtype": "bfloat16",
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
    r = CFG["rank"]
    for m in modules(CFG["layers"]):
        A = torch.randn(r, CFG["hidden"], generator=g) / r**0.5
        B = 0.01 * torch.randn(out_features(m.rsplit(".", 1)[1]), r, generator=g)
        adapters[m] = run_format.Adapter(A, B, 2.0)
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
    return {"count": int((max_cos < eps).sum()), "max_cos": max_cos.tolist()}


def child(route: str, adapter: Path) -> None:
    import torch

    # Every route's modules imported before the clock starts: compiling or importing them is not the
    # route's cost (without a bytecode cache, importing lorascope.base_model alone took about 1 s).
    import lorascope.analysis.amplification
    import lorascope.analysis.intruders
    import lorascope.base_model  # noqa: F401
    from lorascope.runs import load_run

    run = load_run(adapter)
    layers = set(range(CFG["analysed"]))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, cpu0 = time.perf_counter(), time.process_time()
    out: dict = {}
    if route == "read":
        import re

        from lorascope.base_model import iter_base_weights

        names = [m for m in modules() if re.search(os.environ.get("BENCH_READ_MODULES", ""), m)]
        out["tensors"] = sum(1 for _ in iter_base_weights(run, names))
    elif route == "amplification":
        from lorascope.compare.w_and_delta import amplification_table

        df = amplification_table(run, layers=layers)
        out["amplification_q0"] = float(df["amplification"].iloc[0])
        out["proj_w_q0"] = float(df["proj_w"].iloc[0])
    elif route == "intruders":
        from lorascope.compare.w_and_delta import intruder_tables

        chosen = {"layers": set(range(int(os.environ["BENCH_INTRUDER_LAYERS"])))}
        table, _ = intruder_tables(run, modules=os.environ.get("BENCH_INTRUDER_MODULES") or None, **chosen)
        out["count"] = int(table["count"].sum())
        out["modules"] = len(table)
        out["min_max_cos_q0"] = float(table["min_max_cos"].iloc[0])
    elif route in (
        "dense-amplification",
        "dense-intruders",
        "one-amplification",
        "one-intruders",
        "full-svd",
    ):
        from lorascope.base_model import base_weights

        m = modules()[0]
        W = base_weights(run, [m])[m]  # float32: bf16 exactly
        a = run.adapters[m]
        t0, cpu0 = time.perf_counter(), time.process_time()  # the decomposition only: reading is the floor's
        if route == "dense-amplification":
            out.update(_dense_amplification(W, a.A, a.B, a.scaling, CFG["rank"]))
        elif route == "dense-intruders":
            out.update(_dense_intruders(W, a.A, a.B, a.scaling))
        elif route == "full-svd":
            torch.linalg.svd(W.double(), full_matrices=False)  # W's own full decomposition, float64
        elif route == "one-amplification":
            from lorascope.analysis.amplification import amplification

            res = amplification(W.double(), a)
            out.update(proj_dw=res["proj_dw"], proj_w=res["proj_w"], proj_random=res["proj_random"])
        else:  # cold: hash W, its whole decomposition (U, σ, Wᵀ U), stored; then the structured top-10
            from lorascope.analysis.intruders import intruder_dimensions
            from lorascope.wspectra import SpectraCache

            res = intruder_dimensions(W, a, k=10, w_basis=SpectraCache().entry(W).basis())
            out.update(count=res["count"], max_cos=res["max_cos"].tolist())
    else:
        raise SystemExit(f"unknown route {route}")
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = time.process_time() - cpu0  # all threads; steadier than wall time when shared
    out["rss_start_gb"] = rss0 / 2**20
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(out), flush=True)


def run_child(route: str, adapter: Path, cache: Path, threads: int | None, env_extra=None) -> dict:
    env = dict(os.environ, LORASCOPE_CACHE=str(cache), PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    env.update(BENCH_SHAPE=CFG["name"], BENCH_LAYERS=str(CFG["analysed"]), **(env_extra or {}))
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


def best_of(repeat: int, *route) -> dict:
    """The fastest of `repeat` runs of a route that leaves no state behind (hot reads, warm analyses):
    on a 2-core machine shared with other work, the minimum is the route's cost, the rest is noise.
    Records every time in "all_seconds"."""
    runs = [run_child(*route) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "all_seconds": [r["seconds"] for r in runs]}


# ----------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--shape", choices=sorted(SHAPES), default="7b", help="the base: Llama-7B or -70B shaped")
    p.add_argument("--where", type=Path, help="folder for the base (default: <lorascope cache>/bench)")
    p.add_argument("--layers", type=int, help="analyse the first N layers only (default: all)")
    p.add_argument(
        "--intruder-layers",
        type=int,
        help="intruders cold and warm on the first N layers (default: --layers)",
    )
    p.add_argument("--rss-layers", type=int, help="also read the W of N layers: is the peak RSS flat in N?")
    p.add_argument("--intruder-modules", default="", help="a regex: intruders on these modules only")
    p.add_argument("--threads", type=int, help="torch threads in every route (default: torch's choice)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each hot/warm route; the fastest counts")
    p.add_argument("--skip-intruders", action="store_true", help="skip intruders cold and warm")
    p.add_argument("--skip-dense", action="store_true", help="skip the dense one-module references")
    p.add_argument(
        "--skip-dense-intruders", action="store_true", help="skip svd(W) + svd(W + dW) of one module"
    )
    p.add_argument(
        "--note", default="", help="a line for the results file (e.g. that the machine was shared)"
    )
    p.add_argument("--clean", action="store_true", help="delete the base and adapter when done")
    p.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = p.parse_args()
    if args.child:
        configure(os.environ["BENCH_SHAPE"], int(os.environ["BENCH_LAYERS"]))
        child(args.child, args.adapter)
        return
    configure(args.shape, args.layers)

    sys.path.insert(0, str(ROOT))
    from lorascope.models import cache_dir

    where = args.where or cache_dir() / "bench"
    tag = f"llama-{CFG['name']}-shaped"
    base, adapter = where / tag, where / f"{tag}-peft-r{CFG['rank']}"
    spectra = where / f"wspectra-{os.getpid()}"
    import torch

    report = Report(
        f"W-scale ({CFG['name']}-shaped)", threads=args.threads or torch.get_num_threads(),
        torch_version=torch.__version__,
    )  # fmt: skip
    say = report.say
    if args.note:
        say(args.note)
    build_base(base, say)
    build_adapter(adapter, base)
    size = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 1e9
    n = len(modules())
    int_layers = min(args.intruder_layers or CFG["analysed"], CFG["layers"])  # more or fewer than --layers
    n_int = len(modules(int_layers)) // (len(TARGETS) if args.intruder_modules else 1)  # a regex: q or v
    say(
        f"base: {base} ({size:.1f} GB bf16, {CFG['layers']} layers, hidden {CFG['hidden']}, "
        f"{'MLP ' + str(CFG['mlp']) if CFG['whole'] else 'attention q_proj, v_proj only'}, v_proj "
        f"{CFG['kv']} x {CFG['hidden']}); adapter: PEFT, {', '.join(TARGETS)}, r = {CFG['rank']}; "
        f"analysed: {n} modules ({CFG['analysed']} layers)"
    )

    def show(name: str, r: dict, per: int | None = None, extra: str = "") -> None:
        each = f"  ({r['seconds'] / per:6.2f} s per module)" if per else ""
        runs = r.get("all_seconds", [])
        best = f"   best of {', '.join(f'{t:.1f}' for t in runs)} s" if len(runs) > 1 else ""
        say(
            f"  {name:<38} {r['seconds']:8.1f} s{each}   peak RSS {r['peak_rss_gb']:.2f} GB "
            f"(after imports {r['rss_start_gb']:.2f})   load {r['load']:.1f}{extra}{best}"
        )

    threads = args.threads
    try:
        drop_page_cache(base.glob("*.safetensors"))
        cold_read = run_child("read", adapter, spectra, threads)
        read = best_of(args.repeat, "read", adapter, spectra, threads)
        per_read = read["seconds"] / n
        say(f"the floor: read the {n} W tensors (q, v of every layer analysed; bf16 -> float32 (out, in))")
        show("files out of the page cache", cold_read, n)
        show("files in the page cache", read, n)
        results = {}
        say(
            f"amplification (Table 7, k = r = {CFG['rank']}), every module; W's top-k by block Krylov, "
            "cached:"
        )
        for state in ("cold", "warm"):
            route = ("amplification", adapter, spectra, threads)
            results[f"amp-{state}"] = r = (
                run_child(*route) if state == "cold" else best_of(args.repeat, *route)
            )
            show(f"{state} W-spectra cache", r, n, f"   = {r['seconds'] / read['seconds']:.1f}x the floor")
        if not args.skip_intruders:
            say(
                f"intruder dimensions (k = 10, eps = 0.5), {n_int} modules; cold: W = U Σ Vᵀ whole, cached; "
                "then W + dW's top-10 from it (w_plus_delta):"
            )
            extra = {"BENCH_INTRUDER_LAYERS": str(int_layers)}
            extra["BENCH_INTRUDER_MODULES"] = args.intruder_modules
            if args.intruder_modules or int_layers != CFG["analysed"]:  # the floor of these modules
                configure(args.shape, int_layers)
                only = {"BENCH_READ_MODULES": args.intruder_modules}
                floor = best_of(args.repeat, "read", adapter, spectra, threads, only)
                configure(args.shape, args.layers)
                per_read = floor["seconds"] / n_int
                show("the floor: read these W (page cache)", floor, n_int)
            for state in ("cold", "warm"):
                route = ("intruders", adapter, spectra, threads, extra)
                results[f"int-{state}"] = r = (
                    run_child(*route) if state == "cold" else best_of(args.repeat, *route)
                )
                show(
                    f"{state} W-spectra cache",
                    r,
                    n_int,
                    f"   = {r['seconds'] / n_int / per_read:.1f}x the floor",
                )
        if args.rss_layers:
            configure(args.shape, args.rss_layers)
            many = run_child("read", adapter, spectra, threads)
            configure(args.shape, args.layers)
            say(f"the floor again, on {args.rss_layers} layers: is the peak RSS flat in the layers?")
            show("read (files partly in the page cache)", many, len(modules(args.rss_layers)))
        one = {}
        if not args.skip_dense:
            say(f"one module ({modules()[0]}), the decomposition alone (W already read), side by side:")
            empty = where / f"wspectra-empty-{os.getpid()}"
            names = ["one-amplification", "dense-amplification", "one-intruders", "full-svd"]
            for name in names + ([] if args.skip_dense_intruders else ["dense-intruders"]):
                shutil.rmtree(empty, ignore_errors=True)  # every route cold
                one[name] = run_child(name, adapter, empty, threads)
            show("amplification, truncated (uncached)", one["one-amplification"])
            show("amplification, dense svdvals(W) float64", one["dense-amplification"])
            show("intruders cold: hash, U Σ Vᵀ, store, top-10", one["one-intruders"])
            show("W's own full decomposition svd(W) f64", one["full-svd"])
            for key in ("proj_dw", "proj_w", "proj_random"):
                a, d = one["one-amplification"][key], one["dense-amplification"][key]
                say(f"    {key}: truncated {a:.9g}, dense {d:.9g} (rel. diff. {abs(a - d) / abs(d):.1e})")
            if "dense-intruders" in one:
                show("intruders, dense svd(W) + svd(W + dW)", one["dense-intruders"])
                new, dense = one["one-intruders"], one["dense-intruders"]
                diff = max(abs(x - y) for x, y in zip(new["max_cos"], dense["max_cos"], strict=True))
                say(
                    f"    intruders: count {new['count']} vs {dense['count']} dense, max |cos| of the top-10 "
                    f"differ by at most {diff:.1e}"
                )
        say("verdict:")
        ratio = results["amp-warm"]["seconds"] / read["seconds"]
        say(
            f"  amplification warm = {ratio:.1f}x the floor (goal <= 3x: {'met' if ratio <= 3 else 'MISSED'})"
        )
        per_cold = results["amp-cold"]["seconds"] / n
        if one:
            speedup = one["dense-amplification"]["seconds"] / per_cold
            say(
                f"  amplification cold: {per_cold:.2f} s per module (read, hash, top-k, store, numbers) "
                f"against {one['dense-amplification']['seconds']:.1f} s for one dense svdvals = "
                f"{speedup:.0f}x faster "
                f"(goal >= 25x: {'met' if speedup >= 25 else 'MISSED'})"
            )
        if "int-warm" in results:
            ratio = results["int-warm"]["seconds"] / n_int / per_read
            say(
                f"  intruders warm = {ratio:.1f}x the floor per module "
                f"(goal <= 3x: {'met' if ratio <= 3 else 'MISSED'}; "
                "no product with W beyond the fingerprint's pass)"
            )
            if one:
                cold = one["one-intruders"]["seconds"] / one["full-svd"]["seconds"]
                say(
                    f"  intruders cold, one module = {cold:.2f}x W's own full svd (goal <= 1.5x: "
                    f"{'met' if cold <= 1.5 else 'MISSED'}); the whole-base cold route "
                    f"{results['int-cold']['seconds'] / n_int:.1f} s per module"
                )
        peak = max(r["peak_rss_gb"] for r in (read, *results.values()))
        say(
            f"  peak RSS of any whole-base route: {peak:.2f} GB "
            f"(goal < 3 GB: {'met' if peak < 3 else 'MISSED'})"
        )
        cached = sum(f.stat().st_size for f in spectra.rglob("*.safetensors")) / 1e9
        say(f"  W-spectra cache after the run: {cached:.2f} GB")
    finally:
        shutil.rmtree(spectra, ignore_errors=True)
        shutil.rmtree(where / f"wspectra-empty-{os.getpid()}", ignore_errors=True)
        if args.clean:
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(adapter, ignore_errors=True)
    if not args.no_write:
        report.write(RESULTS[CFG["name"]])


if __name__ == "__main__":
    main()
