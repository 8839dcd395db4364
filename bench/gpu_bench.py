"""The GPU in one short call (≤ 8 minutes on one H200): decompositions, the W-side analyses, training.

  1. decompositions of 4096² and 8192² W (a decaying spectrum over a Gaussian bulk, built on the GPU):
     cuSOLVER's dense SVD (torch.linalg.svd) and eigh of W Wᵀ, torch's randomized svd_lowrank (top-64),
     lorascope's block Krylov top-64 (`truncated.top_svd`, float64); time, and the error of the top-64 σ
     against float64 svdvals
  2. `amplification` and `intruders` (compare.w_and_delta, k = r, k = 10) with device cuda against cpu, on a
     7B-shaped base built on this machine from a seed by bench/w_scale_bench.py's builder, with a few
     layers only so that it fits the time (nothing large travels)
  3. LoRA training tokens/s, lorascope against PEFT, on a 1B-shaped bf16 Llama (random init from a
     LlamaConfig: hidden 2048, 16 layers, GQA 32/8 heads), q_proj and v_proj, r = 16, steps alternated

    python bench/gpu_bench.py              # on a CUDA machine: writes bench/results/gpu_bench.txt
    python bench/gpu_bench.py --dry-run    # anywhere: every step at toy sizes on the CPU, writes nothing

Without CUDA (and without --dry-run) it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results" / "gpu_bench.txt"

import torch  # noqa: E402
from report import Report  # noqa: E402  (bench/report.py)

BUDGET_S = 7.5 * 60  # stop starting new measurements after this: the whole call stays within 8 minutes


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(dev: torch.device, fn):
    """(result, seconds) of fn(), the device synchronised before and after."""
    _sync(dev)
    t0 = time.perf_counter()
    out = fn()
    _sync(dev)
    return out, time.perf_counter() - t0


def decaying(n: int, dev: torch.device, seed: int = 0) -> torch.Tensor:
    """(n, n) float32 on `dev`: σ_i ∝ i^-0.7 on a rank-256 part plus a Gaussian bulk (as w_scale_bench)."""
    g = torch.Generator(device=dev).manual_seed(seed)
    rank = min(256, n)
    left = torch.randn(n, rank, generator=g, device=dev) / n**0.5
    right = torch.randn(n, rank, generator=g, device=dev) / n**0.5
    sigma = 8.0 * torch.arange(1, rank + 1, dtype=torch.float32, device=dev) ** -0.7
    return (left * sigma) @ right.T + 0.05 * torch.randn(n, n, generator=g, device=dev) / n**0.5


# ----------------------------------------------------------------------------- 1. decompositions


def decompositions(say, dev: torch.device, sizes, k: int, out_of_time) -> None:
    from lorascope.analysis.truncated import top_svd

    say(f"1. decompositions on {dev}: top-{k} σ error = max_i |σ_i - σ_i(float64)| / σ_1")
    for n in sizes:
        if out_of_time():
            say(f"  {n}²: skipped (time budget)")
            continue
        W = decaying(n, dev)
        ref, t_ref = timed(dev, lambda W=W: torch.linalg.svdvals(W.double()))
        say(f"  {n}² float64 svdvals (the reference)            {t_ref:8.2f} s")

        def err(sigma, ref=ref):
            s = sigma.double().flatten()[:k].to(ref.device)
            return float((s - ref[:k]).abs().max() / ref[0])

        def eigh_sigma(X):
            return torch.linalg.eigvalsh(X @ X.T).flip(0).clamp_min(0).sqrt()

        routes = {
            "torch.linalg.svd float32 (U, S, Vh)": lambda W=W: torch.linalg.svd(W, full_matrices=False)[1],
            "torch.linalg.svd float64 (U, S, Vh)": lambda W=W: torch.linalg.svd(
                W.double(), full_matrices=False
            )[1],
            "torch.linalg.eigh(W Wᵀ) float32": lambda W=W: eigh_sigma(W),
            "torch.linalg.eigh(W Wᵀ) float64": lambda W=W: eigh_sigma(W.double()),
            f"torch.svd_lowrank q={k + 8}, niter=4": lambda W=W: torch.svd_lowrank(W, q=k + 8, niter=4)[1],
            f"lorascope block Krylov top-{k} float64": lambda W=W: top_svd(W, k, device=dev)[1],
        }
        for name, fn in routes.items():
            if out_of_time():
                say(f"  {n}² {name}: skipped (time budget)")
                continue
            fn()  # warm-up: cuSOLVER handles, workspaces
            sigma, t = timed(dev, fn)
            say(f"  {n}² {name:<44} {t:8.3f} s   error {err(sigma):.1e}")
        del W


# ----------------------------------------------------------------------------- 2. the W-side analyses


def analyses(say, dev: torch.device, where: Path, layers: int, tiny: bool, out_of_time) -> None:
    import w_scale_bench as wsb

    from lorascope.compare.w_and_delta import amplification_table, intruder_tables
    from lorascope.runs import load_run

    wsb.configure("7b", None)
    wsb.CFG.update(layers=layers, analysed=layers)
    if tiny:
        wsb.CFG.update(hidden=256, mlp=512, vocab=1000, kv=256, rank=8)
    base, adapter = where / "base", where / "adapter"
    _, t_build = timed(dev, lambda: (wsb.build_base(base, say), wsb.build_adapter(adapter, base)))
    run = load_run(adapter)
    n = len(wsb.modules())
    say(
        f"2. analyses on a {wsb.CFG['hidden']}-hidden, {layers}-layer Llama-7B-shaped base built here from a "
        f"seed ({t_build:.0f} s), PEFT r = {wsb.CFG['rank']}: {n} modules; "
        f"cpu ({torch.get_num_threads()} threads) against {dev}, each cold (empty W-spectra cache), then warm"
    )
    devices = ["cpu"] + ([str(dev)] if dev.type == "cuda" else [])
    results = {}
    for d in devices:
        cache = where / f"wspectra-{d.replace(':', '')}"
        os.environ["LORASCOPE_CACHE"] = str(cache)
        for name, fn in (("amplification", amplification_table), ("intruders", intruder_tables)):
            for state in ("cold", "warm"):
                if out_of_time():
                    say(f"  {name} {state} on {d}: skipped (time budget)")
                    continue
                out, t = timed(dev, lambda fn=fn, d=d: fn(run, device=d))
                results[(name, state, d)] = (out, t)
                say(f"  {name:<14} {state} on {d:<6} {t:8.2f} s  ({t / n:.3f} s per module)")
        shutil.rmtree(cache, ignore_errors=True)
    if len(devices) == 2:
        for name in ("amplification", "intruders"):
            for state in ("cold", "warm"):
                cpu, gpu = results.get((name, state, "cpu")), results.get((name, state, devices[1]))
                if cpu and gpu:
                    say(f"  {name} {state}: cuda {cpu[1] / gpu[1]:.1f}x faster than cpu")
        a, b = (
            results.get(("amplification", "cold", "cpu")),
            results.get(("amplification", "cold", devices[1])),
        )
        if a and b:
            diff = float(
                (a[0]["amplification"] - b[0]["amplification"]).abs().max()
                / a[0]["amplification"].abs().max()
            )
            say(f"  amplification, cuda against cpu: max relative difference {diff:.1e}")
        a, b = results.get(("intruders", "cold", "cpu")), results.get(("intruders", "cold", devices[1]))
        if a and b:
            same = bool((a[0][0]["count"].to_numpy() == b[0][0]["count"].to_numpy()).all())
            diff = float((a[0][0]["min_max_cos"] - b[0][0]["min_max_cos"]).abs().max())
            say(f"  intruders, cuda against cpu: same counts {same}, min max|cos| differ by {diff:.1e}")


# ----------------------------------------------------------------------------- 3. training


def llama(dev: torch.device, tiny: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        cfg = LlamaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        )  # fmt: skip
    else:  # Llama-3.2-1B-shaped
        cfg = LlamaConfig(
            vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
        )  # fmt: skip
    torch.manual_seed(0)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    return LlamaForCausalLM(cfg).to(device=dev, dtype=dtype), cfg


def training(say, dev: torch.device, tiny: bool, steps: int, batch: int, seq: int, out_of_time) -> None:
    from peft import LoraConfig, get_peft_model

    from lorascope.lora import add_lora

    targets, rank = ["q_proj", "v_proj"], 16
    models = {}
    for kind in ("lorascope", "peft"):
        model, cfg = llama(dev, tiny)
        if kind == "lorascope":
            add_lora(model, targets, rank, 2.0 * rank)
        else:
            model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        models[kind] = (model, opt)
    params = sum(p.numel() for p in models["lorascope"][0].parameters())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g).to(dev)

    def step(kind):
        model, opt = models[kind]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = {"lorascope": [], "peft": []}
    for i in range(steps + 2):  # two warm-up steps each; then alternate who goes first
        if out_of_time():
            break
        for kind in ("lorascope", "peft") if i % 2 else ("peft", "lorascope"):
            _, t = timed(dev, lambda kind=kind: step(kind))
            if i >= 2:
                times[kind].append(t)
    say(
        f"3. LoRA training on {dev}: a {params / 1e9:.2f}B-parameter Llama ({cfg.hidden_size} hidden, "
        f"{cfg.num_hidden_layers} layers), {'bf16' if dev.type == 'cuda' else 'float32'}, q_proj, v_proj, "
        f"r = {rank}, batch {batch} x {seq} tokens, {len(times['peft'])} alternated steps each"
    )
    if not times["peft"]:
        say("  skipped (time budget)")
        return
    med = {k: statistics.median(v) for k, v in times.items()}
    for kind in ("lorascope", "peft"):
        say(f"  {kind:<10} median step {med[kind]:.4f} s   {batch * seq / med[kind]:10.0f} tokens/s")
    say(f"  lorascope / peft tokens/s = {med['peft'] / med['lorascope']:.3f}")
    if dev.type == "cuda":
        say(f"  peak CUDA memory (both models): {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB")


# ----------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: checks that every step runs")
    p.add_argument("--layers", type=int, default=2, help="layers of the 7B-shaped base of part 2")
    p.add_argument("--steps", type=int, default=30, help="training steps per variant (part 3)")
    p.add_argument("--where", type=Path, help="folder for the base of part 2 (default: a temporary folder)")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    args = p.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print(
            f"gpu_bench: no CUDA device visible to torch {torch.__version__}: nothing measured "
            "(--dry-run runs on the CPU)"
        )
        return
    dev = torch.device("cpu") if args.dry_run else torch.device("cuda")
    start = time.perf_counter()

    def out_of_time() -> bool:
        return time.perf_counter() - start > BUDGET_S

    report = Report("GPU", threads=torch.get_num_threads(), torch_version=torch.__version__)
    say = report.say
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        say(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    else:
        say("dry run: toy sizes on the CPU (no timing here means anything)")
    tiny = args.dry_run
    decompositions(say, dev, (256, 512) if tiny else (4096, 8192), 16 if tiny else 64, out_of_time)
    where = args.where or Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        analyses(say, dev, where, 1 if tiny else args.layers, tiny, out_of_time)
    finally:
        if args.where is None:
            shutil.rmtree(where, ignore_errors=True)
    batch, seq = (2, 32) if tiny else (8, 1024)
    training(say, dev, tiny, 3 if tiny else args.steps, batch, seq, out_of_time)
    say(f"total {time.perf_counter() - start:.0f} s")
    if not args.dry_run and not args.no_write:
        report.write(RESULTS)


if __name__ == "__main__":
    main()
