"""The report's figures (matplotlib, off-screen)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["reliability_figure", "feature_attribution_figure", "saliency_figure", "epsilon_figure"]

COLOURS = {"global": "#8a94a6", "adapted": "#2f6db5", "adapted, temperature-scaled": "#d9822b", "local only": "#3a9a5b"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reliability_figure(curves: dict[str, list[dict[str, float]]], what: str) -> Any:
    """Observed frequency against mean confidence per bin, one line per model (marker area ~ count)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], ls=":", color="black", lw=1, label="perfect calibration")
    for name, bins in curves.items():
        if not bins:
            continue
        conf = [b["confidence"] for b in bins]
        obs = [b["observed"] for b in bins]
        ax.plot(conf, obs, marker="o", color=COLOURS.get(name), label=name)
        ax.scatter(conf, obs, s=[8 + 4 * b["count"] for b in bins], color=COLOURS.get(name), alpha=0.25)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"predicted {what}")
    ax.set_ylabel("observed frequency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def feature_attribution_figure(names: list[str], before: np.ndarray | None, after: np.ndarray, top: int = 15) -> Any:
    """Mean |attribution| of the ``top`` features (by the adapted model), global beside adapted."""
    plt = _plt()
    order = np.argsort(-after)[:top][::-1]
    y = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(order) + 1.4))
    h = 0.4 if before is not None else 0.8
    if before is not None:
        ax.barh(y + h / 2, before[order], height=h, color=COLOURS["global"], label="global model")
    ax.barh(y - (h / 2 if before is not None else 0), after[order], height=h, color=COLOURS["adapted"],
            label="adapted at this hospital")
    ax.set_yticks(y, [names[i] for i in order], fontsize=8)
    ax.set_xlabel("mean |attribution| over the evaluated patients")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def saliency_figure(maps: dict[str, np.ndarray]) -> Any:
    """Mean saliency maps side by side (each on its own scale), and the adapted minus the global one."""
    plt = _plt()
    panels = dict(maps)
    if "global model" in maps and "adapted" in maps:  # where the attention moved: each map as shares of 1
        before, after = maps["global model"], maps["adapted"]
        panels["adapted − global (shares)"] = after / after.sum() - before / before.sum()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.3))
    for ax, (name, m) in zip(np.atleast_1d(axes), panels.items()):
        if "−" in name:
            bound = float(np.abs(m).max()) or 1.0
            im = ax.imshow(m, cmap="coolwarm", vmin=-bound, vmax=bound)
        else:
            im = ax.imshow(m, cmap="magma")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def epsilon_figure(rows: list[dict[str, Any]]) -> Any:
    """Each hospital's privacy spend (epsilon) beside its cap."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(rows) + 1.4))
    y = np.arange(len(rows))
    ax.barh(y, [r["epsilon"] for r in rows], color=COLOURS["adapted"], label="spent")
    caps = [(i, r["max_epsilon"]) for i, r in enumerate(rows) if r["max_epsilon"] is not None]
    if caps:
        ax.scatter([c for _, c in caps], [i for i, _ in caps], marker="|", s=300, color="#a23a12", label="cap")
    ax.set_yticks(y, [r["hospital"] for r in rows], fontsize=8)
    ax.set_xlabel("epsilon")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
