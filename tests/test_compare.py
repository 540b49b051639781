"""The compare stage on synthetic run folders (no training), with 1 and with 3 seeds."""

import json
import math
import re

import fakes
import numpy as np
import pandas as pd
import pytest

from moebalance import provenance
from moebalance.analysis import claims, runs
from moebalance.analysis import utilization as u
from moebalance.cli import main

LAYERS, E, K, STEPS, TASKS = [1, 2], 8, 2, 40, 30
DOMAINS = ("library", "test", "docs", "humaneval")
DOCS_PER_DOMAIN = {"library": 6, "test": 6, "docs": 2, "humaneval": 6}


def write_training(folder, rng, *, val_shift, skew):
    probs = np.exp(skew * np.arange(E)) / np.exp(skew * np.arange(E)).sum()
    tokens_per_s = {stage: rng.normal(1000, 50, STEPS) for stage in ("pretrain", "sft")}
    tokens = rng.multinomial(64 * K, probs, size=(STEPS, len(LAYERS)))
    shape = (STEPS, len(LAYERS), E)
    bias = rng.normal(0, 0.01, shape)
    mean_score = rng.normal(0.5, 0.02, shape)
    override = np.repeat(np.linspace(0, 0.3, STEPS)[:, None], len(LAYERS), axis=1)
    for stage in ("pretrain", "sft"):
        fakes.write_training(folder / stage, tokens, LAYERS, val_loss=2.5 + val_shift,
                             tokens_per_s_N=tokens_per_s[stage], bias_NLE=bias,
                             mean_score_NLE=mean_score, override_NL=override,
                             routing=stage == "pretrain")
    return probs


def write_humaneval(he, rng, *, nll_shift, passes):
    tasks = [f"HumanEval/{i}" for i in range(TASKS)]
    fakes.write_scores(he, {task: [i < passes] for i, task in enumerate(tasks)})
    nll = rng.gamma(5, 10, TASKS) + nll_shift
    n_bytes = rng.integers(60, 140, TASKS)
    fakes.write_solution_nll(he / "solution_nll.parquet", [
        {"task_id": task, "nll": value, "n_tokens": 50,
         "bits_per_byte": value / math.log(2) / size, "context_tokens": 80, "fits": True,
         "bytes": int(size)} for task, value, size in zip(tasks, nll, n_bytes, strict=True)])


def fake_balance_set(rng, seq_len: int = 32):
    """A balance set of the corpus domains: two windows per document."""
    from moebalance.balance import BalanceSet

    domains, documents = [], []
    for domain in DOMAINS[:-1]:
        for d in range(DOCS_PER_DOMAIN[domain]):
            domains += [domain] * 2
            documents += [f"{domain}-{d}"] * 2
    W = len(domains)
    return BalanceSet(rng.integers(2, 50, (W, seq_len + 1)),
                      rng.integers(0, 8, (W, seq_len + 1)), np.full((W, seq_len + 1), 3),
                      np.array(domains), np.array(documents),
                      np.array([hash(doc) % 2 for doc in documents]), np.arange(W) % 2 == 0,
                      eot_id=0, meta={"windows": W})


def write_utilization(out, rng, probs, nll_shift):
    """utilization/ as the stage writes it, through its own table writers and the balance
    figures of moebalance.balance, from random routing with expert shares ``probs``."""
    bset = fake_balance_set(rng)
    humaneval = [u.Window("humaneval", rng.integers(2, 50, 32),
                          rng.integers(0, 8, 32).astype(np.int8), f"HumanEval/{d}")
                 for d in range(DOCS_PER_DOMAIN["humaneval"]) for _ in range(2)]
    T_set = bset.windows * bset.seq_len
    T = T_set + sum(len(w.token_ids) for w in humaneval)
    picks, nll = {}, {}
    for model in ("pretrain", "sft"):
        picks[model] = np.stack([np.stack([rng.choice(E, K, replace=False, p=probs)
                                           for _ in range(T)]) for _ in LAYERS], axis=1)
        nll[model] = rng.gamma(4, 0.5, T_set) + nll_shift / 100
    fakes.write_utilization(out, bset, humaneval, ["HumanEval/0", "HumanEval/1"], picks, nll,
                            LAYERS, E, jitter_difference=float(rng.normal(0, 0.01)))


