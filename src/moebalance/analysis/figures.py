"""The comparison's figures (matplotlib, Agg, PNG). Fixed file names, so Snakemake can
declare them:

    maxvio_batch.png                MaxVio_batch over training, per variant (mean over seeds)
    relative_load_{variant}.png     relative expert load per domain, first and last MoE layer,
                                    pretrained model, first seed (DeepSeek-V3 Fig. 9 style)
    bias_trajectories.png           router bias of every expert of the last MoE layer over
                                    training, per variant (first seed)
    nll_vs_maxvio.png               solution NLL and pass@1 against MaxVio_global, per run
    token_class_specialization.png  token-class specialization per class and variant
    saturation_steps.png            router saturation over pretraining (OLMoE Eq. 5), per
                                    variant (first seed)
    bias_diagnostics.png            bias override rate over pretraining per layer, and each
                                    layer's bias spread against the spread of its experts'
                                    mean affinity scores (every seed, last step)

and, from the sweep-select stage (not compare), frontier.png: the balance-quality frontier
of a sweep (:func:`frontier`).

Metrics are looked up by catalogue identifier; axis labels take the catalogue's display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moebalance.analysis.catalogue import metric
from moebalance.atomic import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), imported when a figure
    is drawn (imports: see :mod:`moebalance.cli`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG (atomically) and close it."""
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _smooth(y: np.ndarray) -> np.ndarray:
    width = max(1, len(y) // 50)
    return np.convolve(y, np.ones(width) / width, mode="valid")


def maxvio_curves(runs, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, rs in runs.items():
        n = min(len(r.maxvio_N) for r in rs)
        mean_N = np.mean([r.maxvio_N[:n] for r in rs], axis=0)
        y = _smooth(mean_N)
        ax.plot(rs[0].routing["steps"][:n][len(mean_N) - len(y):], y, label=variant)
    ax.set(xlabel="optimizer step", ylabel="MaxVio_batch (mean over layers)", ylim=(0, None),
           title="Load imbalance during pretraining")
    ax.legend()
    return save(fig, path)


def relative_load_heatmap(variant: str, load_df, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3), squeeze=False)
    df = load_df[(load_df.variant == variant) & (load_df.model == "pretrain")] \
        if len(load_df) else load_df
    if len(df):
        df = df[df.seed == df.seed.min()]
        layers = sorted(df.layer.unique())
        vmax = max(2.0, float(df.relative_load.max()))
        for ax, layer in zip(axes[0], (layers[0], layers[-1]), strict=True):
            grid = df[df.layer == layer].pivot(index="domain", columns="expert",
                                               values="relative_load")
            image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
            ax.set(yticks=range(len(grid.index)), yticklabels=grid.index, xlabel="expert",
                   title=f"{variant}: layer {layer}")
        fig.colorbar(image, ax=axes[0].tolist(), label="relative load (1 = balanced)")
    return save(fig, path)


def bias_trajectories(runs, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), squeeze=False,
                             sharey=True)
    for ax, (variant, rs) in zip(axes[0], runs.items(), strict=True):
        r = rs[0]
        ax.plot(r.routing["steps"], r.routing["bias"][:, -1, :], linewidth=0.8)
        ax.set(title=f"{variant} (layer {r.routing['layers'][-1]}, seed {r.run.seed})",
               xlabel="optimizer step")
    axes[0][0].set_ylabel("router bias b_i")
    return save(fig, path)


