# The balance-quality frontier (config/frontier.yaml; `snakemake frontier`): every grid point
# and reference variant of the sweep, on sweep.seeds, measured as pretrained models. Per run,
# the utilization stage on the test split's balance set (no SFT model: the held-out balance,
# per-domain balance, bias-jitter check and per-document NLL of the pretrained model) and the
# canonical-solution NLL of the pretrained model; then the frontier stage's tables, figure and
# README. Uses the pretrain, balance_set, tokenizer and baselines rules, run_file, SETTINGS,
# SWEEP and ANALYSIS; include this file after report.smk.

FRONTIER = config["frontier"]


rule frontier_utilization:
    input:
        MLFLOW_READY,
        pretrain_model=rules.pretrain.output.model,
        routing=rules.pretrain.output.routing,
        metrics=rules.pretrain.output.metrics,  # the final step, read beside the model
        balance_set=expand(rules.balance_set.output.windows, split="test"),
        tokenizer=rules.tokenizer.output.tokenizer,
    output:
        balance=run_file("frontier", "utilization/balance.json"),
        documents=run_file("frontier", "utilization/documents.parquet"),
        meta=run_file("frontier", "utilization/meta.json"),
    params:
        tokenizer_dir=parent_of("input", "tokenizer"),
        out_dir=parent_of("output", "meta"),
        settings=settings_param(UtilizationSettings, section_of(UtilizationSettings, ANALYSIS)),
        code=stage_code("utilization"),
    threads: 1
    log:
        run_log("frontier_utilization"),
    benchmark:
        run_benchmark("frontier_utilization")
    shell:
        "moebalance utilization --pretrain-model {input.pretrain_model:q}"
        " --routing {input.routing:q} --tokenizer {params.tokenizer_dir:q}"
        " --balance-set {input.balance_set:q} --out-dir {params.out_dir:q}"
        " --threads {threads} --settings {params.settings:q} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


rule frontier_solution_nll:
    input:
        MLFLOW_READY,
        model=rules.pretrain.output.model,
    output:
        run_file("frontier", "solution_nll.parquet"),
    params:
        # no SFT: the pretraining loop's window is the trained length; longer texts are
        # scored in windows of it
        settings=lambda wildcards: settings_param(SolutionNllSettings, {"fit_tokens": trained_length(
            SETTINGS[wildcards.variant], SETTINGS[wildcards.variant])}),
        code=stage_code("solution-nll"),
    threads: 1
    log:
        run_log("frontier_solution_nll"),
    benchmark:
        run_benchmark("frontier_solution_nll")
    shell:
        "OMP_NUM_THREADS={threads} moebalance solution-nll --model {input.model:q}"
        " --out {output:q} --settings {params.settings:q} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


FRONTIER_RUNS = expand(
    [rules.pretrain.output.metrics, rules.pretrain.output.provenance,
     *rules.frontier_utilization.output, rules.frontier_solution_nll.output[0]],
    variant=VARIANTS, seed=SEEDS)


# Every point's runs trained and measured, without the report: one sitting's target when the
# whole preset does not fit in one.
rule frontier_runs:
    input:
        FRONTIER_RUNS,


if SWEEP.grids and SWEEP.phase == "tune":
    # The stages the frontier's numbers come from; their code hashes go into its README.
    FRONTIER_STAGES = ["corpus", "tokenizer", "tokens", "balance-set", "baselines", "pretrain",
                       "utilization", "solution-nll", "frontier"]

    rule frontier:
        input:
            runs=FRONTIER_RUNS,
            baselines=rules.baselines.output[0],
        output:
            runs=f"{RESULTS}/tables/frontier_runs.csv",
            points=f"{RESULTS}/tables/frontier.csv",
            matched=f"{RESULTS}/tables/matched_balance.csv",
            jitter=f"{RESULTS}/tables/jitter.csv",
            md=f"{RESULTS}/tables/frontier.md",
            figure=f"{RESULTS}/figures/balance_quality.png",
            readme=f"{RESULTS}/README.md",
        params:
            settings=settings_param(SweepSettings, config["sweep"]),
            runs=RUNS,
            tables_dir=parent_of("output", "points"),
            frontier=settings_param(FrontierSettings, FRONTIER),
            benchmarks=BENCH,  # each per-run job's time, for the README's cost section
            code=stage_code("frontier"),
            codes=json.dumps({stage: stage_code(stage) for stage in FRONTIER_STAGES}),
        log:
            f"{LOGS}/frontier.log",
        benchmark:
            f"{BENCH}/frontier.tsv"
        shell:
            "moebalance frontier --settings {params.settings:q} --runs {params.runs:q}"
            " --baselines {input.baselines:q} --frontier {params.frontier:q}"
            " --code-hashes {params.codes:q}"
            " --tables-dir {params.tables_dir:q} --figure {output.figure:q}"
            " --readme {output.readme:q} --benchmarks {params.benchmarks:q}"
            " --source-hash {params.code} > {log:q} 2>&1"