def write_run(folder, rng, *, nll_shift=0.0, skew=0.0, passes=0, heldout_shift=None):
    """A fake run: metrics, routing, SFT metrics, HumanEval files and utilization files.
    The held-out documents' NLL moves by ``heldout_shift`` (default: nll_shift)."""
    probs = write_training(folder, rng, val_shift=nll_shift / 100, skew=skew)
    write_humaneval(folder / "humaneval", rng, nll_shift=nll_shift, passes=passes)
    write_utilization(folder / "utilization", rng, probs,
                      nll_shift if heldout_shift is None else heldout_shift)


def make_runs(root, seeds, *, lf_shift=0.0, lf_passes=0, aux_passes=0, seed_sd=0.0,
              none_shift=None):
    """loss_free and aux_loss runs; with ``none_shift`` also `none` runs: unbalanced routing
    and solution NLL shifted by none_shift against aux_loss (held-out NLL not shifted)."""
    rng = np.random.default_rng(0)
    for seed in seeds:
        seed_effect = rng.normal(0, seed_sd)  # training noise: shared by the variants' seed
        write_run(root / "loss_free" / f"seed{seed}", rng, nll_shift=lf_shift + seed_effect,
                  passes=lf_passes)
        write_run(root / "aux_loss" / f"seed{seed}", rng, nll_shift=seed_effect, skew=0.6,
                  passes=aux_passes)
        if none_shift is not None:
            write_run(root / "none" / f"seed{seed}", rng, nll_shift=none_shift + seed_effect,
                      skew=2.0, heldout_shift=seed_effect)
    return root


def compare(out, runs_dir, seeds, *extra, variants=("loss_free", "aux_loss")):
    assert main(["compare", "--runs-dir", str(runs_dir), "--variants", *variants,
                 "--seeds", *map(str, seeds), "--tables-dir", str(out / "tables"),
                 "--figures-dir", str(out / "figures"), "--no-tracking", *extra]) == 0
    tables = out / "tables"
    return {"table": pd.read_csv(tables / "comparison.csv"),
            "paired": pd.read_csv(tables / "paired.csv"),
            "md": (tables / "comparison.md").read_text(),
            "answer": (tables / "answer.md").read_text(), "dir": out}


BASELINES = {"split": "val", "tokens": 4096, "bytes": 12000,
             "unigram": {"nats_per_token": 6.5, "bits_per_byte": 3.2},
             "bigram": {"nats_per_token": 4.6, "bits_per_byte": 2.3, "lambda": 0.9}}


def write_baselines(folder, **bigram):
    path = folder / "baselines.json"
    path.write_text(json.dumps({**BASELINES, "bigram": {**BASELINES["bigram"], **bigram}}))
    return str(path)


# The two fake studies are built and compared once per module; a test that changes a
# study's runs works on its own copy (copy_runs).

@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
    """1 seed; nothing passes."""
    root = tmp_path_factory.mktemp("one_seed")
    return compare(root, make_runs(root / "runs", [0]), [0])


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    """3 seeds with training noise; loss_free clearly better on solution bits per byte and
    passing 10 of the 30 problems that aux_loss fails, in every seed."""
    root = tmp_path_factory.mktemp("three_seeds")
    return compare(root, make_runs(root / "runs", [0, 1, 2], lf_shift=-20.0, seed_sd=3.0,
                                   lf_passes=10),
                   [0, 1, 2], "--baselines", write_baselines(root, nats_per_token=50.0))


@pytest.fixture(scope="module")
def with_control(tmp_path_factory):
    """3 seeds of none, aux_loss and loss_free: `none` routes far less evenly and scores the
    HumanEval solutions 20 nats worse than aux_loss in every seed, but its held-out documents
    no differently: the control is detected on MaxVio and solution bits per byte, not on
    held-out bits per byte."""
    root = tmp_path_factory.mktemp("with_control")
    return compare(root, make_runs(root / "runs", [0, 1, 2], lf_shift=-20.0, seed_sd=3.0,
                                   none_shift=20.0),
                   [0, 1, 2], "--baselines", write_baselines(root, nats_per_token=50.0),
                   variants=("none", "aux_loss", "loss_free"))


