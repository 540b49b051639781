# Data stages: corpus -> tokenizer -> token shards, and SFT pairs mined from the train split.

# corpus.expected_manifest checks the built corpus and changes none of it: the stage gets
# every key, the rerun-triggering param all but that one, so pinning a corpus plans no job.
CORPUS_SETTINGS = settings_param(CorpusSettings, config["corpus"])


rule corpus:
    input:
        MLFLOW_READY,
    output:
        train=f"{DATA}/corpus/train.parquet",
        val=f"{DATA}/corpus/val.parquet",
        test=f"{DATA}/corpus/test.parquet",
        manifest=f"{DATA}/corpus/manifest.json",
        decontamination=f"{DATA}/decontamination.parquet",
    params:
        out_dir=parent_of("output", "train"),
        settings=settings_param(CorpusSettings, {key: value for key, value in
                                                 config["corpus"].items()
                                                 if key != "expected_manifest"}),
        code=stage_code("corpus"),
    log:
        f"{LOGS}/corpus.log",
    benchmark:
        f"{BENCH}/corpus.tsv"
    shell:
        "moebalance corpus --out-dir {params.out_dir} --decontamination {output.decontamination}"
        " --settings {CORPUS_SETTINGS:q} --source-hash {params.code} > {log:q} 2>&1"


rule tokenizer:
    input:
        MLFLOW_READY,
        train=rules.corpus.output.train,
        val=rules.corpus.output.val,
    output:
        config=f"{DATA}/tokenizer/tokenizer_config.json",
        tokenizer=f"{DATA}/tokenizer/tokenizer.json",
        meta=f"{DATA}/tokenizer/moebalance_tokenizer.json",
    params:
        out_dir=parent_of("output", "tokenizer"),
        settings=settings_param(TokenizerSettings, config["tokenizer"]),
        code=stage_code("tokenizer"),
    log:
        f"{LOGS}/tokenizer.log",
    benchmark:
        f"{BENCH}/tokenizer.tsv"
    shell:
        "moebalance tokenizer --train {input.train} --val {input.val} --out-dir {params.out_dir}"
        " --settings {params.settings:q} --source-hash {params.code} > {log:q} 2>&1"


# The tokens stage has no science settings; its `tokens` section holds an execution knob
# (documents per encode batch), outside the params: changing it plans no job.
TOKENS_BATCH = config["tokens"].get("batch_size")
TOKENS_EXECUTION = f"--batch-size {TOKENS_BATCH}" if TOKENS_BATCH is not None else ""


rule tokens:
    input:
        MLFLOW_READY,
        train=rules.corpus.output.train,
        val=rules.corpus.output.val,
        test=rules.corpus.output.test,
        tokenizer=rules.tokenizer.output.tokenizer,
    output:
        meta=f"{DATA}/tokens/meta.json",
        train=f"{DATA}/tokens/train.bin",
        val=f"{DATA}/tokens/val.bin",
    params:
        corpus_dir=parent_of("input", "train"),
        tokenizer_dir=parent_of("input", "tokenizer"),
        out_dir=parent_of("output", "meta"),
        code=stage_code("tokens"),
    threads: 2
    log:
        f"{LOGS}/tokens.log",
    benchmark:
        f"{BENCH}/tokens.tsv"
    shell:
        "RAYON_NUM_THREADS={threads} moebalance tokens --corpus-dir {params.corpus_dir}"
        " --tokenizer-dir {params.tokenizer_dir} --out-dir {params.out_dir}"
        " {TOKENS_EXECUTION} --source-hash {params.code} > {log:q} 2>&1"


rule sft_data:
    input:
        MLFLOW_READY,
        train=rules.corpus.output.train,
    output:
        train=f"{DATA}/sft/train.parquet",
        val=f"{DATA}/sft/val.parquet",
    params:
        out_dir=parent_of("output", "train"),
        settings=settings_param(SftDataSettings, config["sft_data"]),
        code=stage_code("sft-data"),
    log:
        f"{LOGS}/sft_data.log",
    benchmark:
        f"{BENCH}/sft_data.tsv"
    shell:
        "moebalance sft-data --train {input.train} --out-dir {params.out_dir}"
        " --settings {params.settings:q}"
        " --source-hash {params.code} > {log:q} 2>&1"


rule baselines:
    # the positive control: unigram and interpolated bigram on the pretrain validation targets
    input:
        MLFLOW_READY,
        meta=rules.tokens.output.meta,
        train=rules.tokens.output.train,
        val=rules.tokens.output.val,
        tokenizer=rules.tokenizer.output.tokenizer,
    output:
        f"{DATA}/baselines.json",
    params:
        tokens_dir=parent_of("input", "meta"),
        tokenizer_dir=parent_of("input", "tokenizer"),
        # the validation windows the models are scored on (moebalance.data.windows): the
        # pretrain keys that choose them; keys left out take the TrainSettings defaults, as
        # in pretraining. A variant overriding one of them is scored on other windows.
        settings=settings_param(BaselinesSettings,
                                section_of(BaselinesSettings, config["pretrain"])),
        code=stage_code("baselines"),
    log:
        f"{LOGS}/baselines.log",
    benchmark:
        f"{BENCH}/baselines.tsv"
    shell:
        "moebalance baselines --tokens-dir {params.tokens_dir:q}"
        " --tokenizer-dir {params.tokenizer_dir:q} --out {output:q} --settings {params.settings:q}"
        " --source-hash {params.code} > {log:q} 2>&1"


# The held-out balance sets (moebalance.data.balance_set): windows of the trained length in
# the training token mix; the val split's for the final validation and the sweep's selection,
# the test split's for the reported results. The windows' length is the pretraining seq_len.
BALANCE_SET_SETTINGS = {**config["balance_set"],
                        "seq_len": config["pretrain"].get("seq_len", TrainSettings.seq_len)}


rule balance_set:
    input:
        MLFLOW_READY,
        split=f"{DATA}/corpus/{{split}}.parquet",
        meta=rules.tokens.output.meta,
        tokenizer=rules.tokenizer.output.tokenizer,
    output:
        windows=f"{DATA}/balance/{{split}}.parquet",
        meta=f"{DATA}/balance/{{split}}.json",
    wildcard_constraints:
        split="val|test",
    params:
        tokenizer_dir=parent_of("input", "tokenizer"),
        settings=settings_param(BalanceSetSettings, BALANCE_SET_SETTINGS),
        code=stage_code("balance-set"),
    log:
        f"{LOGS}/balance_set/{{split}}.log",
    benchmark:
        f"{BENCH}/balance_set/{{split}}.tsv"
    shell:
        "moebalance balance-set --split {input.split:q} --tokens-meta {input.meta:q}"
        " --tokenizer-dir {params.tokenizer_dir:q} --out {output.windows:q}"
        " --settings {params.settings:q} --source-hash {params.code} > {log:q} 2>&1"


DATA_TARGETS = [
    rules.corpus.output.decontamination,
    rules.tokens.output.meta,
    rules.sft_data.output.train,
    rules.baselines.output[0],
]
