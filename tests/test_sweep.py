"""Sweep grids as ordinary variants, and the stated selection rule on synthetic results."""

import json
import math

import fakes
import numpy as np
import pandas as pd
import pytest

from moebalance.analysis.sweep_select import choice_of, run_summary, sweep_table
from moebalance.atomic import write_json
from moebalance.cli import main
from moebalance.config import SweepSettings
from moebalance.study import apply_sweep, format_value, grid_variants

CONFIG = {
    "results": "results/long",
    "seeds": [0, 1, 2],
    "variants": {"none": {"balancing": {"strategies": []}},
                 "aux_loss": {"balancing": {"strategies": ["aux_loss"]}},
                 "loss_free": {"balancing": {"strategies": ["loss_free"],
                                             "loss_free": {"rule": "sign"}}}},
    "sweep": {"phase": "report", "seeds": [100, 101],
              "grids": {"aux_loss": {"base": "aux_loss", "key": "balancing.aux_loss.alpha",
                                     "values": [1e-3, 1e-2, 1e-1]},
                        "loss_free": {"base": "loss_free", "key": "balancing.loss_free.gamma",
                                      "values": [1e-3, 2.5e-2]}},
              "selection": {"max_maxvio": 0.5}},
}


def tune(config=CONFIG):
    return {**config, "sweep": {**config["sweep"], "phase": "tune"}}


def settings(sweep: dict) -> SweepSettings:
    return SweepSettings.from_dict(sweep)


@pytest.mark.parametrize(("value", "spelled"), [(0.001, "1e-3"), (0.025, "2.5e-2"),
                                                (0.1, "1e-1"), (3, "3"), (True, "true")])
def test_values_are_spelled_short_and_path_safe(value, spelled):
    assert format_value(value) == spelled


def test_each_grid_point_is_its_base_variant_with_the_key_set():
    variants = grid_variants(CONFIG)
    assert list(variants) == ["aux_loss@alpha=1e-3", "aux_loss@alpha=1e-2", "aux_loss@alpha=1e-1",
                              "loss_free@gamma=1e-3", "loss_free@gamma=2.5e-2"]
    assert variants["loss_free@gamma=2.5e-2"] == {"balancing": {
        "strategies": ["loss_free"], "loss_free": {"rule": "sign", "gamma": 0.025}}}


def test_tune_phase_runs_only_the_grid_on_the_tuning_seeds():
    study = apply_sweep(tune())
    assert set(study["variants"]) == set(grid_variants(CONFIG))
    assert study["seeds"] == [100, 101]
    assert study["results"] == "results/long"  # data stages are shared with the report phase
    assert CONFIG["seeds"] == [0, 1, 2]  # the input is not modified


def test_report_phase_applies_the_chosen_value_to_the_base_variant():
    choice = {"aux_loss": {"variant": "aux_loss@alpha=1e-2", "key": "balancing.aux_loss.alpha",
                           "value": 0.01}}
    study = apply_sweep(CONFIG, choice)
    assert study["variants"]["aux_loss"]["balancing"]["aux_loss"] == {"alpha": 0.01}
    assert study["variants"]["loss_free"] == CONFIG["variants"]["loss_free"]
    assert study["seeds"] == [0, 1, 2] and study["results"] == "results/long"


def test_report_phase_without_a_choice_keeps_the_configured_variants():
    assert apply_sweep(CONFIG, None)["variants"] == CONFIG["variants"]


def test_tuning_seeds_must_be_disjoint_from_reporting_seeds():
    config = {**CONFIG, "sweep": {**CONFIG["sweep"], "seeds": [2, 100]}}
    with pytest.raises(ValueError, match=r"disjoint.*\[2\]"):
        apply_sweep(config)


def test_grid_over_an_unknown_variant_is_an_error_naming_it():
    config = {**CONFIG, "sweep": {**CONFIG["sweep"], "grids": {
        "x": {"base": "bogus", "key": "balancing.aux_loss.alpha", "values": [1]}}}}
    with pytest.raises(ValueError, match="sweep.grids.x.base.*bogus"):
        grid_variants(config)


def point(val_loss: float, maxvio: float) -> dict:
    """One run's summary as run_summary returns it."""
    return {"val_loss": val_loss, "maxvio": maxvio, "maxvio_floor": 0.01,
            "maxvio_train_aggregate": maxvio}


