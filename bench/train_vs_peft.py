"""Training step time and peak memory: lorascope's LoRA versus PEFT's, and LoRA versus full fine-tuning.

Same model (embedded MiniLM, sequence classification, 5 labels), targets (query, value), rank,
batch and steps. Step times are taken alternately (lorascope step, PEFT step, ...) in one process
so that both see the same machine load; the ratio is of the medians. Peak memory is measured in a
fresh subprocess per variant: peak RSS during training minus RSS after loading the model (CPU),
or torch.cuda.max_memory_allocated (GPU).

    python bench/train_vs_peft.py [--steps 12] [--rank 8] [--batch 8] [--seq-len 128]

Prints the results and writes them to bench/results/train_vs_peft.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lorascope import data, models  # noqa: E402
from lorascope.lora import add_lora  # noqa: E402

TARGETS = ["query", "value"]


def batch(args) -> dict[str, torch.Tensor]:
    tok = models.load_tokenizer("minilm")
    task = data.build_task({"name": "bbc", "source": "bbc", "max_val": 1}, tok, args.seq_len)
    return next(task.train_batches(args.batch, seed=0))  # one fixed batch: (B, T)


def build(kind: str, args):
    torch.manual_seed(0)
    model = models.load_model("minilm", models.SEQ_CLS, 5)
    if kind == "lorascope":
        add_lora(model, TARGETS, args.rank, 16.0, trainable=["classifier"])
    elif kind == "peft":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=args.rank, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0,
                         modules_to_save=["classifier"])  # fmt: skip
        model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    return model, torch.optim.AdamW(params, lr=1e-4)


def step(model, opt, b) -> float:
    t0 = time.perf_counter()
    model(**b).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(kind: str, args) -> dict:
    """Run in a fresh process: training memory of one variant."""
    b = batch(args)
    model, opt = build(kind, args)
    base = rss_mb()
    for _ in range(3):  # optimizer state appears at the first step
        step(model, opt, b)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"kind": kind, "train_mb": peak - base, "peak_mb": peak, "trainable": trainable}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--memory", choices=["lorascope", "peft", "full"])
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    if args.memory:
        print(json.dumps(memory(args.memory, args)))
        return

    b = batch(args)
    ours, ours_opt = build("lorascope", args)
    peft, peft_opt = build("peft", args)
    for _ in range(2):  # warm-up: allocator, kernels
        step(ours, ours_opt, b), step(peft, peft_opt, b)
    t_ours, t_peft = [], []
    for i in range(args.steps):  # alternate, and alternate who goes first
        if i % 2:
            t_ours.append(step(ours, ours_opt, b)), t_peft.append(step(peft, peft_opt, b))
        else:
            t_peft.append(step(peft, peft_opt, b)), t_ours.append(step(ours, ours_opt, b))
    del ours, peft, ours_opt, peft_opt

    mem = {}
    for kind in ("lorascope", "peft", "full"):
        cmd = [sys.executable, __file__, "--memory", kind, "--rank", str(args.rank),
               "--batch", str(args.batch), "--seq-len", str(args.seq_len)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        mem[kind] = json.loads(out.strip().splitlines()[-1])

    m_ours, m_peft = statistics.median(t_ours), statistics.median(t_peft)
    ours_mb, peft_mb, full_mb = (mem[k]["train_mb"] for k in ("lorascope", "peft", "full"))
    ours_pk, peft_pk, full_pk = (mem[k]["peak_mb"] for k in ("lorascope", "peft", "full"))
    lines = [
        f"# train_vs_peft: MiniLM (BERT, 22.7M) seq-cls, targets {TARGETS}, r={args.rank}, "
        f"batch {args.batch} x {args.seq_len} tokens, {args.steps} alternating steps",
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"median step  lorascope {m_ours:.3f} s   peft {m_peft:.3f} s   ratio {m_ours / m_peft:.3f}",
        f"step range   lorascope {min(t_ours):.3f}-{max(t_ours):.3f} s   "
        f"peft {min(t_peft):.3f}-{max(t_peft):.3f} s",
        f"train memory lorascope {ours_mb:.0f} MB   peft {peft_mb:.0f} MB   ratio {ours_mb / peft_mb:.3f}",
        f"peak RSS     lorascope {ours_pk:.0f} MB   peft {peft_pk:.0f} MB   ratio {ours_pk / peft_pk:.3f}",
        f"LoRA vs full FT: train memory {ours_mb:.0f} vs {full_mb:.0f} MB (ratio {ours_mb / full_mb:.3f}); "
        f"peak RSS {ours_pk:.0f} vs {full_pk:.0f} MB; trainable "
        f"{mem['lorascope']['trainable']:,} vs {mem['full']['trainable']:,}",
        "# training memory = peak RSS during 3 steps minus RSS after loading (CPU); RSS is noisy at ~10 MB",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = ROOT / "bench" / "results" / "train_vs_peft.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
