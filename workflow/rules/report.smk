# Analysis: held-out routing per (variant, seed), then one comparison of all variants with
# its tables, figures and the HTML report (`snakemake --report report.html`).
# Uses RUN_DIR, VARIANTS and SEEDS from common.smk.

ANALYSIS = config["analysis"]  # keys of two stages: utilization's and compare's settings


# results/README.md carries the study's answer between markers that compare fills in
README = Path(RESULTS) / "README.md"
TABLES = f"{RESULTS}/tables"
FIGURES = f"{RESULTS}/figures"



rule utilization:
    input:
        MLFLOW_READY,
        pretrain=f"{RUN_DIR}/pretrain/metrics.parquet",
        sft=f"{RUN_DIR}/sft/metrics.parquet",
        snapshots=f"{RUN_DIR}/pretrain/snapshots",
        test=f"{DATA}/corpus/test.parquet",
        train=f"{DATA}/corpus/train.parquet",
        tokenizer=f"{DATA}/tokenizer/tokenizer.json",
    output:
        counts=f"{RUN_DIR}/utilization/counts.parquet",
        documents=f"{RUN_DIR}/utilization/documents.parquet",
        coactivation=f"{RUN_DIR}/utilization/coactivation.parquet",
        vocab=f"{RUN_DIR}/utilization/vocab.parquet",
        saturation=f"{RUN_DIR}/utilization/saturation.parquet",
        saturation_steps=f"{RUN_DIR}/utilization/saturation_steps.parquet",
        meta=f"{RUN_DIR}/utilization/meta.json",
    params:
        # the model folders sit beside metrics.parquet (same job), whatever their declaration
        pretrain_model=lambda wildcards, input: str(Path(input.pretrain).parent / "model"),
        sft_model=lambda wildcards, input: str(Path(input.sft).parent / "model"),
        tokenizer_dir=parent_of("input", "tokenizer"),
        out_dir=parent_of("output", "meta"),
        settings=settings_param(UtilizationSettings,
                                section_of(UtilizationSettings, ANALYSIS)),
        code=stage_code("utilization"),
    threads: 1
    log:
        f"{LOGS}/utilization/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/utilization/{{variant}}/seed{{seed}}.tsv"
    shell:
        "moebalance utilization --pretrain-model {params.pretrain_model:q}"
        " --sft-model {params.sft_model:q} --snapshots {input.snapshots:q} --tokenizer {params.tokenizer_dir:q}"
        " --test {input.test:q} --train {input.train:q} --out-dir {params.out_dir:q}"
        " --threads {threads} --settings {params.settings:q} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


# every file of every (variant, seed) that compare reads
RUN_FILES = expand(f"{RUNS}/{{variant}}/seed{{seed}}/{{name}}", variant=VARIANTS, seed=SEEDS, name=[
    "pretrain/metrics.parquet", "pretrain/routing.parquet", "pretrain/provenance.json",
    "sft/metrics.parquet", "sft/provenance.json",
    "humaneval/summary.json", "humaneval/executions.parquet", "humaneval/solution_nll.parquet",
    "utilization/counts.parquet", "utilization/documents.parquet",
    "utilization/coactivation.parquet", "utilization/vocab.parquet",
    "utilization/saturation.parquet", "utilization/saturation_steps.parquet",
    "utilization/meta.json"])
# The stages the compared numbers come from, compare included: their code hashes (each one
# the value its rule passes as --source-hash) go into results/README.md's provenance stamp.
# Left out: init-tracking (creates the MLflow store) and sweep-select (its choice reaches the
# runs as settings).
NUMBER_STAGES = [stage for stage in STAGES if stage not in ("init-tracking", "sweep-select")]
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
        runs_dir=lambda wildcards, input: str(Path(input.runs[0]).parents[3]),
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