def copy_runs(study, to):
    import shutil

    return shutil.copytree(study["dir"] / "runs", to)


def row(table, key, variant):
    return table[(table.metric == key) & (table.variant == variant)].iloc[0]


def test_one_seed_gets_no_seed_interval_and_claims_nothing(one_seed):
    table = one_seed["table"]
    assert row(table, "val_loss_pretrain", "loss_free").ci == \
        "none (1 seed: no seed-level interval)"
    bpb = row(table, "solution_bpb", "loss_free")
    assert bpb.ci == "t over 30 problems (1 seed: evaluation noise only)"
    assert bpb.ci_low < bpb["mean"] < bpb.ci_high
    assert "One seed" in one_seed["md"] and "One seed" in one_seed["answer"]
    primaries = one_seed["paired"][one_seed["paired"].role == "primary"]
    assert set(primaries.verdict) == {"no claim (1 seed)"}


def test_one_seed_still_writes_every_table_and_figure(one_seed):
    table = one_seed["table"]
    assert {"pass_at_1", "maxvio_batch_last", "mi_domain_pretrain", "saturation_pretrain_sft",
            "tokens_per_s_pretrain", "heldout_bpb_pretrain", "bias_override_rate_last",
            "maxvio_global_humaneval"} <= set(table.metric)
    for name in ("maxvio_batch", "bias_trajectories", "nll_vs_maxvio", "bias_diagnostics",
                 "token_class_specialization", "relative_load_loss_free",
                 "relative_load_aux_loss"):
        assert (one_seed["dir"] / "figures" / f"{name}.png").stat().st_size > 1000
    layers = pd.read_csv(one_seed["dir"] / "tables" / "utilization_layers.csv")
    assert len(layers) == 2 * 2 * len(LAYERS)  # variants x models x layers
    assert (one_seed["dir"] / "tables" / "relative_load.csv").is_file()


def test_three_seeds_use_t_over_seeds_and_the_crossed_model_over_documents(three_seeds):
    table = three_seeds["table"]
    assert row(table, "val_loss_pretrain", "aux_loss").ci == "t over 3 seeds"
    bpb = row(table, "heldout_bpb_pretrain", "aux_loss")
    assert bpb.n_seeds == 3 and bpb.ci_low < bpb["mean"] < bpb.ci_high
    assert bpb.ci == "crossed model over 3 seeds x 14 documents"  # HumanEval's are apart


def test_maxvio_gets_the_seed_t_only_and_dead_experts_no_interval(three_seeds):
    table = three_seeds["table"]
    maxvio = row(table, "maxvio_global_pretrain", "aux_loss")
    assert maxvio.ci == "t over 3 seeds" and maxvio.kind == "max"
    assert maxvio["mean"] > row(table, "maxvio_global_pretrain", "loss_free")["mean"]
    dead = row(table, "dead_experts_pretrain", "aux_loss")
    assert dead.ci.startswith("none (a count") and math.isnan(dead.ci_low)


def test_primaries_lead_comparison_md_with_holm_adjusted_verdicts(three_seeds):
    md = three_seeds["md"]
    assert md.index("## Primary endpoints") < md.index("## Every metric per variant")
    paired = three_seeds["paired"]
    primaries = paired[paired.role == "primary"].set_index("metric")
    assert list(primaries.index) == ["heldout_bpb_pretrain", "solution_bpb",
                                     "maxvio_global_pretrain"]
    assert (primaries.p_holm >= primaries.p_value).all()
    assert primaries.loc["solution_bpb", "verdict"] == "better"
    assert primaries.loc["maxvio_global_pretrain", "verdict"] == "better"
    assert np.isfinite(primaries.mdd_80).all()
    assert (paired[paired.role == "exploratory"].metric == "val_loss_pretrain").any()
    assert "Verdict: **better**" in md and "Holm-adjusted p" in md


