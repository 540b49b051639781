# Pretraining: one job per (variant, seed). A variant is the model/balancing/pretrain
# sections of the config with its own overrides merged in; the whole resolved settings
# object is one param, so changing any value re-runs exactly the variants it reaches.

from moebalance.training.pretrain import variant_settings

VARIANTS = list(config["variants"])
SETTINGS = {variant: variant_settings(config, variant) for variant in VARIANTS}
SEEDS = config["seeds"]
RUNS = f"{RESULTS}/runs"
PRETRAIN_CODE = code_hash(
    "data/tokens.py",
    "model/__init__.py",
    "model/config.py",
    "model/router.py",
    "model/balancing.py",
    "training/__init__.py",
    "training/batches.py",
    "training/checkpoint.py",
    "training/telemetry.py",
    "training/trainer.py",
    "training/pretrain.py",
    "training/stage.py",
)


PRETRAIN_TARGETS = expand(
    f"{RUNS}/{{variant}}/seed{{seed}}/pretrain/{{name}}",
    variant=VARIANTS,
    seed=SEEDS,
    name=["model", "metrics.parquet", "routing.parquet", "snapshots"],
)


rule pretrain:
    input:
        MLFLOW_READY,
        meta=TOKENS_META,
        train=f"{TOKENS_DIR}/train.bin",
        val=f"{TOKENS_DIR}/val.bin",
        tokenizer=rules.tokenizer.output.tokenizer,
    output:
        model=directory(f"{RUNS}/{{variant}}/seed{{seed}}/pretrain/model"),
        metrics=f"{RUNS}/{{variant}}/seed{{seed}}/pretrain/metrics.parquet",
        routing=f"{RUNS}/{{variant}}/seed{{seed}}/pretrain/routing.parquet",
        snapshots=directory(f"{RUNS}/{{variant}}/seed{{seed}}/pretrain/snapshots"),
    wildcard_constraints:
        variant="|".join(VARIANTS) or "(?!)",
        seed=r"\d+",
    params:
        settings=lambda wildcards: json.dumps(SETTINGS[wildcards.variant], sort_keys=True),
        tokens_dir=parent_of("input", "meta"),
        tokenizer_dir=parent_of("input", "tokenizer"),
        out_dir=parent_of("output", "metrics"),
        # outside the declared outputs: Snakemake deletes those of a failed job, a rerun resumes
        checkpoint_dir=lambda wildcards: (
            f"{RESULTS}/checkpoints/{wildcards.variant}/seed{wildcards.seed}/pretrain"
        ),
        code=PRETRAIN_CODE,
    threads: lambda wildcards: max(1, SETTINGS[wildcards.variant]["train"].get("threads", 1))
    resources:
        gpu=lambda wildcards: int(
            SETTINGS[wildcards.variant]["train"].get("device", "auto").startswith("cuda")
        ),
    log:
        f"{LOGS}/pretrain/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/pretrain/{{variant}}/seed{{seed}}.tsv"
    shell:
        "moebalance pretrain --tokens-dir {params.tokens_dir:q} --out-dir {params.out_dir:q}"
        " --checkpoint-dir {params.checkpoint_dir:q} --tokenizer-dir {params.tokenizer_dir:q}"
        " --settings {params.settings:q} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"