def nll_vs_maxvio(runs, path: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x_key, left_key, right_key = "maxvio_global_pretrain", "solution_nll", "pass_at_1"
    for variant, rs in runs.items():
        x = [r.values.get(x_key, np.nan) for r in rs]
        left.scatter(x, [r.values.get(left_key, np.nan) for r in rs], label=variant)
        right.scatter(x, [r.values.get(right_key, np.nan) for r in rs], label=variant)
    left.set(xlabel=metric(x_key).display, ylabel=metric(left_key).display)
    right.set(xlabel=metric(x_key).display, ylabel=metric(right_key).display)
    left.legend()
    return save(fig, path)


def frontier(table, seeds: list[int], path, baselines: dict | None = None) -> Path:
    """Wang et al. 2024, Fig. 1 in our terms: held-out MaxVio_global (x) against held-out
    loss (y), one curve per grid in the order of its values, the reference variants as
    points; seed means, error bars one seed-to-seed SD each way, the chosen point ringed.

    ``table`` is the sweep table of moebalance.analysis.sweep_select. With ``baselines``
    (baselines.json of the same validation windows) the loss is in bits per byte,
    nats/token x tokens / bytes / ln 2 of those windows, and the interpolated bigram is
    drawn as a line; without it the loss stays in nats/token.
    """
    plt = pyplot()
    scale, unit = 1.0, "nats/token"
    if baselines and baselines.get("bytes") and baselines.get("tokens"):
        scale, unit = baselines["tokens"] / baselines["bytes"] / np.log(2), "bits/byte"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for grid, group in table.groupby("grid", sort=False):
        x, y = group["maxvio"].to_numpy(float), group["val_loss"].to_numpy(float) * scale
        xerr = np.nan_to_num(group["maxvio_sd"].to_numpy(float))
        yerr = np.nan_to_num(group["val_loss_sd"].to_numpy(float)) * scale
        if group["key"].isna().all():  # reference variants: nothing swept, drawn as points
            for row, xi, yi, xe, ye in zip(group.itertuples(), x, y, xerr, yerr, strict=True):
                ax.errorbar([xi], [yi], xerr=[xe], yerr=[ye], fmt="s", capsize=3,
                            label=row.variant)
            continue
        line = ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o-", capsize=3, label=grid)
        for row, xi, yi in zip(group.itertuples(), x, y, strict=True):
            ax.annotate(f"{row.key.rsplit('.', 1)[-1]}={row.value}", (xi, yi), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
        chosen = group["chosen"].to_numpy(bool)
        ax.scatter(x[chosen], y[chosen], s=160, facecolors="none",
                   edgecolors=line[0].get_color(), linewidths=1.5)
    if scale != 1.0:
        ax.axhline(baselines["bigram"]["bits_per_byte"], color="grey", ls="--", lw=1,
                   label="interpolated bigram")
    ax.set(xlabel="held-out MaxVio_global (validation tokens, mean over MoE layers)",
           ylabel=f"held-out val loss ({unit})",
           title=f"Balance-quality frontier: seed means ± SD over tuning seeds {seeds}; "
                 "ringed: chosen by the rule")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    return save(fig, Path(path))


def token_class_specialization(spec_df, path: Path) -> Path:
    """Per token class: mean share of its tokens on its K most-chosen experts."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    if len(spec_df):
        df = spec_df[(spec_df.kind == "token_class") & (spec_df.model == "pretrain")]
        keys = ["variant", "seed", "layer", "group"]
        k, n_experts = int(df.top_k.iloc[0]), df.expert.nunique()
        top = df.sort_values("specialization", ascending=False).groupby(keys).head(k)
        conc = top.groupby(keys).specialization.mean()
        table = conc.groupby(["group", "variant"]).mean().unstack("variant")
        width = 0.8 / table.shape[1]
        for i, variant in enumerate(table.columns):
            ax.bar(np.arange(len(table)) + i * width, table[variant], width, label=variant)
        ax.axhline(k / n_experts, color="grey", linestyle="--", label="uniform K/N")
        ax.set_xticks(np.arange(len(table)) + 0.4 - width / 2, table.index, rotation=30)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set(ylabel="share of tokens on their top-K experts",
           title="Token-class specialization (pretrained, mean over layers and seeds)")
    return save(fig, path)


def saturation_steps(runs, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, rs in runs.items():
        curve = rs[0].saturation_steps
        if curve is not None:
            ax.plot(curve.index, curve.to_numpy(), marker="o", label=variant)
    ax.set(xlabel="pretraining step of the snapshot", ylim=(0, 1.05),
           ylabel="router saturation vs final model",
           title="How early routing settles (OLMoE Eq. 5)")
    if ax.lines:
        ax.legend()
    return save(fig, path)


def bias_diagnostics(runs, path: Path) -> Path:
    """Left: share of tokens whose biased top-K differs from TopK(s), per layer over
    pretraining (first seed). Right: per run and layer at the last step, the spread (std over
    experts) of the bias against that of the experts' mean affinity score: on the diagonal
    the bias can override the router's own preference (docs/reference.md §2)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (variant, rs) in enumerate(runs.items()):
        color = f"C{i}"
        first = rs[0].routing
        if "override_rate" in first:
            for li, layer in enumerate(first["layers"]):
                left.plot(first["steps"], first["override_rate"][:, li, 0], color=color,
                          alpha=0.4 + 0.6 * li / max(1, len(first["layers"]) - 1),
                          label=f"{variant} L{layer}", linewidth=0.8)
        for r in rs:
            if "mean_score" in r.routing:
                right.scatter(r.routing["mean_score"][-1].std(-1), r.routing["bias"][-1].std(-1),
                              color=color, label=variant if r is rs[0] else None)
    left.set(xlabel="optimizer step", ylabel="bias override rate", ylim=(0, None),
             title="Tokens whose top-K the bias changed")
    lim = max([*right.get_xlim(), *right.get_ylim()])
    right.plot([0, lim], [0, lim], color="grey", linestyle="--", linewidth=0.8)
    right.set(xlabel="spread of mean affinity s_i (std over experts)",
              ylabel="spread of bias b_i (std over experts)",
              title="Bias against score spread per layer (last step)")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return save(fig, path)


def draw_all(runs, load_df, spec_df, folder: Path) -> list[Path]:
    folder = Path(folder)
    paths = [maxvio_curves(runs, folder / "maxvio_batch.png"),
             bias_trajectories(runs, folder / "bias_trajectories.png"),
             nll_vs_maxvio(runs, folder / "nll_vs_maxvio.png"),
             token_class_specialization(spec_df, folder / "token_class_specialization.png"),
             saturation_steps(runs, folder / "saturation_steps.png"),
             bias_diagnostics(runs, folder / "bias_diagnostics.png")]
    paths += [relative_load_heatmap(v, load_df, folder / f"relative_load_{v}.png") for v in runs]
    return paths