def test_the_solution_bpb_difference_is_the_crossed_model_of_a_ratio(three_seeds):
    bpb = three_seeds["paired"].set_index("metric").loc["solution_bpb"]
    assert bpb.ci == "crossed model over 3 seeds x 30 problems"
    assert bpb.ci_high < 0
    # the run value is the ratio of summed bits to summed bytes over the problems
    nll = pd.read_parquet(three_seeds["dir"] / "runs" / "aux_loss" / "seed0" / "humaneval"
                          / "solution_nll.parquet")
    seed0 = float(row(three_seeds["table"], "solution_bpb", "aux_loss").seed_values.split(";")[0])
    assert seed0 == pytest.approx(nll.nll.sum() / math.log(2) / nll.bytes.sum(), rel=1e-5)


def test_each_primary_shows_one_interval_p_tost_and_mdd_with_its_upper_bound(three_seeds):
    primaries = three_seeds["paired"][three_seeds["paired"].role == "primary"]
    assert {"se", "df", "tost_p", "mdd_80", "mdd_80_upper", "published_effect"} <= set(
        primaries.columns)
    assert (primaries.mdd_80_upper > primaries.mdd_80).all()
    for line in [x for x in three_seeds["md"].splitlines() if x.startswith("- **")
                 and "Verdict" in x]:
        assert line.count("95% CI") == 1 and line.count("TOST") == 1
        assert "80% upper bound" in line


def numbers(text):
    return [float(x) for x in re.findall(r"[-+−]?\d+\.\d+(?:e[-+]?\d+)?", text.replace("−", "-"))]


@pytest.mark.parametrize("name", ["three_seeds", "with_control"])
def test_every_decimal_the_answer_quotes_is_in_the_tables(name, request):
    study = request.getfixturevalue(name)
    tables = [pd.read_csv(study["dir"] / "tables" / name)
              for name in ("baselines.csv", "pass_at_1.csv")]
    values = pd.concat([t.select_dtypes("number").stack()
                        for t in (study["paired"], study["table"], *tables)]).to_numpy()
    quoted = numbers(study["answer"])
    assert quoted
    for x in quoted:
        assert np.isclose(values, x, rtol=5e-4, atol=5e-5).any(), f"{x} not in the tables"


def test_small_domains_are_flagged_without_an_interval(three_seeds):
    domains = pd.read_csv(three_seeds["dir"] / "tables" / "domains.csv")
    docs = domains[(domains.domain == "docs")]
    assert docs.flag.str.contains("fewer than 5 documents").all()
    assert docs.maxvio_global_low.isna().all()
    library = domains[domains.domain == "library"]
    assert library.maxvio_global_low.notna().all() and (library.flag.isna()).all()


def test_mcnemar_runs_per_seed_when_anything_passes(three_seeds):
    assert "exact McNemar p = 0.001953" in three_seeds["md"]
    per_seed = pd.read_csv(three_seeds["dir"] / "tables" / "pass_at_1.csv")
    assert per_seed.a_only.tolist() == [10] * 3 and per_seed.b_only.tolist() == [0] * 3


def test_nothing_passing_is_said_plainly(one_seed):
    assert "**nothing passes** for either variant" in one_seed["md"]


def test_a_missing_pretrain_run_is_a_usage_error(tmp_path, capsys):
    assert main(["compare", "--runs-dir", str(tmp_path), "--variants", "x", "--seeds", "0",
                 "--tables-dir", str(tmp_path / "t"), "--figures-dir", str(tmp_path / "f"),
                 "--no-tracking"]) == 2
    assert "metrics.parquet not found" in capsys.readouterr().err


def test_an_unknown_primary_metric_is_named_in_the_error(tmp_path, capsys):
    settings = {"primary": [{"metric": "perplexity", "better": "lower"}],
                "equivalence": {"perplexity": 0.1}}
    assert main(["compare", "--runs-dir", str(tmp_path), "--variants", "x", "--seeds", "0",
                 "--tables-dir", str(tmp_path), "--figures-dir", str(tmp_path),
                 "--settings", json.dumps(settings), "--no-tracking"]) == 2
    assert "unknown metric 'perplexity'" in capsys.readouterr().err


def test_a_primary_without_a_margin_is_a_usage_error_naming_it(tmp_path, capsys):
    settings = {"primary": [{"metric": "val_loss_pretrain", "better": "lower"}]}
    assert main(["compare", "--runs-dir", str(tmp_path), "--variants", "x", "--seeds", "0",
                 "--tables-dir", str(tmp_path), "--figures-dir", str(tmp_path),
                 "--settings", json.dumps(settings), "--no-tracking"]) == 2
    assert "no margin for primary 'val_loss_pretrain'" in capsys.readouterr().err