def synthetic_runs():
    """aux_loss: 1e-3 best loss but unbalanced (0.9), 1e-2 balanced at 3.05, 1e-1 balanced at
    3.20; loss_free: neither point balanced enough, 2.5e-2 the more balanced (0.6 < 0.8)."""
    truth = {"aux_loss@alpha=1e-3": (3.00, 0.9), "aux_loss@alpha=1e-2": (3.05, 0.4),
             "aux_loss@alpha=1e-1": (3.20, 0.1), "loss_free@gamma=1e-3": (3.0, 0.8),
             "loss_free@gamma=2.5e-2": (3.1, 0.6)}
    return {(variant, seed): point(loss + (seed - 100.5) * 0.02, vio + (seed - 100.5) * 0.1)
            for variant, (loss, vio) in truth.items() for seed in (100, 101)}


def test_rule_picks_lowest_val_loss_among_points_within_the_maxvio_target():
    table = sweep_table(settings(CONFIG["sweep"]), synthetic_runs())
    row = table.set_index("variant").loc["aux_loss@alpha=1e-2"]
    assert row["val_loss"] == pytest.approx(3.05) and row["maxvio"] == pytest.approx(0.4)
    # two seeds 0.02 apart in loss: SD = 0.02 / sqrt(2)
    assert row["val_loss_sd"] == pytest.approx(0.02 / math.sqrt(2))
    assert table[table["chosen"]]["variant"].tolist() == ["aux_loss@alpha=1e-2",
                                                          "loss_free@gamma=2.5e-2"]


def test_choice_says_when_no_point_met_the_target():
    choice = choice_of(sweep_table(settings(CONFIG["sweep"]), synthetic_runs()))
    assert choice["aux_loss"]["met_target"] is True
    assert choice["loss_free"] == pytest.approx({
        "variant": "loss_free@gamma=2.5e-2", "key": "balancing.loss_free.gamma", "value": 0.025,
        "val_loss": 3.1, "maxvio": 0.6, "met_target": False})


def test_a_missing_tuning_run_is_an_error_naming_the_point():
    runs = synthetic_runs()
    del runs[("aux_loss@alpha=1e-1", 101)]
    with pytest.raises(ValueError, match="aux_loss@alpha=1e-1: 1 of 2"):
        sweep_table(settings(CONFIG["sweep"]), runs)


def routing_rows(loads_by_step):
    return pd.DataFrame([{"step": step, "layer": layer, "expert": e, "tokens": n}
                         for step, loads in enumerate(loads_by_step)
                         for layer, loads_E in enumerate(loads) for e, n in enumerate(loads_E)])


BALANCE = {"maxvio_global": 0.25, "maxvio_floor": 0.01, "routed_tokens": 12, "top_k": 1,
           "windows": 3}


def test_run_summary_takes_the_final_validations_balance_and_a_same_size_training_aggregate():
    metrics = pd.DataFrame({"step": [0, 1, 2, 3], "val_loss": [math.nan, 5.0, math.nan, 4.0]})
    # top-1: each step routes sum(layer 0 counts) tokens = 4, 4, 4, 4; the held-out set has
    # 12 tokens, so the aggregate sums the last 3 steps.
    # layer 0: [9+3+1, 0+1+3] = [13, 4], mean 8.5 -> 4.5/8.5; layer 1: [1+6+2, 3+2+2] = [9, 7],
    # mean 8 -> 1/8; mean over layers (4.5/8.5 + 1/8) / 2
    routing = routing_rows([[[4, 0], [4, 0]], [[9, 0], [1, 3]],
                            [[3, 1], [6, 2]], [[1, 3], [2, 2]]])
    summary = run_summary(metrics, routing, BALANCE)
    assert summary == pytest.approx({"val_loss": 4.0, "maxvio": 0.25, "maxvio_floor": 0.01,
                                     "maxvio_train_aggregate": (4.5 / 8.5 + 1 / 8) / 2})


def test_run_summary_without_a_validation_loss_is_an_error():
    metrics = pd.DataFrame({"step": [0], "val_loss": [math.nan]})
    with pytest.raises(ValueError, match="no validation loss"):
        run_summary(metrics, routing_rows([[[1, 1]]]), BALANCE)


