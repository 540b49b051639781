# Training: pretraining and SFT, one job per (variant, seed). A variant's resolved science
# settings are one param, so changing any value re-runs exactly the variants it reaches;
# execution knobs come from EXECUTION and THREADS (common.smk), outside the params.

PRETRAIN_TARGETS = expand(
    f"{RUN_DIR}/pretrain/{{name}}",
    variant=VARIANTS,
    seed=SEEDS,
    name=["model", "metrics.parquet", "routing.parquet", "snapshots", "provenance.json",
          "balance.json"],
)


rule pretrain:
    input:
        MLFLOW_READY,
        meta=TOKENS_META,
        train=f"{TOKENS_DIR}/train.bin",
        val=f"{TOKENS_DIR}/val.bin",
        tokenizer=rules.tokenizer.output.tokenizer,
        balance_set=expand(rules.balance_set.output.windows, split="val"),
    output:
        model=directory(f"{RUN_DIR}/pretrain/model"),
        metrics=f"{RUN_DIR}/pretrain/metrics.parquet",
        routing=f"{RUN_DIR}/pretrain/routing.parquet",
        snapshots=directory(f"{RUN_DIR}/pretrain/snapshots"),
        provenance=f"{RUN_DIR}/pretrain/provenance.json",
        balance=f"{RUN_DIR}/pretrain/balance.json",
    params:
        settings=lambda wildcards: json.dumps(SETTINGS[wildcards.variant], sort_keys=True),
        tokens_dir=parent_of("input", "meta"),
        tokenizer_dir=parent_of("input", "tokenizer"),
        out_dir=parent_of("output", "metrics"),
        checkpoint_dir=checkpoint_dir("pretrain"),
        code=stage_code("pretrain"),
    threads: THREADS["pretrain"]
    resources:
        gpu=lambda wildcards: uses_gpu(SETTINGS[wildcards.variant]),
    log:
        f"{LOGS}/pretrain/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/pretrain/{{variant}}/seed{{seed}}.tsv"
    shell:
        "moebalance pretrain --tokens-dir {params.tokens_dir:q} --out-dir {params.out_dir:q}"
        " --checkpoint-dir {params.checkpoint_dir:q} --tokenizer-dir {params.tokenizer_dir:q}"
        " --balance-set {input.balance_set:q}"
        " --settings {params.settings:q} --execution {EXECUTION[pretrain]:q}"
        " --threads {threads} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


rule sft:
    input:
        MLFLOW_READY,
        model=rules.pretrain.output.model,
        train=rules.sft_data.output.train,
        val=rules.sft_data.output.val,
    output:
        model=directory(f"{RUN_DIR}/sft/model"),
        metrics=f"{RUN_DIR}/sft/metrics.parquet",
        routing=f"{RUN_DIR}/sft/routing.parquet",
        provenance=f"{RUN_DIR}/sft/provenance.json",
    params:
        settings=lambda wildcards: json.dumps(SFT_SETTINGS[wildcards.variant], sort_keys=True),
        sft_dir=parent_of("input", "train"),
        out_dir=parent_of("output", "metrics"),
        checkpoint_dir=checkpoint_dir("sft"),
        code=stage_code("sft"),
    threads: THREADS["sft"]
    resources:
        gpu=lambda wildcards: uses_gpu(SFT_SETTINGS[wildcards.variant]),
    log:
        f"{LOGS}/sft/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/sft/{{variant}}/seed{{seed}}.tsv"
    shell:
        "moebalance sft --pretrained {input.model:q} --sft-dir {params.sft_dir:q}"
        " --out-dir {params.out_dir:q} --checkpoint-dir {params.checkpoint_dir:q}"
        " --settings {params.settings:q} --execution {EXECUTION[sft]:q}"
        " --threads {threads} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"