def test_missing_optional_inputs_are_listed_and_their_rows_left_out(one_seed, tmp_path):
    import shutil

    runs_dir = copy_runs(one_seed, tmp_path / "runs")
    shutil.rmtree(runs_dir / "aux_loss" / "seed0" / "humaneval")
    out = compare(tmp_path, runs_dir, [0])
    assert "Missing inputs" in out["md"]
    assert "aux_loss/seed0/humaneval/solution_nll.parquet" in out["md"]
    nll = out["table"][out["table"].metric == "solution_nll"].set_index("variant")
    assert nll.loc["aux_loss", "ci"] == "missing"
    assert np.isfinite(nll.loc["loss_free", "mean"])


def test_the_readme_answer_region_is_filled_from_answer_md(one_seed, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Study\n{claims.ANSWER_BEGIN}\nold\n{claims.ANSWER_END}\ntail\n")
    out = compare(tmp_path, one_seed["dir"] / "runs", [0], "--readme", str(readme))
    text = readme.read_text()
    assert out["answer"] in text and "old" not in text and text.endswith("tail\n")
    # the same runs compared again give the same tables (bar the machine's speed rows)
    for name in ("table", "paired"):
        pd.testing.assert_frame_equal(out[name], one_seed[name])
    assert out["md"] == one_seed["md"]


CODE_HASHES = {"corpus": "c0c0c0c0c0c0c0c0", "pretrain": "p1p1p1p1p1p1p1p1",
               "sft": "s2s2s2s2s2s2s2s2", "compare": "e3e3e3e3e3e3e3e3"}


def write_provenance(runs_dir, seeds, **changed):
    """provenance.json of every training run, as train_and_save writes it; ``changed`` maps a
    run ("loss_free/seed0/pretrain") to fields that differ from the plan's."""
    for variant in ("loss_free", "aux_loss"):
        for seed in seeds:
            for stage in ("pretrain", "sft"):
                run = f"{variant}/seed{seed}/{stage}"
                record = {"git_commit": "0123456789abcdef", "git_dirty": False,
                          "numerics_key": "k", "source_hash": CODE_HASHES[stage],
                          **({"corpus_hash": "f00d" * 16} if stage == "pretrain" else {}),
                          **changed.get(run, {})}
                (runs_dir / run / "provenance.json").write_text(json.dumps(record))


def stamp_of(readme):
    text = readme.read_text()
    assert text.count(provenance.STAMP_BEGIN) == 1 and text.count(provenance.STAMP_END) == 1
    return text.split(provenance.STAMP_BEGIN)[1].split(provenance.STAMP_END)[0]


def test_the_readme_records_commit_corpus_and_code_hashes_of_its_numbers(one_seed, tmp_path):
    runs_dir = copy_runs(one_seed, tmp_path / "runs")
    write_provenance(runs_dir, [0])
    readme = tmp_path / "README.md"
    readme.write_text(f"# Study\n{claims.ANSWER_BEGIN}\nold\n{claims.ANSWER_END}\ntail\n")
    for _ in range(2):  # a second run replaces the stamp it wrote
        compare(tmp_path, runs_dir, [0], "--readme", str(readme),
                "--code-hashes", json.dumps(CODE_HASHES))
    stamp = stamp_of(readme)
    checkout = provenance.git_state()["git_commit"][:12]
    assert f"**Commit** of the compare run: `{checkout}`" in stamp
    assert "training runs at `0123456789ab`" in stamp
    assert f"**Corpus hash:** `{'f00d' * 16}`" in stamp
    for stage, code in CODE_HASHES.items():
        assert f"| {stage} | `{code}` |" in stamp
    assert "Stale" not in stamp
    text = readme.read_text()
    assert text.index(claims.ANSWER_END) < text.index(provenance.STAMP_HEADING)
    assert text.endswith("tail\n")


def test_a_run_of_other_code_than_the_plan_is_named_stale(one_seed, tmp_path):
    runs_dir = copy_runs(one_seed, tmp_path / "runs")
    write_provenance(runs_dir, [0], **{"aux_loss/seed0/sft": {"source_hash": "0ld0ld0ld0ld0ld0"}})
    readme = tmp_path / "README.md"
    readme.write_text(f"{claims.ANSWER_BEGIN}\n{claims.ANSWER_END}\n\n"
                      f"{provenance.STAMP_BEGIN}\nhand-written\n{provenance.STAMP_END}\n")
    compare(tmp_path, runs_dir, [0], "--readme", str(readme),
            "--code-hashes", json.dumps(CODE_HASHES))
    stamp = stamp_of(readme)
    assert "hand-written" not in stamp
    assert "**Stale runs:**" in stamp
    assert "aux_loss/seed0/sft recorded `0ld0ld0ld0ld0ld0`, not `s2s2s2s2s2s2s2s2`" in stamp
    assert "loss_free/seed0/sft recorded" not in stamp


def test_without_the_rules_hashes_the_stamp_lists_what_the_runs_recorded():
    runs = [("pretrain", "a/seed0/pretrain", {"source_hash": "p1", "git_commit": "c"}),
            ("pretrain", "a/seed1/pretrain", {"source_hash": "p0", "git_commit": "c"}),
            ("sft", "a/seed0/sft", {"git_commit": "c", "git_dirty": True})]
    stamp = provenance.stamp(runs, {}, {"git_commit": "d", "git_dirty": False})
    assert "| pretrain | `p0, p1` |" in stamp and "| sft | `unrecorded` |" in stamp
    assert "training runs at `c`, `c` with uncommitted changes" in stamp
    assert "**Corpus hash:** not recorded" in stamp


def test_training_mix_pools_the_corpus_domains_and_leaves_humaneval_out():
    # layer loads: library all on expert 0, test all on expert 1, HumanEval all on expert 2
    util = runs.Utilization(
        counts_LDE=np.array([[[0, 0, 50.0, 0], [30.0, 0, 0, 0], [0, 10.0, 0, 0]]]),
        counts_LCE=np.ones((1, 1, 4)), domains=["humaneval", "library", "test"],
        classes=["x"], layers=[1], top_k=1, documents={}, humaneval_fit_LE=None,
        pairs_LEE=np.ones((1, 4, 4)), vocab_concentration_L=np.ones(1), saturation_L=None)
    np.testing.assert_allclose(util.mix_shares(), [[0.75, 0.25, 0, 0]])
    # MaxVio (Wang et al. Eq. 4) of (0.75, 0.25, 0, 0): (0.75 - 0.25) / 0.25 = 2
    assert util.values()["maxvio_global"] == pytest.approx(2.0)
    # I(expert; domain) over library and test only: each domain on its own expert, shares
    # 0.75 / 0.25: the entropy of (0.75, 0.25) in bits
    assert util.values()["mi_domain"] == pytest.approx(
        -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))


