"""What `lorascope figures` can draw: the recipes by name, and the factors the φ figures are drawn for.

Kept apart from the recipes (and free of heavy imports) so that the CLI can describe them quickly.
"""

# The factors every similarity figure is drawn for: the paper's A, the learned part A − A0
# (after short training A can still be mostly its random init) and ΔW's input side.
FIGURE_FACTORS = ("A", "dA", "dW-right")

DESCRIPTIONS = {
    "fig3": "Fig. 3: φ between a small and a large rank at one layer, with the zoomed lower-left triangle",
    "fig4": "Fig. 4: φ between two seeds at one rank, beside two random Gaussian matrices",
    "fig6": "Fig. 6: Fig. 3 across layers",
    "fig7": "Fig. 7: Fig. 4 across layers",
    "fig8": "Fig. 8: φ between W's and ΔW's top singular directions, per rank and for a random matrix",
    "table7": "Table 7: ‖UᵀWV‖_F for U, V from ΔW / W / random, and the amplification ‖ΔW‖_F / ‖UᵀWV‖_F",
    "spectrum": "ΔW's normalised spectrum and 90 %-energy rank, each LoRA rank beside full fine-tuning",
    "intruders": "intruder dimensions of W + ΔW against ε, each LoRA rank beside full fine-tuning",
    "lora_vs_full": "φ between each LoRA rank's and full fine-tuning's top ΔW directions, both sides",
    "cross_task": "φ between adapters of two tasks on one model (a sibling sweep), beside seeds and chance",
    "trajectory": "how each run's ΔW formed over its snapshots (train.snapshot_every=N)",
    "ranks": "the rank table: held-out metric, parameters and cost per run",
    "subspace": "the directions ≥ 3 adapters of one rank (seeds, tasks) share, against random adapters",
    "merge": "what task arithmetic and TIES keep of ≥ 3 adapters, and how their bases interfere",
    "findings": "findings.md: whether each of the paper's findings holds on this sweep, with numbers",
}
