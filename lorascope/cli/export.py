"""`lorascope export RUN OUT_DIR`: a run as a PEFT LoRA folder (adapter_config.json + its safetensors)."""

from __future__ import annotations

from pathlib import Path

from lorascope.cli import inputs, options


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a run as a PEFT adapter folder",
        description=(
            "Write RUN's adapter as a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) "
            "in OUT_DIR, loadable with peft.PeftModel.from_pretrained."
        ),
    )
    p.add_argument("run", metavar="RUN", type=Path, help="run folder")
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder to write")
    p.add_argument("--format", default="peft", choices=["peft"], help="output format (default: peft)")
    p.add_argument(
        "--fan-in-fan-out",
        action="store_true",
        default=None,
        help="the base model stores W as (in, out), as GPT-2's Conv1D (default: from the run)",
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    options.add_allow_incomplete(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from lorascope.peft_format import export_peft

    run = inputs.load(args.run, args)
    export_peft(run, args.out_dir, fan_in_fan_out=args.fan_in_fan_out, overwrite=args.overwrite)
    print(f"wrote {args.format} adapter of {run.name} to {args.out_dir}")
    return 0
