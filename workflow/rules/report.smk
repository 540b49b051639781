# Analysis: held-out routing per (variant, seed), then one comparison of all variants with
# its tables, figures and the HTML report (`snakemake --report report.html`).
# Uses the training and evaluation rules, run_file, RUNS, VARIANTS and SEEDS from
# common.smk; include this file after them.

ANALYSIS = config["analysis"]  # keys of two stages: utilization's and compare's settings


# results/README.md carries the study's answer between markers that compare fills in
README = Path(RESULTS) / "README.md"
TABLES = f"{RESULTS}/tables"
FIGURES = f"{RESULTS}/figures"



rule utilization:
    input:
        MLFLOW_READY,
        pretrain_model=rules.pretrain.output.model,
        # the stage reads the final step of the snapshots' curve from the metrics.parquet
        # beside the pretrained model
        pretrain_metrics=rules.pretrain.output.metrics,
        routing=rules.pretrain.output.routing,
        snapshots=rules.pretrain.output.snapshots,
        sft_model=rules.sft.output.model,
        balance_set=expand(rules.balance_set.output.windows, split="test"),
        tokenizer=rules.tokenizer.output.tokenizer,
    output:
        counts=run_file("utilization", "counts.parquet"),
        documents=run_file("utilization", "documents.parquet"),
        coactivation=run_file("utilization", "coactivation.parquet"),
        vocab=run_file("utilization", "vocab.parquet"),
        saturation=run_file("utilization", "saturation.parquet"),
        saturation_steps=run_file("utilization", "saturation_steps.parquet"),
        meta=run_file("utilization", "meta.json"),
        balance=run_file("utilization", "balance.json"),
    params:
        tokenizer_dir=parent_of("input", "tokenizer"),
        out_dir=parent_of("output", "meta"),
        settings=settings_param(UtilizationSettings,
                                section_of(UtilizationSettings, ANALYSIS)),
        code=stage_code("utilization"),
    threads: 1
    log:
        run_log("utilization"),
    benchmark:
        run_benchmark("utilization")
    shell:
        "moebalance utilization --pretrain-model {input.pretrain_model:q}"
        " --sft-model {input.sft_model:q} --snapshots {input.snapshots:q}"
        " --routing {input.routing:q} --tokenizer {params.tokenizer_dir:q}"
        " --balance-set {input.balance_set:q} --out-dir {params.out_dir:q}"
        " --threads {threads} --settings {params.settings:q} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


# every file of every (variant, seed) that compare reads (moebalance.analysis.runs)
RUN_FILES = expand(
    [
        rules.pretrain.output.metrics,
        rules.pretrain.output.routing,
        rules.pretrain.output.provenance,
        rules.pretrain.output.balance,
        rules.sft.output.metrics,
        rules.sft.output.provenance,
        rules.score.output.summary,
        rules.score.output.executions,
        rules.solution_nll.output[0],
        *rules.utilization.output,
    ],
    variant=VARIANTS,
    seed=SEEDS,
)
# The stages the compared numbers come from, compare included: their code hashes (each one
# the value its rule passes as --source-hash) go into results/README.md's provenance stamp.
# Left out: init-tracking (creates the MLflow store), sweep-select (its choice reaches the
# runs as settings) and frontier (a study of its own, with its own stamp).
NUMBER_STAGES = [stage for stage in STAGES
                 if stage not in ("init-tracking", "sweep-select", "frontier")]
COMPARE_FIGURES = ["maxvio_batch", "bias_trajectories", "nll_vs_maxvio",
                   "token_class_specialization", "saturation_steps", "bias_diagnostics"]


rule compare:
    input:
        MLFLOW_READY,
        runs=RUN_FILES,
        baselines=rules.baselines.output[0],
    output:
        csv=report(f"{TABLES}/comparison.csv", caption="../report/comparison.rst",
                   category="Tables"),
        answer=report(f"{TABLES}/answer.md", caption="../report/answer.rst", category="Tables"),
        pass_at_1=f"{TABLES}/pass_at_1.csv",
        baselines=report(f"{TABLES}/baselines.csv", caption="../report/baselines.rst",
                         category="Tables"),
        bias_layers=report(f"{TABLES}/bias_layers.csv", caption="../report/bias_diagnostics.rst",
                           category="Tables"),
        domains=report(f"{TABLES}/domains.csv", caption="../report/domains.rst",
                       category="Tables"),
        md=report(f"{TABLES}/comparison.md", caption="../report/comparison.rst",
                  category="Tables"),
        paired=report(f"{TABLES}/paired.csv", caption="../report/paired.rst",
                      category="Tables"),
        layers=report(f"{TABLES}/utilization_layers.csv",
                      caption="../report/utilization_layers.rst", category="Tables"),
        loads=report(f"{TABLES}/relative_load.csv", caption="../report/relative_load.rst",
                     category="Tables"),
        specialization=report(f"{TABLES}/specialization.csv",
                              caption="../report/specialization.rst", category="Tables"),
        figures=[report(f"{FIGURES}/{name}.png", caption=f"../report/{name}.rst",
                        category="Figures") for name in COMPARE_FIGURES],
        heatmaps=report(expand(f"{FIGURES}/relative_load_{{variant}}.png", variant=VARIANTS),
                        caption="../report/relative_load_heatmap.rst", category="Figures"),
    params:
        runs_dir=RUNS,
        variants=" ".join(VARIANTS),
        seeds=" ".join(map(str, SEEDS)),
        settings=settings_param(CompareSettings, section_of(CompareSettings, ANALYSIS)),
        readme=f"--readme {shlex.quote(str(README))}" if README.is_file() else "",
        tables_dir=parent_of("output", "csv"),
        figures_dir=lambda wildcards, output: str(Path(output.figures[0]).parent),
        code=stage_code("compare"),
        codes=json.dumps({stage: stage_code(stage) for stage in NUMBER_STAGES}),
    log:
        f"{LOGS}/compare.log",
    benchmark:
        f"{BENCH}/compare.tsv"
    shell:
        "moebalance compare --runs-dir {params.runs_dir:q} --variants {params.variants}"
        " --seeds {params.seeds} --settings {params.settings:q}"
        " --baselines {input.baselines:q} {params.readme}"
        " --tables-dir {params.tables_dir:q} --figures-dir {params.figures_dir:q}"
        " --code-hashes {params.codes:q} --source-hash {params.code}"
        " > {log:q} 2>&1"


ANALYSIS_TARGETS = [rules.compare.output.md]
