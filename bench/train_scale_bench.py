"""Training memory and step time on 7B-shaped layers: lorascope's sweep against PEFT, side by side.

Random Llamas with Llama-2-7B's layer shapes (hidden 4096, MLP 11008, 32 heads, vocabulary 30522:
MiniLM's tokenizer, which ships with lorascope) in bf16, with 2 and 4 layers, are built once under
the lorascope cache ($LORASCOPE_CACHE/bench; 1.3 and 2.1 GB; never in the repository or in CI). Each
variant trains LoRA r = 8 on q_proj and v_proj for the same steps of the same batches (causal LM on
200,000 characters of the embedded Shakespeare, bf16 autocast) in a fresh process, so that its peak
RSS is its own:

    lorascope   lorascope.train.train, the function `python sweep.py` runs (model.dtype=auto: bf16)
    peft        PEFT's get_peft_model on the base loaded in bf16, the same AdamW loop

Variants run alternately (lorascope, peft, lorascope, peft, ...); step time is the median of each
variant's steps after its first. Printed: peak RSS and its ratio to PEFT's, step time and its ratio,
and the memory each added layer costs against that layer's bf16 bytes; then the same with gradient
checkpointing, and with an nf4 base where bitsandbytes is installed.

    python bench/train_scale_bench.py [--steps 4] [--batch 2] [--seq-len 128] [--repeats 2]

Writes bench/results/train_scale_bench.txt.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

HIDDEN, MLP, HEADS, VOCAB = 4096, 11008, 32, 30522
TARGETS = ["q_proj", "v_proj"]
RESULTS = ROOT / "bench" / "results" / "train_scale_bench.txt"


def layer_bytes() -> int:
    """bf16 bytes of one decoder layer: q, k, v, o (4096²) + gate, up, down (4096 × 11008) + 2 norms."""
    return 2 * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * MLP + 2 * HIDDEN)


def base_dir(layers: int) -> Path:
    """A random bf16 Llama with 7B-shaped layers, saved once under the cache."""
    from lorascope import models

    path = models.cache_dir() / "bench" / f"llama-7b-shaped-{layers}l-bf16"
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    print(f"building {path} (once)", flush=True)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=layers,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=2048,
        pad_token_id=0, bos_token_id=101, eos_token_id=102,
    )  # fmt: skip
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # created in bf16: never a 4-byte copy of the model
    model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(models.resolve("minilm")[0]).save_pretrained(tmp)
    tmp.rename(path)
    return path


def corpus() -> Path:
    """The first 200,000 characters of the embedded plays: enough batches, and a tokenization whose
    memory is small beside the model's (the whole corpus would dominate the peak RSS)."""
    from lorascope import data, models

    path = models.cache_dir() / "bench" / "shakespeare-200k.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data.shakespeare_text()[:200_000])
    return path


def run_config(base: Path, args, variant: dict) -> dict:
    return {
        "rank": 8,
        "model": {"name": "p7b", "name_or_path": str(base), "targets": TARGETS, "dtype": "auto",
                  "quantization": variant.get("quantization")},
        "task": {"name": "shakespeare", "source": "text", "kind": "lm", "path": str(corpus()),
                 "val_fraction": 0.05, "max_val": args.batch},
        "train": {"steps": args.steps, "batch_size": args.batch, "seq_len": args.seq_len, "dtype": "bf16",
                  "eval_batch_size": args.batch, "log_every": 10**6, "threads": args.threads,
                  "grad_checkpointing": bool(variant.get("checkpointing"))},
    }  # fmt: skip


# ----------------------------------------------------------------------------- one variant, in its process


def worker_lorascope(base: Path, args, variant: dict, out: Path) -> dict:
    import torch

    from lorascope.train import train

    step_times: list[float] = []
    real_step = torch.optim.AdamW.step

    def timed_step(self, *a, **kw):  # the time between optimizer steps: one whole training step
        result = real_step(self, *a, **kw)
        step_times.append(time.perf_counter())
        return result

    torch.optim.AdamW.step = timed_step
    summary = train(run_config(base, args, variant), out)
    deltas = [b - a for a, b in zip(step_times, step_times[1:], strict=False)]
    return {"status": summary["status"], "step_s": deltas}