def test_saturation_curve_weights_tokens_within_a_layer_and_averages_layers():
    table = pd.DataFrame({
        "step": [50, 50, 50, 150, 150],
        "layer": [1, 1, 2, 1, 2],
        "domain": ["a", "b", "a", "a", "a"],
        "tokens": [10, 30, 40, 40, 40],
        "overlap": [10, 0, 20, 40, 40],
    })
    curve = runs.saturation_curve(table)
    # layer 1 at step 50: 10/40; layer 2: 20/40; mean 0.375. The final model: 1.
    assert curve.to_dict() == {50: pytest.approx(0.375), 150: pytest.approx(1.0)}


def test_the_committed_readme_answer_is_the_generated_one():
    """results/README.md carries the markers; once a study wrote tables/answer.md, the text
    between them is exactly that file (no hand-written claim can slip in)."""
    results = runs.Path(__file__).resolve().parents[1] / "results"
    readme = (results / "README.md").read_text()
    assert readme.count(claims.ANSWER_BEGIN) == 1 and readme.count(claims.ANSWER_END) == 1
    answer = results / "tables" / "answer.md"
    if answer.is_file():
        assert claims.fill_readme(readme, answer.read_text()) == readme


def test_bias_layers_table_has_each_layers_spreads_and_override_rate(three_seeds):
    bias = pd.read_csv(three_seeds["dir"] / "tables" / "bias_layers.csv")
    assert len(bias) == 2 * 3 * len(LAYERS)  # variants x seeds x layers
    assert (bias.bias_std > 0).all() and (bias.score_std > 0).all()
    assert bias.bias_score_correlation.between(-1, 1).all()
    # the synthetic override rate rises linearly to 0.3; the last 10 of 40 steps average
    assert bias.override_rate_last.to_numpy() == pytest.approx(np.linspace(0, 0.3, STEPS)[-10:]
                                                               .mean())


