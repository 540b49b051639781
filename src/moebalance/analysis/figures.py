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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moebalance.io import atomic_path


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _smooth(y: np.ndarray) -> np.ndarray:
    width = max(1, len(y) // 50)
    return np.convolve(y, np.ones(width) / width, mode="valid")


def maxvio_curves(runs, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, rs in runs.items():
        n = min(len(r.maxvio_S) for r in rs)
        mean_S = np.mean([r.maxvio_S[:n] for r in rs], axis=0)
        y = _smooth(mean_S)
        ax.plot(rs[0].steps[:n][len(mean_S) - len(y):], y, label=variant)
    ax.set(xlabel="optimizer step", ylabel="MaxVio_batch (mean over layers)", ylim=(0, None),
           title="Load imbalance during pretraining")
    ax.legend()
    return _save(fig, path)


def relative_load_heatmap(variant: str, load_df, path: Path) -> Path:
    import matplotlib.pyplot as plt

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
    return _save(fig, path)


def bias_trajectories(runs, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), squeeze=False,
                             sharey=True)
    for ax, (variant, rs) in zip(axes[0], runs.items(), strict=True):
        r = rs[0]
        ax.plot(r.steps, r.bias_SLE[:, -1, :], linewidth=0.8)
        ax.set(title=f"{variant} (layer {r.routing_layers[-1]}, seed {r.run.seed})",
               xlabel="optimizer step")
    axes[0][0].set_ylabel("router bias b_i")
    return _save(fig, path)


def nll_vs_maxvio(runs, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for variant, rs in runs.items():
        x = [r.measures["MaxVio_global (pretrain)"].value if "MaxVio_global (pretrain)"
             in r.measures else np.nan for r in rs]
        nll = [r.measures["solution NLL (nats/problem)"].value
               if "solution NLL (nats/problem)" in r.measures else np.nan for r in rs]
        p1 = [r.measures["pass@1"].value if "pass@1" in r.measures else np.nan for r in rs]
        left.scatter(x, nll, label=variant)
        right.scatter(x, p1, label=variant)
    left.set(xlabel="MaxVio_global (held-out, pretrained)",
             ylabel="canonical-solution NLL (nats/problem)")
    right.set(xlabel="MaxVio_global (held-out, pretrained)", ylabel="pass@1")
    left.legend()
    return _save(fig, path)


def token_class_specialization(spec_df, path: Path) -> Path:
    """Per token class: mean share of its tokens on its K most-chosen experts."""
    import matplotlib.pyplot as plt

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
    return _save(fig, path)


def saturation_steps(runs, path: Path) -> Path:
    import matplotlib.pyplot as plt

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
    return _save(fig, path)


def draw_all(runs, layer_df, load_df, spec_df, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    paths = [maxvio_curves(runs, folder / "maxvio_batch.png"),
             bias_trajectories(runs, folder / "bias_trajectories.png"),
             nll_vs_maxvio(runs, folder / "nll_vs_maxvio.png"),
             token_class_specialization(spec_df, folder / "token_class_specialization.png"),
             saturation_steps(runs, folder / "saturation_steps.png")]
    paths += [relative_load_heatmap(v, load_df, folder / f"relative_load_{v}.png") for v in runs]
    return paths