def test_references_run_on_the_tuning_seeds_and_are_never_chosen():
    config = {**CONFIG, "sweep": {**CONFIG["sweep"], "references": ["none"]}}
    study = apply_sweep(tune(config))
    assert study["variants"]["none"] == CONFIG["variants"]["none"]
    runs = {**synthetic_runs(), **{("none", seed): point(2.0, 0.0) for seed in (100, 101)}}
    table = sweep_table(settings(config["sweep"]), runs).set_index("variant")
    assert table.loc["none", "grid"] == "reference"
    assert not table.loc["none", "eligible"] and not table.loc["none", "chosen"]
    assert table["chosen"].sum() == 2  # one per grid, as without the reference


def test_an_unknown_reference_is_an_error_naming_it():
    config = {**CONFIG, "sweep": {**CONFIG["sweep"], "references": ["bogus"]}}
    with pytest.raises(ValueError, match="sweep.references.*bogus"):
        grid_variants(config)


def test_stage_writes_table_choice_and_frontier_from_run_files(tmp_path):
    sweep = {"seeds": [100, 101], "references": ["none"], "grids": {"aux_loss": {
        "base": "aux_loss", "key": "balancing.aux_loss.alpha", "values": [0.001, 0.01]}},
        "selection": {"max_maxvio": 0.5}}
    for variant, loss, maxvio in (("aux_loss@alpha=1e-3", 3.0, 0.8),
                                  ("aux_loss@alpha=1e-2", 3.1, 0.1), ("none", 3.0, 2.0)):
        for seed in (100, 101):
            folder = tmp_path / "runs" / variant / f"seed{seed}" / "pretrain"
            fakes.write_training(folder, np.array([[[9, 1]]]), [0], val_loss=loss + seed / 1e4)
            write_json(BALANCE | {"maxvio_global": maxvio}, folder / "balance.json")
    baselines = tmp_path / "baselines.json"
    write_json({"tokens": 100, "bytes": 300,
                "bigram": {"nats_per_token": 4.0, "bits_per_byte": 1.9}}, baselines)
    table, choice, figure = tmp_path / "sweep.csv", tmp_path / "choice.json", tmp_path / "f.png"
    assert main(["sweep-select", "--settings", json.dumps(sweep), "--runs", str(tmp_path / "runs"),
                 "--table", str(table), "--choice", str(choice), "--figure", str(figure),
                 "--baselines", str(baselines)]) == 0
    written = pd.read_csv(table)
    assert written["variant"].tolist() == ["aux_loss@alpha=1e-3", "aux_loss@alpha=1e-2", "none"]
    assert written["chosen"].tolist() == [False, True, False]  # 1e-3: MaxVio 0.8 > 0.5
    assert json.loads(choice.read_text())["aux_loss"]["value"] == 0.01
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frontier_draws_grids_of_any_value_type_without_baselines(tmp_path):
    from moebalance.analysis.figures import frontier

    sweep = {"seeds": [100], "references": ["none"], "grids": {"rule": {
        "base": "loss_free", "key": "balancing.loss_free.rule",
        "values": ["sign", "proportional"]}}}
    runs = {("rule@rule=sign", 100): point(3.0, 0.1), ("rule@rule=proportional", 100):
            point(3.1, 0.3), ("none", 100): point(3.2, 2.0)}
    path = frontier(sweep_table(settings(sweep), runs), [100], tmp_path / "frontier.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_bad_selection_key_is_a_usage_error_naming_settings_and_the_key(tmp_path, capsys):
    sweep = {"seeds": [100], "selection": {"max_maxvoi": 0.2}}
    assert main(["sweep-select", "--settings", json.dumps(sweep), "--runs", str(tmp_path),
                 "--table", str(tmp_path / "t.csv"), "--choice", str(tmp_path / "c.json")]) == 2
    assert "--settings: unknown key(s) in sweep.selection: max_maxvoi" in capsys.readouterr().err


def test_left_out_sweep_keys_take_the_settings_defaults():
    sweep = SweepSettings.from_dict({})
    assert (sweep.phase, sweep.seeds, sweep.grids, sweep.references) == ("report", (), {}, ())
    assert sweep.selection.max_maxvio == 0.2
    assert apply_sweep({"seeds": [0], "variants": {"none": {}}}) == {"seeds": [0],
                                                                     "variants": {"none": {}}}
