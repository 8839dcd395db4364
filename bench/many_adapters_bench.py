"""Benchmark `lorascope subspace` against N and `lorascope merge` of 10 adapters, beside reading the files.

Synthetic Llama-7B-shaped PEFT adapter folders (q_proj and v_proj of 32 layers, 4096 × 4096, r = 16,
float16: 16 MiB each) are written to a temporary folder (or --dir, kept for reuse), never into the
repository. Every adapter of a
module shares a planted 4-dimensional subspace on both sides of ΔW (A's first 4 rows and B's first 4
columns lie in it, with per-adapter mixing) plus its own random directions (noise). The files are read
once so that they sit in the page cache; then each measurement runs in its own subprocess, so that its
peak RSS is its own:

  load       `load_run` of the N folders one at a time on one thread (as run_subspace reads them), each
             dropped: reading the files, the floor (best of 3 from the page cache, once for N ≥ 200;
             once from the disk, the files evicted first)
  subspace   `run_subspace(folders, side="right")`: load + bases + shared subspace + Monte Carlo floor
             (16 trials); checks that the planted subspace is found (φ with it, knee, shared_dims)
  load10     `load_run` of 10 folders, kept (what a merge holds)
  form10     load10, then per module the merged ΔW = Σ_i s_i B_i A_i formed once (float32, dense):
             the denominator of the merge goal
  merge      `run_merge(10 folders, method)`: the merged ΔW with PEFT's merge utilities and every measure;
             the time inside PEFT's utilities is printed apart (the floor no lorascope change lowers)

Wall and CPU time are both printed: the machine is shared, and the wall time stretches with its load.

    .venv/bin/python bench/many_adapters_bench.py                      # N = 10, 100; merge of 10
    .venv/bin/python bench/many_adapters_bench.py --sizes 10,100,500 --dir /tmp/bench22   # 8 GB for 500;
    rm -rf /tmp/bench22                                                                   # when done
    .venv/bin/python bench/many_adapters_bench.py --layers 2 ...       # fewer layers (a part of the model)

TIES and DARE prune with PEFT's own `prune` (torch.topk over 16.8 M entries per adapter, about 2 s each
on 2 cores), so every merge is timed on --merge-layers layers (default 2: 4 modules) and the whole model's
time is extrapolated from the time per module (said so in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import (  # bench/report.py: run as a script, bench/ is on sys.path
    Report,
    drop_page_cache,
    save_peft_adapter,
)

OUT, IN, RANK, LAYERS, PLANTED = 4096, 4096, 16, 32, 4
PROJ = ("q_proj", "v_proj")
RESULTS = Path(__file__).resolve().parent / "results" / "many_adapters_bench.txt"
MERGE_N = 10


def modules(layers: int) -> list[str]:
    return [f"model.layers.{layer}.self_attn.{p}" for layer in range(layers) for p in PROJ]


def planted(module_index: int):
    """The planted orthonormal bases (in, 4) and (out, 4) of one module, the same for every adapter."""
    import torch

    g = torch.Generator().manual_seed(77 + module_index)
    right = torch.linalg.qr(torch.randn(IN, PLANTED, generator=g))[0]
    left = torch.linalg.qr(torch.randn(OUT, PLANTED, generator=g))[0]
    return right, left


def write_adapters(root: Path, n: int, layers: int, dtype: str = "float16") -> list[Path]:
    """n PEFT folders root/a{i:03d}/adapter: A (16, 4096) = planted rows (strong) + noise rows, B alike,
    stored in `dtype` (float16 by default, as 7B adapters are usually shared: 16 MiB each)."""
    import torch

    store = getattr(torch, dtype)
    bases = [planted(j) for j in range(len(modules(layers)))]
    folders = []
    for i in range(n):
        folder = root / f"a{i:03d}" / "adapter"
        if (folder / "adapter_config.json").is_file():  # written last: a complete folder, reused
            folders.append(folder)
            continue
        shutil.rmtree(folder, ignore_errors=True)  # a folder cut short by an interrupted run
        g = torch.Generator().manual_seed(1000 + i)
        tensors = {}
        for j, m in enumerate(modules(layers)):
            right, left = bases[j]
            A = torch.randn(RANK, IN, generator=g) / IN**0.5  # rows of norm ~1: the adapter's own
            A[:PLANTED] += 3.0 * (torch.randn(PLANTED, PLANTED, generator=g) @ right.T)
            B = torch.randn(OUT, RANK, generator=g) / OUT**0.5
            B[:, :PLANTED] += 3.0 * (left @ torch.randn(PLANTED, PLANTED, generator=g))
            tensors[f"base_model.model.{m}.lora_A.weight"] = A.to(store).contiguous()
            tensors[f"base_model.model.{m}.lora_B.weight"] = (0.01 * B).to(store).contiguous()
        folders.append(save_peft_adapter(folder, tensors, RANK, PROJ))
    return folders


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> float:
    """CPU time of this process (user + system, every thread): what the wall time would be on one
    otherwise idle core, the number to read when other work shares the machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(mode: str, folders: list[Path], opts: dict) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    import torch

    from lorascope.analysis.linalg import one_thread
    from lorascope.runs import load_run

    t_import = time.perf_counter()
    if mode.startswith("merge:"):
        from lorascope.analysis.merging import merge_utils

        merge_utils()  # PEFT's import (seconds, once per process) is not part of a merge
    load_run(folders[0])  # every lazy import of the loaders, before the clock
    rss0 = peak_rss_mib()
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    out: dict = {"rss_imports": rss0, "threads": torch.get_num_threads(), "imports": t0 - t_import}
    if mode == "load":
        torch.set_num_threads(1)  # as run_subspace reads them: its loads run on one thread
        for f in folders:
            run = load_run(f)
            del run
    elif mode == "load10":
        torch.set_num_threads(1)  # as run_merge reads them
        runs = [load_run(f) for f in folders]
        out["modules"] = len(runs[0].adapters)
    elif mode == "form10":
        with one_thread():
            runs = [load_run(f) for f in folders]
        t1 = time.perf_counter()
        for m in runs[0].adapters:
            A = torch.cat([r.adapters[m].A for r in runs], 0)
            B = torch.cat([r.adapters[m].scaling * r.adapters[m].B for r in runs], 1)
            merged = B @ A  # (4096, 4096) float32: the merged ΔW of task arithmetic, formed once
            del merged
        out["form"] = time.perf_counter() - t1
    elif mode == "subspace":
        import lorascope.compare.subspaces as many
        from lorascope.analysis.similarity import phi_grid
        from lorascope.compare.subspaces import run_subspace

        timed = {"floor": 0.0}
        original = many._floors

        def floors(*a, **k):
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                timed["floor"] += time.perf_counter() - t

        many._floors = floors
        rep = run_subspace(folders, side="right", trials=opts["trials"])
        out["floor_seconds"] = timed["floor"]
        table = rep.table()
        order = modules(LAYERS)  # the planted bases are indexed by the module's place in the model
        phis = [
            float(
                phi_grid(r.basis[:, :PLANTED], planted(order.index(m))[0].double())[PLANTED - 1, PLANTED - 1]
            )
            for m, r in rep.results.items()
        ]
        out.update(
            modules=len(table),
            knee=sorted(set(int(x) for x in table.knee)),
            shared_dims=sorted(set(int(x) for x in table.shared_dims)),
            phi_min=min(phis),
            energy=float(table.energy.median()),
            floor=float(table.floor.median()),
            floor_hi=float(table.floor_hi.median()),
        )
    elif mode.startswith("merge:"):
        from lorascope.compare.merges import run_merge

        method = mode.split(":", 1)[1]
        layers = opts.get("merge_layers")
        rep = run_merge(folders, method, layers=f"0-{layers - 1}" if layers else None)
        out.update(
            modules=len(rep.modules),
            peft_seconds=rep.meta["peft_seconds"],
            retention=float(rep.retention().retention.mean()),
            interference_right=rep.off_diagonal("right")[0],
            floor_right=rep.off_diagonal("right")[1],
        )
        if "sign_conflict" in rep.modules:
            out["sign_conflict"] = float(rep.modules.sign_conflict.mean())
            out["sign_floor"] = float(rep.modules.sign_conflict_floor.mean())
    out["seconds"] = time.perf_counter() - t0
    out["cpu"] = cpu_seconds() - cpu0
    out["rss"] = peak_rss_mib()
    return out


