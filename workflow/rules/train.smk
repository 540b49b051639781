# Training: pretraining and SFT, one job per (variant, seed). A variant's resolved science
# settings are one param, so changing any value re-runs exactly the variants it reaches;
# execution knobs come from EXECUTION and THREADS (common.smk), outside the params.


rule pretrain:
    input:
        MLFLOW_READY,
        meta=rules.tokens.output.meta,
        train=rules.tokens.output.train,
        val=rules.tokens.output.val,
        tokenizer=rules.tokenizer.output.tokenizer,
        balance_set=expand(rules.balance_set.output.windows, split="val"),
    output:
        model=directory(run_file("pretrain", "model")),
        metrics=run_file("pretrain", "metrics.parquet"),
        routing=run_file("pretrain", "routing.parquet"),
        snapshots=directory(run_file("pretrain", "snapshots")),
        provenance=run_file("pretrain", "provenance.json"),
        balance=run_file("pretrain", "balance.json"),
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
        run_log("pretrain"),
    benchmark:
        run_benchmark("pretrain")
    shell:
        "moebalance pretrain --tokens-dir {params.tokens_dir:q} --out-dir {params.out_dir:q}"
        " --checkpoint-dir {params.checkpoint_dir:q} --tokenizer-dir {params.tokenizer_dir:q}"
        " --balance-set {input.balance_set:q}"
        " --settings {params.settings:q} --execution {EXECUTION[pretrain]:q}"
        " --threads {threads} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


PRETRAIN_TARGETS = expand(rules.pretrain.output, variant=VARIANTS, seed=SEEDS)


rule sft:
    input:
        MLFLOW_READY,
        model=rules.pretrain.output.model,
        train=rules.sft_data.output.train,
        val=rules.sft_data.output.val,
    output:
        model=directory(run_file("sft", "model")),
        metrics=run_file("sft", "metrics.parquet"),
        routing=run_file("sft", "routing.parquet"),
        provenance=run_file("sft", "provenance.json"),
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
        run_log("sft"),
    benchmark:
        run_benchmark("sft")
    shell:
        "moebalance sft --pretrained {input.model:q} --sft-dir {params.sft_dir:q}"
        " --out-dir {params.out_dir:q} --checkpoint-dir {params.checkpoint_dir:q}"
        " --settings {params.settings:q} --execution {EXECUTION[sft]:q}"
        " --threads {threads} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"
