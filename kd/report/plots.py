"""Convergence curves (curves.png): test top-1 and train loss per epoch, one line per method, mean over
seeds with a band of one standard deviation. Headless (Agg)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_curves(metrics: pd.DataFrame, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(metrics["method"]))
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for i, method in enumerate(methods):
        own = metrics[metrics["method"] == method]
        for ax, column in zip(axes, ("test_top1", "loss")):
            stats = own.groupby("epoch")[column].agg(["mean", "std"]).fillna(0.0)
            ax.plot(stats.index, stats["mean"], label=method, color=colours(i), linewidth=1.8,
                    linestyle="--" if method == "vanilla" else "-")
            ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                            color=colours(i), alpha=0.15, linewidth=0)
    teacher = metrics["teacher_top1"].dropna() if "teacher_top1" in metrics else pd.Series(dtype=float)
    if len(teacher):
        axes[0].axhline(teacher.iloc[0], color="black", linestyle=":", linewidth=1.2, label="teacher")
    axes[0].set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy")
    axes[1].set(xlabel="epoch", ylabel="train loss (sum of weighted terms)", title="training loss")
    axes[1].set_yscale("log")
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(loc="lower right", fontsize=8, ncol=2 if len(methods) > 6 else 1)
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