def measure(mode: str, root: Path, n: int, opts: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--root", str(root), "--n", str(n),
           "--opts", json.dumps(opts)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{mode} N={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def partial(args, say) -> None:
    """subspace for N adapters of a few layers, in their own temporary folder; extrapolated per module."""
    n, layers = (int(x) for x in args.partial.split(":"))
    with tempfile.TemporaryDirectory(prefix="lorascope-many-bench-partial-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_adapters(root, n, layers)
        files = sorted(root.glob("a*/adapter/adapter_model.safetensors"))
        say(
            f"partial: {n} adapters of {layers} layer(s) ({2 * layers} modules, "
            f"{files[0].stat().st_size / 2**20:.0f} MiB each), written in {time.perf_counter() - t0:.0f} s; "
            f"floor {args.partial_trials} trials"
        )
        for f in files:
            f.read_bytes()
        load = measure("load", root, n, {})
        sub = measure("subspace", root, n, {"trials": args.partial_trials})
        mods = 2 * layers
        per = (sub["seconds"] - load["seconds"] - sub["floor_seconds"]) / mods
        whole = (
            LAYERS * 2 * per
            + sub["floor_seconds"] * 16 / args.partial_trials
            + load["seconds"] * LAYERS / layers
        )
        bases = sub["rss"] - sub["rss_imports"]
        kept = n * mods * IN * RANK * 4 / 2**20  # the bases run_subspace keeps, MiB
        rss_whole = sub["rss"] + kept * (LAYERS / layers - 1)
        say(
            f"{n:>5} load {load['seconds']:.1f} s, subspace {sub['seconds']:.1f} s of which the floor "
            f"{sub['floor_seconds']:.1f} s; {per:.1f} s per module beyond loading and the floor; RSS "
            f"{sub['rss']:.0f} MiB ({bases:.0f} above imports for {mods} modules); planted found "
            f"(phi_min, knee, shared_dims): {sub['phi_min']:.4f}, {sub['knee']}, {sub['shared_dims']}"
        )
        say(
            f"      extrapolated to {2 * LAYERS} modules and a 16-trial floor: about {whole / 60:.0f} min, "
            f"RSS about {rss_whole:.0f} MiB ({kept * LAYERS / layers:.0f} MiB of kept bases; estimates, not "
            "measured)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,100", help="numbers of adapters for subspace (default 10,100)")
    p.add_argument("--layers", type=int, default=LAYERS, help=f"layers per adapter (default {LAYERS})")
    p.add_argument("--trials", type=int, default=16, help="Monte Carlo trials of the floor (default 16)")
    p.add_argument(
        "--merge-layers",
        type=int,
        default=2,
        help="layers each merge is timed on (default 2); the whole model's time is extrapolated per module",
    )
    p.add_argument("--methods", default="task_arithmetic,ties,dare_ties", help="merge methods timed")
    p.add_argument(
        "--partial",
        metavar="N:LAYERS",
        help="also time subspace for N adapters of only LAYERS layers (e.g. 500:1), when the whole model "
        "at that N would take too long here; the whole model's time is extrapolated per module",
    )
    p.add_argument("--partial-trials", type=int, default=4, help="floor trials of --partial (default 4)")
    p.add_argument(
        "--dir", "--root", dest="root", type=Path,
        help="write the adapters there once and reuse them on later runs; never removed (remove it "
        "yourself, e.g. rm -rf /tmp/bench22). Default: a temporary folder, removed at the end",
    )  # fmt: skip
    p.add_argument("--no-merge", action="store_true", help="time subspace only")
    p.add_argument("--no-subspace", action="store_true", help="time merge only")
    p.add_argument("--append", action="store_true", help=f"append to {RESULTS} instead of replacing it")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--opts", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        folders = sorted(args.root.glob("a*/adapter"))[: args.n]
        print(json.dumps(child(args.child, folders, json.loads(args.opts))))
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    import torch

    report = Report("many-adapters", threads=torch.get_num_threads(), torch_version=torch.__version__)
    say = report.say
    with tempfile.TemporaryDirectory(prefix="lorascope-many-bench-") as tmp:
        root = args.root or Path(tmp)
        need = max(*sizes, MERGE_N)
        have = len(list(root.glob("a*/adapter")))
        if 0 < have < need:
            sys.exit(f"{root} holds {have} adapters, fewer than {need}: give an empty folder")
        if have == 0:
            t0 = time.perf_counter()
            write_adapters(root, need, args.layers)
            say(
                f"wrote {need} PEFT folders in {time.perf_counter() - t0:.0f} s (in {root}; "
                f"{'kept for reuse' if args.root else 'temporary, removed at the end'})"
            )
        files = sorted(root.glob("a*/adapter/adapter_model.safetensors"))[:need]
        size = files[0].stat().st_size / 2**20
        n_mod = 2 * args.layers
        say(
            f"adapters: PEFT folders, {args.layers} layers x {','.join(PROJ)} = {n_mod} modules, {OUT}x{IN}, "
            f"r={RANK}, float16, {size:.0f} MiB each; a planted {PLANTED}-dim subspace per module and side"
        )
        if not args.no_subspace:
            subspace_table(args, root, files, sizes, say)
        if not args.no_merge:
            merge_table(args, root, files, n_mod, say)
        if args.partial:
            partial(args, say)
        say(
            f"load average at the end: {os.getloadavg()[0]:.1f} (wall times stretch with it where the cores "
            "are shared; CPU s is the process's own CPU time)"
        )
    if not args.no_write:
        if args.append and RESULTS.is_file():
            report.lines = RESULTS.read_text().splitlines() + report.lines
        report.write(RESULTS)


def subspace_table(args, root: Path, files: list[Path], sizes: list[int], say) -> None:
    say(f"subspace (side right, k = r = 16, unweighted, floor: {args.trials} Monte Carlo trials):")
    say(
        f"{'N':>5} {'load s':>7} {'load disk s':>11} {'subspace s':>11} {'CPU s':>7} {'floor s':>8} "
        f"{'ratio':>6} {'RSS load MiB':>13} {'RSS subspace MiB':>17} {'load avg':>9}  "
        "planted (phi_min > 0.95, knee = 4; shared_dims)"
        "   E(16) / floor / band top"
    )
    for n in sizes:
        drop_page_cache(files[:n])
        disk = measure("load", root, n, {})
        for f in files[:n]:  # into the page cache: the ratio compares compute, not the disk
            f.read_bytes()
        reps = 3 if n < 200 else 1  # best of 3 from the page cache (once for the large N)
        load = min((measure("load", root, n, {}) for _ in range(reps)), key=lambda r: r["seconds"])
        avg = os.getloadavg()[0]
        sub = measure("subspace", root, n, {"trials": args.trials})
        found = sub["phi_min"] > 0.95 and sub["knee"] == [PLANTED]
        say(
            f"{n:>5} {load['seconds']:>7.1f} {disk['seconds']:>11.1f} {sub['seconds']:>11.1f} "
            f"{sub['cpu']:>7.0f} {sub['floor_seconds']:>8.1f} "
            f"{sub['seconds'] / load['seconds']:>6.1f} {load['rss']:>13.0f} {sub['rss']:>17.0f} "
            f"{avg:>4.1f}-{os.getloadavg()[0]:<4.1f}  "
            f"{'yes' if found else 'NO'} ({sub['phi_min']:.4f}, {sub['knee']}, {sub['shared_dims']})"
            f"{'':>10}{sub['energy']:.3f} / {sub['floor']:.3f} / {sub['floor_hi']:.3f}"
        )


def merge_table(args, root: Path, files: list[Path], n_mod: int, say) -> None:
    ten = [f for f in files[:MERGE_N]]
    for f in ten:
        f.read_bytes()
    load10 = min((measure("load10", root, MERGE_N, {}) for _ in range(3)), key=lambda r: r["seconds"])
    form10 = measure("form10", root, MERGE_N, {})
    floor = load10["seconds"] + form10["form"]
    say(
        f"merge of {MERGE_N} adapters: reading them {load10['seconds']:.1f} s (RSS "
        f"{load10['rss']:.0f} MiB); forming the merged ΔW once per module {form10['form']:.1f} s "
        f"({form10['form'] / n_mod:.2f} s per module); the goal's denominator (read + form) {floor:.1f} s"
    )
    say(
        f"{'method':>16} {'modules':>8} {'s':>8} {'s/module':>9} {'whole model s':>14} "
        f"{'x (read+form)':>14} {'CPU s':>7} {'PEFT s/module':>14} {'x without PEFT':>15} {'RSS MiB':>8}  "
        "retention  interference (floor)  sign conflict (floor)"
    )
    for method in args.methods.split(","):
        part = min(args.merge_layers, args.layers)
        res = measure(f"merge:{method}", root, MERGE_N, {"merge_layers": part})
        per = (res["seconds"] - load10["seconds"]) / res["modules"]
        whole = load10["seconds"] + per * n_mod
        est = "" if part == args.layers else " (est.)"
        peft = res["peft_seconds"] / res["modules"]  # PEFT's merge_utils calls alone, per module
        own = (whole - peft * n_mod) / floor  # lorascope's part: reading, forming ΔW_i, the measures
        sign = f"{res['sign_conflict']:.3f} ({res['sign_floor']:.3f})" if "sign_conflict" in res else "-"
        say(
            f"{method:>16} {res['modules']:>8} {res['seconds']:>8.1f} {per:>9.2f} {whole:>9.1f}{est:<5} "
            f"{whole / floor:>14.1f} {res['cpu']:>7.0f} {peft:>14.2f} {own:>15.1f} {res['rss']:>8.0f}  "
            f"{res['retention']:>9.3f}  "
            f"{res['interference_right']:.3f} ({res['floor_right']:.4f})       {sign}"
        )
    say(
        f"RSS after imports: {load10['rss_imports']:.0f} MiB. merge holds the 10 adapters' factors and "
        "one module's 10 dense ΔW (640 MiB float32) at a time."
    )


if __name__ == "__main__":
    main()