def test_the_answer_leads_with_the_positive_control(three_seeds):
    baselines = pd.read_csv(three_seeds["dir"] / "tables" / "baselines.csv")
    assert list(baselines.model) == ["unigram", "bigram", "loss_free", "aux_loss"]
    assert (baselines[baselines.kind == "variant"].worst_margin > 0).all()
    assert three_seeds["answer"].index("Positive control") < three_seeds["answer"].index(
        "Primary endpoints")
    assert (baselines[baselines.kind == "variant"].worst_margin >= 0.3).all()
    assert "Every variant beats the bigram by at least 0.3 nats/token in every seed" in (
        three_seeds["md"])


def control_rows(**variants):
    """baselines.csv rows: the two n-gram baselines (bigram 4.6 nats/token), then each
    variant given as name=(mean margin, worst seed's margin) over the bigram."""
    rows = [{"model": "unigram", "kind": "baseline", "nats_per_token": 6.5, "margin": -1.9,
             "worst_margin": np.nan},
            {"model": "bigram", "kind": "baseline", "nats_per_token": 4.6, "margin": 0.0,
             "worst_margin": np.nan}]
    return rows + [{"model": name, "kind": "variant", "nats_per_token": 4.6 - margin,
                    "margin": margin, "worst_margin": worst}
                   for name, (margin, worst) in variants.items()]


def test_a_variant_worse_than_the_bigram_fails_the_positive_control():
    text = "\n".join(claims.control_lines(control_rows(none=(0.1, -0.05), aux_loss=(0.6, 0.5))))
    assert "The positive control fails:** none does not beat the bigram count table by 0.3" in text
    assert "aux_loss" not in text.split("fails")[1]


def test_the_positive_control_needs_the_configured_margin_in_every_seed():
    rows = control_rows(none=(0.4, 0.2), aux_loss=(0.35, 0.3))
    assert "fails:** none does not" in "\n".join(claims.control_lines(rows))
    assert "fails" not in "\n".join(claims.control_lines(rows, margin=0.2))


def test_a_baselines_file_without_the_bigram_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "baselines.json"
    bad.write_text(json.dumps({"unigram": {"nats_per_token": 6.0}}))
    assert main(["compare", "--runs-dir", str(tmp_path), "--variants", "a", "--seeds", "0",
                 "--tables-dir", str(tmp_path / "t"), "--figures-dir", str(tmp_path / "f"),
                 "--baselines", str(bad), "--no-tracking"]) == 2
    assert "--baselines" in capsys.readouterr().err


def test_the_answer_reports_the_sensitivity_control_after_the_positive_control(with_control):
    answer = with_control["answer"]
    assert answer.index("Positive control") < answer.index("Sensitivity control") < \
        answer.index("Primary endpoints")
    md = with_control["md"]
    assert md.index("Sensitivity control") < md.index("## Primary endpoints")


def test_the_control_is_its_own_holm_family_on_every_primary(with_control):
    paired = with_control["paired"]
    control = paired[paired.role == "control"].set_index("metric")
    assert set(control.variant) == {"none"} and set(control.baseline) == {"aux_loss"}
    assert set(control.index) == {"maxvio_global_pretrain", "heldout_bpb_pretrain",
                                  "solution_bpb"}
    assert (control.p_holm >= control.p_value).all()
    assert control.loc["maxvio_global_pretrain", "verdict"] == "detected"
    assert control.loc["solution_bpb", "verdict"] == "detected"
    assert control.loc["heldout_bpb_pretrain", "verdict"] == "not detected"


def test_an_endpoint_that_misses_the_control_gives_no_verdict_on_the_pair(with_control):
    primaries = with_control["paired"].query("role == 'primary'").set_index("metric")
    assert primaries.loc["heldout_bpb_pretrain", "verdict"] == "not measurable here"
    assert primaries.loc["solution_bpb", "verdict"] == "better"   # detected: a verdict stands
    assert primaries.loc["maxvio_global_pretrain", "sensitivity"] == "detected"
    lines = {key: next(x for x in with_control["answer"].splitlines()
                       if x.startswith("- **" + metric_display(key)) and "none −" in x)
             for key in ("heldout_bpb_pretrain", "solution_bpb")}
    assert "cannot register balancing at this scale" in lines["heldout_bpb_pretrain"]
    assert "**not measurable here**" in lines["heldout_bpb_pretrain"]
    assert "registers balancing at this scale" in lines["solution_bpb"]
    assert "cannot" not in lines["solution_bpb"]


def metric_display(key):
    from moebalance.analysis.catalogue import metric

    return metric(key).display


def test_an_absent_control_variant_is_said_not_failed(three_seeds):
    assert "not run: the study has no none variant" in three_seeds["answer"]
    assert (three_seeds["paired"].role != "control").all()


def test_a_margin_wider_than_the_published_effect_is_said_to_not_exclude_it(three_seeds):
    answer = three_seeds["answer"]
    line = next(x for x in answer.splitlines() if x.startswith("- held-out bits/byte"))
    assert "published effect 0.003" in line and "cannot exclude the published effect" in line
    maxvio = next(x for x in answer.splitlines() if x.startswith("- MaxVio_global (pretrain"))
    assert "published effect 0.68" in maxvio and "cannot exclude" not in maxvio


def test_exploratory_rows_carry_bh_q_values_and_the_answer_calls_them_hypotheses(three_seeds):
    exploratory = three_seeds["paired"][three_seeds["paired"].role == "exploratory"]
    tested = exploratory[exploratory.p_value.notna()]
    assert (tested.q_bh >= tested.p_value - 1e-12).all()
    answer = three_seeds["answer"]
    assert "**Hypotheses, not findings**" in answer
    for key in ("maxvio_batch_last", "mi_token_class_pretrain",
                "domain_specialization_pretrain"):
        assert f"- {metric_display(key)}: loss_free − aux_loss = " in answer


def test_timing_rows_are_described_but_tested_in_no_family(three_seeds):
    from moebalance.analysis import statistics as st

    paired = three_seeds["paired"]
    timing = paired[paired.metric == "tokens_per_s_pretrain"]
    assert set(timing.role) == {"timing"} and timing.p_value.isna().all()
    assert timing.q_bh.isna().all() and timing.ci_low.notna().all()
    # the BH family is the exploratory rows alone: their q-values are BH of their p-values
    exploratory = paired[paired.role == "exploratory"]
    assert exploratory.q_bh.to_numpy() == pytest.approx(
        st.benjamini_hochberg(exploratory.p_value.to_numpy()), nan_ok=True)
    assert "| tokens/s (pretrain) | loss_free − aux_loss |" in three_seeds["md"]
    assert "not tested (timing)" in three_seeds["md"]


def test_the_answer_states_the_design_limits(three_seeds):
    answer = three_seeds["answer"]
    assert "not tuned in the default study" in answer and "config/frontier.yaml" in answer
    assert "may span documents" in answer and "`grad_accum: 1`" in answer


def test_comparison_md_sets_floor_and_split_half_beside_each_heldout_maxvio(three_seeds):
    md = three_seeds["md"]
    head = md.index("| variant | MaxVio_global | floor | split-half | half-size |")
    assert head < md.index("## Every metric per variant")
    rows = md[head:].splitlines()[2:4]
    table = three_seeds["table"].set_index(["metric", "variant"])["mean"]
    for row in rows:
        variant, value, floor, *_ = [c.strip() for c in row.strip("|").split("|")]
        assert float(value) == pytest.approx(table[("maxvio_global_pretrain", variant)],
                                             rel=1e-3)
        assert float(floor) == pytest.approx(table[("maxvio_floor_pretrain", variant)],
                                             rel=1e-3)