def worker_peft(base: Path, args, variant: dict, out: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorascope import data, models

    torch.set_num_threads(args.threads)
    kw = {"dtype": torch.bfloat16}
    if variant.get("quantization"):
        kw.update(quantization_config=models.quantization_config(variant["quantization"], torch.bfloat16),
                  device_map={"": "cpu"})  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(base, **kw)
    tok = models.load_tokenizer(str(base))
    task = data.build_task(run_config(base, args, variant)["task"], tok, args.seq_len)
    if variant.get("checkpointing"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    batches = task.train_batches(args.batch, seed=0)
    step_s = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - t0)
    return {"status": "complete", "step_s": step_s[1:]}


def worker(args) -> None:
    variant = json.loads(args.worker)
    base = base_dir(variant["layers"])
    out = Path(args.out)
    fn = worker_lorascope if variant["kind"] == "lorascope" else worker_peft
    result = fn(base, args, variant, out)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- the comparison


def measure(variant: dict, args, scratch: Path) -> dict:
    import shutil

    out = scratch / "run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--worker", json.dumps(variant), "--out", str(out), "--steps",
           str(args.steps), "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--threads",
           str(args.threads)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not lines:
        raise SystemExit(f"{variant}: the worker failed:\n{p.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def compare(label: str, variant: dict, args, scratch: Path, report) -> dict:
    """Alternate lorascope and PEFT runs of one variant; report peak RSS and step time."""
    got: dict[str, list[dict]] = {"lorascope": [], "peft": []}
    for _ in range(args.repeats):
        for kind in got:
            got[kind].append(measure({**variant, "kind": kind}, args, scratch))
    rss = {k: min(r["peak_rss_mb"] for r in v) for k, v in got.items()}
    step = {k: statistics.median([s for r in v for s in r["step_s"]]) for k, v in got.items()}
    report.say(
        f"{label:<34} peak RSS {rss['lorascope']:7.0f} MB vs PEFT {rss['peft']:7.0f} MB "
        f"(ratio {rss['lorascope'] / rss['peft']:.3f}); step {step['lorascope']:6.2f} s vs "
        f"{step['peft']:6.2f} s (ratio {step['lorascope'] / step['peft']:.3f})"
    )
    return {"rss": rss, "step": step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-variants", action="store_true", help="only the plain bf16 comparison")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import tempfile

    import torch
    from report import Report

    for layers in (2, 4):
        base_dir(layers)
    corpus()
    report = Report("train scale", threads=args.threads, torch_version=torch.__version__)
    report.say(
        f"LoRA r = 8 on q_proj, v_proj of random Llamas with 7B-shaped layers (hidden {HIDDEN}, MLP {MLP}, "
        f"vocabulary {VOCAB}) stored in bf16; batch {args.batch} x {args.seq_len} tokens, {args.steps} "
        f"AdamW steps under bf16 autocast; peak RSS of a fresh process per run (best of {args.repeats}), "
        "step time the median over steps after the first, lorascope and PEFT alternating"
    )
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        two = compare("2 layers, bf16", {"layers": 2}, args, scratch, report)
        four = compare("4 layers, bf16", {"layers": 4}, args, scratch, report)
        per_layer = {k: (four["rss"][k] - two["rss"][k]) / 2 for k in ("lorascope", "peft")}
        report.say(
            f"memory per added layer: lorascope {per_layer['lorascope']:.0f} MB, "
            f"PEFT {per_layer['peft']:.0f} MB; "
            f"one layer's bf16 weights are {layer_bytes() / 2**20:.0f} MB"
        )
        if not args.skip_variants:
            compare(
                "2 layers, gradient checkpointing",
                {"layers": 2, "checkpointing": True},
                args,
                scratch,
                report,
            )
            if importlib.util.find_spec("bitsandbytes") is not None:
                compare("2 layers, nf4 base", {"layers": 2, "quantization": "nf4"}, args, scratch, report)
            else:
                report.say("nf4 base: not measured (bitsandbytes is not installed)")
    if not args.no_write:
        report.write(RESULTS)


if __name__ == "__main__":
    main()
