"""Time easycls.thresholds on 50,000 x 100 predictions (the size fit.py must handle in < 1 s).

Run: python benchmarks/thresholds_speed.py [--repeat 3]
Two kinds of data: uniform random scores (uninformative) and scores of a mediocre model
(positives shifted up, sigmoid-shaped, many scores crowded near 0).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from easycls.thresholds import AVERAGES, best_global_threshold, f1_curve, tune_thresholds


def make_data(kind: str, n: int = 50_000, c: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    targets = rng.random((n, c)) < rng.uniform(0.005, 0.1, c)  # class frequencies vary
    if kind == "random":
        return rng.random((n, c)), targets
    logits = rng.normal(-4.0, 1.5, (n, c)) + 3.5 * targets
    return 1.0 / (1.0 + np.exp(-logits)), targets


def best_of(repeat: int, fn, *args) -> str:
    """Best wall and CPU seconds of a few runs (CPU time is steadier on a busy machine)."""
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(*args)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return f"{min(wall):.3f}s (cpu {min(cpu):.3f}s)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--curve", action="store_true", help="also time the full f1_curve (slow)")
    args = parser.parse_args()
    for kind in ("random", "model"):
        probs, targets = make_data(kind)
        for average in AVERAGES:
            t_global = best_of(args.repeat, best_global_threshold, probs, targets, average)
            t_tune = best_of(args.repeat, tune_thresholds, probs, targets, average)
            t_plot = best_of(args.repeat, f1_curve, probs, targets, average, 400)
            line = f"{kind:6s} {average:7s} best_global_threshold {t_global}  " \
                   f"tune_thresholds {t_tune}  f1_curve(n_points=400) {t_plot}"
            if args.curve:
                t_curve = best_of(1, f1_curve, probs, targets, average)
                line += f"  f1_curve(full) {t_curve}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
