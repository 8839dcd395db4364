"""What every bench shares: a header naming the machine, each line echoed and kept, then the results
file; and evicting files from the page cache, for timings that read from the disk.

report = Report("analysis", threads=torch.get_num_threads())
report.say("...")
report.write(RESULTS)          # bench/results/<name>.txt, unless --no-write
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


class Report:
    def __init__(self, name: str, *, threads: int, torch_version: str):
        self.lines: list[str] = []
        self.say(
            f"lorascope {name} bench  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
            f"torch {torch_version}, {threads} threads, {os.cpu_count()} CPUs, "
            f"{platform.machine()}, load average {os.getloadavg()[0]:.1f}"
        )

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")
        print(f"wrote {path}")


def drop_page_cache(paths) -> None:
    """Evict files from the page cache (fsync, then posix_fadvise DONTNEED): the next read hits the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def save_peft_adapter(folder: Path, tensors: dict, rank: int, targets) -> Path:
    """A PEFT LoRA folder (adapter_model.safetensors + adapter_config.json, α = 2r) of a synthetic
    7B-shaped adapter, as the many-adapter benches write them."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets),
        "base_model_name_or_path": "meta-llama/Llama-2-7b-hf", "bias": "none",
    }  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder
