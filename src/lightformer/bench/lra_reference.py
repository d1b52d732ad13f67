"""Long Range Arena's published accuracies (Tay et al. 2021, "Long Range Arena: A Benchmark for Efficient
Transformers", Table 1; the repository's leaderboard as of 8 November 2020), keyed by the lightformer mixer that
implements each model, so the capacity leaderboard can quote a paper row next to ours.

The tasks differ where data could not be had offline: our ``image`` is sequential Fashion-MNIST (LRA: grayscale
CIFAR-10), ``text`` is the First Folio genre of Shakespeare windows (LRA: IMDb), ``retrieval`` is same-file matching
of standard-library windows (LRA: AAN citations), and our models are CPU-sized. Only ``listops`` and
``pathfinder`` are the same tasks; the other columns are context, not a reproduction.
"""

from __future__ import annotations

LRA_TASKS = ("listops", "text", "retrieval", "image", "pathfinder")

#: model name in LRA Table 1 -> (lightformer mixer, accuracies in % for LRA_TASKS)
TABLE1: dict[str, tuple[str | None, tuple[float, float, float, float, float]]] = {
    "Transformer": ("softmax", (36.37, 64.27, 57.46, 42.44, 71.40)),
    "Local Attention": ("sliding_window", (15.82, 52.98, 53.39, 41.46, 66.63)),
    "Sparse Trans.": (None, (17.07, 63.58, 59.59, 44.24, 71.71)),
    "Longformer": ("longformer", (35.63, 62.85, 56.89, 42.22, 69.71)),
    "Linformer": ("linformer", (35.70, 53.94, 52.27, 38.56, 76.34)),
    "Reformer": ("reformer_lsh", (37.27, 56.10, 53.40, 38.07, 68.50)),
    "Sinkhorn Trans.": (None, (33.67, 61.20, 53.83, 41.23, 67.45)),
    "Synthesizer": (None, (36.99, 61.68, 54.67, 41.61, 69.45)),
    "BigBird": ("bigbird", (36.05, 64.02, 59.29, 40.83, 74.87)),
    "Linear Trans.": ("linear", (16.13, 65.90, 53.09, 42.34, 75.30)),
    "Performer": ("performer", (18.01, 65.40, 53.82, 42.77, 77.05)),
}


def paper_row(mixer: str) -> tuple[str, dict[str, float]] | None:
    """``(LRA model name, {task: accuracy %})`` for a mixer LRA reports, else ``None``."""
    for name, (m, accs) in TABLE1.items():
        if m == mixer:
            return name, dict(zip(LRA_TASKS, accs))
    return None
