"""The frontier stage on synthetic run folders: per-run and per-point tables, the
matched-balance difference (log-MaxVio interpolation, paired t over seeds, no
extrapolation), the jitter table, the figure's labels and the README."""

import argparse
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from moebalance.analysis import frontier
from moebalance.atomic import write_json
from moebalance.errors import UsageError

SEEDS = [0, 1, 2]
SWEEP = {"seeds": SEEDS, "references": ["none", "ds_v3"], "grids": {
    "aux_loss": {"base": "aux_loss", "key": "balancing.aux_loss.alpha",
                 "values": [0.001, 0.01, 0.1]},
    "loss_free": {"base": "loss_free", "key": "balancing.loss_free.gamma",
                  "values": [0.001, 0.01]}}}
# (variant, seed) -> (held-out MaxVio_global, held-out bits/byte); the aux-loss grid per seed
# trades balance for quality, the loss-free points sit inside its range, `none` above it
MAXVIO = {"aux_loss@alpha=1e-3": (0.8, 0.9, 1.0), "aux_loss@alpha=1e-2": (0.2, 0.25, 0.3),
          "aux_loss@alpha=1e-1": (0.05, 0.06, 0.08), "loss_free@gamma=1e-3": (0.4, 0.3, 0.5),
          "loss_free@gamma=1e-2": (0.1, 0.1, 0.1), "none": (2.0, 1.8, 0.9),
          "ds_v3": (0.3, 0.3, 0.3)}
BPB = {"aux_loss@alpha=1e-3": (2.0, 2.02, 2.04), "aux_loss@alpha=1e-2": (2.1, 2.12, 2.14),
       "aux_loss@alpha=1e-1": (2.3, 2.32, 2.34), "loss_free@gamma=1e-3": (2.0, 2.1, 2.05),
       "loss_free@gamma=1e-2": (2.1, 2.2, 2.3), "none": (2.0, 2.0, 2.0),
       "ds_v3": (2.0, 2.02, 2.04)}


def write_run(runs, variant, seed, maxvio, bpb, jitter=0.0):
    folder = runs / variant / f"seed{seed}"
    (folder / "pretrain").mkdir(parents=True)
    (folder / "frontier" / "utilization").mkdir(parents=True)
    # steps 0..7: the last quarter of the range is steps >= 5.25, so 6 and 7
    pd.DataFrame({"step": np.arange(8), "maxvio_batch": np.arange(8) + seed}).to_parquet(
        folder / "pretrain" / "metrics.parquet")
    write_json({"git_commit": "abc", "source_hash": "h1", "corpus_hash": "c1"},
               folder / "pretrain" / "provenance.json")
    write_json({"pretrain": {"maxvio_global": maxvio, "maxvio_floor": 0.01,
                             "split_half_difference": 0.002,
                             "domains": {"prose": {"maxvio_global": 2 * maxvio, "tokens": 10,
                                                   "maxvio_floor": 0.02}}},
                "jitter": {"fraction": 0.1, "difference": jitter, "routed": jitter != 0.0,
                           "maxvio_global_final": maxvio,
                           "maxvio_global_averaged": maxvio + jitter}},
               folder / "frontier" / "utilization" / "balance.json")
    # two documents whose nll sums to bpb * ln 2 * 300 bytes, and an sft row and a HumanEval
    # row that the held-out figure leaves out
    nats = bpb * math.log(2) * 300
    pd.DataFrame({"model": ["pretrain", "pretrain", "sft", "pretrain"],
                  "document": ["a", "b", "a", "h"],
                  "domain": ["prose", "prose", "prose", "humaneval"],
                  "tokens": [50, 50, 50, 9], "bytes": [100, 200, 100, 9],
                  "nll": [nats / 3, 2 * nats / 3, 99.0, 99.0]}).to_parquet(
        folder / "frontier" / "utilization" / "documents.parquet")
    # solution bits per byte = (10 + 30) / ln 2 / (20 + 60): a ratio, not a mean of ratios
    pd.DataFrame({"task_id": ["HumanEval/0", "HumanEval/1"], "nll": [10.0, 30.0 + seed],
                  "n_tokens": [5, 9], "bits_per_byte": [0.7, 0.7], "context_tokens": [9, 9],
                  "fits": [True, False], "bytes": [20, 60]}).to_parquet(
        folder / "frontier" / "solution_nll.parquet")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run's files, and the stage run once on them with every output."""
    tmp_path = tmp_path_factory.mktemp("frontier")
    for variant, (i, seed) in itertools.product(MAXVIO, enumerate(SEEDS)):
        jitter = {"loss_free@gamma=1e-3": -0.01 * (i + 1), "ds_v3": 0.02}.get(variant, 0.0)
        write_run(tmp_path / "runs", variant, seed, MAXVIO[variant][i], BPB[variant][i], jitter)
    write_json({"bigram": {"bits_per_byte": 2.386, "nats_per_token": 4.2}},
               tmp_path / "baselines.json")
    # Snakemake's benchmark files of the pretrain jobs (seconds 100, 101, ... in run order);
    # the other per-run rules have none
    for n, (variant, seed) in enumerate(itertools.product(MAXVIO, SEEDS)):
        path = tmp_path / "benchmarks" / "pretrain" / variant / f"seed{seed}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"s\th:m:s\tmax_rss\n{100 + n}.5\t0:01:40\t300\n")
    stage(tmp_path, "--figure", str(tmp_path / "frontier.png"), "--readme",
          str(tmp_path / "README.md"), "--baselines", str(tmp_path / "baselines.json"),
          "--codes", '{"pretrain": "h1"}', "--benchmarks", str(tmp_path / "benchmarks"))
    return tmp_path


def stage(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    frontier.add_arguments(parser)
    frontier.run(parser.parse_args([
        "--runs", str(tmp_path / "runs"), "--settings", json.dumps(SWEEP),
        "--tables-dir", str(tmp_path / "tables"), *extra]))
    return tmp_path / "tables"


def test_interpolation_is_linear_in_log_maxvio_between_the_sorted_reference_points():
    # ln 0.1 and ln 1 have ln sqrt(0.1) halfway between them: the mean of 2.0 and 1.0
    assert frontier.interpolate(math.sqrt(0.1), [1.0, 0.1], [1.0, 2.0]) == pytest.approx(1.5)
    # a quarter of the way in log from 0.01 to 1: 0.01 ** 0.75; reference points unsorted
    at = frontier.interpolate(0.01 ** 0.75, [1.0, 0.01, 0.1], [3.0, 1.0, 2.0])
    assert at == pytest.approx(1.5)
    assert frontier.interpolate(0.1, [1.0, 0.1], [1.0, 2.0]) == 2.0  # an end point is inside


def test_the_sentence_for_a_point_more_balanced_than_the_reference_ever_was():
    row = {"variant": "quantile", "quality": "heldout_bpb", "status": frontier.OUTSIDE,
           "seeds": 4, "seeds_below_range": 3, "seeds_above_range": 0, "reference_grid":
           "aux_loss", "reference_maxvio_min": 0.05, "reference_maxvio_max": 1.2}
    assert frontier.matched_sentence(row).endswith(
        "below it (more balanced) in 3 of 4 seeds: no tested value of the reference balanced "
        "this well, so there is no matched comparison.")


def test_interpolation_never_extrapolates():
    assert math.isnan(frontier.interpolate(0.09, [1.0, 0.1], [1.0, 2.0]))
    assert math.isnan(frontier.interpolate(1.1, [1.0, 0.1], [1.0, 2.0]))


def test_run_table_has_the_ratio_estimators_and_the_last_quarter_of_maxvio_batch(runs):
    table = pd.read_csv(runs / "tables" / "frontier_runs.csv")
    assert len(table) == len(MAXVIO) * len(SEEDS)
    row = table[(table.variant == "aux_loss@alpha=1e-2") & (table.seed == 1)].iloc[0]
    assert (row.grid, row.key, row.value) == ("aux_loss", "balancing.aux_loss.alpha", 0.01)
    assert row.maxvio_global == 0.25 and row.maxvio_prose == 0.5
    assert row.heldout_bpb == pytest.approx(2.12)
    assert row.solution_bpb == pytest.approx((10 + 31) / math.log(2) / 80)
    assert row.maxvio_batch_last_quarter == pytest.approx((6 + 7) / 2 + 1)
    assert list(table.columns[:11]) == [
        "grid", "variant", "key", "value", "seed", "maxvio_global", "maxvio_floor",
        "split_half_difference", "heldout_bpb", "solution_bpb", "maxvio_batch_last_quarter"]
    assert {"maxvio_prose", "jitter_difference", "jitter_routed"} <= set(table.columns)


def test_point_table_has_seed_means_and_sds_grids_then_references(runs):
    table = pd.read_csv(runs / "tables" / "frontier.csv")
    assert table.variant.tolist() == list(MAXVIO)
    row = table[table.variant == "loss_free@gamma=1e-3"].iloc[0]
    assert row.runs == 3 and row.maxvio_global == pytest.approx(0.4)
    assert row.maxvio_global_sd == pytest.approx(np.std([0.4, 0.3, 0.5], ddof=1))
    assert row.heldout_bpb_sd == pytest.approx(0.05)
    assert list(table.columns).index("maxvio_floor") == \
        list(table.columns).index("maxvio_global_sd") + 1


def test_matched_difference_is_the_paired_t_over_seeds_of_the_interpolated_gaps(runs):
    table = pd.read_csv(runs / "tables" / "matched_balance.csv")
    row = table[(table.variant == "loss_free@gamma=1e-2") & table.primary].iloc[0]
    assert row.quality == "heldout_bpb" and row.status == "matched"
    # by hand, per seed: the aux-loss point below and above MaxVio 0.1, linear in ln MaxVio
    d = []
    for i in range(3):
        lo, hi = MAXVIO["aux_loss@alpha=1e-1"][i], MAXVIO["aux_loss@alpha=1e-2"][i]
        y_lo, y_hi = BPB["aux_loss@alpha=1e-1"][i], BPB["aux_loss@alpha=1e-2"][i]
        share = (math.log(0.1) - math.log(lo)) / (math.log(hi) - math.log(lo))
        d.append(BPB["loss_free@gamma=1e-2"][i] - (y_lo + share * (y_hi - y_lo)))
    half = stats.t.ppf(0.975, 2) * np.std(d, ddof=1) / math.sqrt(3)
    assert row.d == pytest.approx(np.mean(d))
    assert row.d_sd == pytest.approx(np.std(d, ddof=1))
    assert (row.ci_low, row.ci_high) == pytest.approx((np.mean(d) - half, np.mean(d) + half))
    assert row.df == 2 and row.resamples.startswith("seeds only")
    assert set(table[table.variant == "ds_v3"].quality) == {"heldout_bpb", "solution_bpb"}


def test_a_point_outside_the_reference_range_gets_no_interval_and_says_how_many_seeds(runs):
    table = pd.read_csv(runs / "tables" / "matched_balance.csv")
    row = table[(table.variant == "none") & table.primary].iloc[0]
    # none: MaxVio 2.0 and 1.8 lie above seeds 0 and 1's aux-loss range, 0.9 inside seed 2's
    assert row.status == frontier.OUTSIDE
    assert (row.seeds_outside, row.seeds_above_range, row.seeds_below_range) == (2, 2, 0)
    assert math.isnan(row.ci_low) and math.isnan(row.d)
    assert "aux_loss" not in set(table.grid)


def test_jitter_table_covers_only_points_whose_bias_moves(runs):
    table = pd.read_csv(runs / "tables" / "jitter.csv")
    assert table.variant.tolist() == ["loss_free@gamma=1e-3", "ds_v3"]
    row = table.iloc[0]
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert row.jitter_difference == pytest.approx(-0.02)
    assert (row.ci_low, row.ci_high) == pytest.approx((-0.02 - half, -0.02 + half))


def test_markdown_says_what_each_interval_shows_and_what_it_resamples(runs):
    text = (runs / "tables" / "frontier.md").read_text()
    assert "resample seeds only" in text and "2.386 bits/byte" in text
    assert "`none`: its held-out MaxVio_global lies outside the `aux_loss` grid's range" in text
    assert ("above it (less balanced) in 2 of 3 seeds: every tested value of the reference "
            "balanced better") in text
    # ds_v3 at MaxVio 0.3 in every seed is matched; its gaps are all negative and equal-ish
    assert "`ds_v3`: held-out bits per byte (test documents) lower than" in text


def test_figure_labels_do_not_overlap_with_crowded_points(runs):
    import matplotlib.pyplot as plt
    from matplotlib.transforms import Bbox

    points = pd.read_csv(runs / "tables" / "frontier.csv")
    # crowd the points: all but the last within 1% of the axes' span of each other, so that
    # labels at one fixed offset would overlap
    crowd = np.arange(len(points) - 1)
    points["maxvio_global"] = np.r_[0.3 + 0.003 * crowd, 2.0]
    points["heldout_bpb"] = np.r_[2.1 + 0.001 * crowd, 2.3]
    fig, labels = frontier.draw(points, "heldout_bpb", SEEDS, 2.386)
    renderer = fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert [label.get_text() for label in labels] == [
        "α=0.001", "α=0.01", "α=0.1", "γ=0.001", "γ=0.01", "none", "ds_v3"]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    ax = fig.axes[0]
    for px, py in ax.transData.transform(points[["maxvio_global", "heldout_bpb"]].to_numpy()):
        marker = Bbox.from_extents(px - 3, py - 3, px + 3, py + 3)
        assert not any(box.overlaps(marker) for box in boxes)
    assert "2.386 bits/byte" in fig.axes[0].get_title()
    plt.close(fig)


def test_stage_writes_the_figure_and_a_readme_with_its_provenance_stamp(runs):
    from moebalance.provenance import STAMP_BEGIN

    assert (runs / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (runs / "README.md").read_text()
    assert "Pretraining steps: 8" in readme and "Seeds (the same at every point" in readme
    assert "| pretrain | `h1` |" in readme and readme.index("## Headline") < \
        readme.index(STAMP_BEGIN)
    assert "`loss_free@gamma=1e-2`" in readme
    assert "Generated by the frontier stage" in readme and "compare" not in readme
    jobs = len(MAXVIO) * len(SEEDS)  # 100.5 ... 100.5 + jobs - 1 seconds
    total = sum(100.5 + n for n in range(jobs)) / 60
    assert (f"- pretrain: {jobs} jobs, 100-{100 + jobs - 1:.0f} s each (median "
            f"{100.5 + (jobs - 1) / 2:.0f} s), {total:.0f} job-minutes in all") in readme
    assert "- frontier_utilization: no benchmark files" in readme


def test_a_missing_input_is_a_usage_error_naming_the_file(tmp_path):
    write_run(tmp_path / "runs", "aux_loss@alpha=1e-3", 0, 0.8, 2.0)
    (tmp_path / "runs" / "aux_loss@alpha=1e-3" / "seed0" / "frontier" /
     "solution_nll.parquet").unlink()
    with pytest.raises(UsageError, match="alpha=1e-3/seed0/frontier/solution_nll.parquet"):
        stage(tmp_path)


def test_a_missing_key_is_a_usage_error_naming_the_file_and_the_key(tmp_path):
    write_run(tmp_path / "runs", "aux_loss@alpha=1e-3", 0, 0.8, 2.0)
    path = tmp_path / "runs" / "aux_loss@alpha=1e-3" / "seed0" / "frontier" / "utilization" \
        / "balance.json"
    balance = json.loads(path.read_text())
    del balance["jitter"]["routed"]
    write_json(balance, path)
    with pytest.raises(UsageError, match="utilization/balance.json: no jitter.routed"):
        stage(tmp_path)


def test_an_unknown_reference_grid_is_a_usage_error_naming_it(tmp_path):
    with pytest.raises(UsageError, match="--frontier: reference_grid: no grid 'aux'"):
        stage(tmp_path, "--frontier", '{"reference_grid": "aux"}')
    with pytest.raises(UsageError, match="--frontier: .*primary"):
        stage(tmp_path, "--frontier", '{"primary": "val_loss"}')
