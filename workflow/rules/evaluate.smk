# SFT of every pretrained (variant, seed), then HumanEval: generation, sandboxed scoring
# and the canonical-solution likelihood. Uses RUNS, VARIANTS, SEEDS and SETTINGS from
# train.smk; include this file after it.

from moebalance.training.sft import sft_settings

FINETUNE = config["finetune"]
HUMANEVAL = config["humaneval"]
SFT_SETTINGS = {variant: sft_settings(SETTINGS[variant], FINETUNE) for variant in VARIANTS}
SFT_CODE = code_hash("training/sft.py", "training/stage.py", "training/trainer.py",
                     "training/batches.py", "training/telemetry.py", "training/checkpoint.py",
                     "model/__init__.py", "model/router.py", "model/balancing.py")
EVAL_CODE = code_hash("evaluation/generate.py", "model/__init__.py", "model/router.py")
RUN_DIR = f"{RUNS}/{{variant}}/seed{{seed}}"


rule sft:
    input:
        MLFLOW_READY,
        model=f"{RUN_DIR}/pretrain/model",
        train=rules.sft_data.output.train,
        val=rules.sft_data.output.val,
    output:
        model=directory(f"{RUN_DIR}/sft/model"),
        metrics=f"{RUN_DIR}/sft/metrics.parquet",
        routing=f"{RUN_DIR}/sft/routing.parquet",
    wildcard_constraints:
        variant="|".join(VARIANTS) or "(?!)",
        seed=r"\d+",
    params:
        settings=lambda wildcards: json.dumps(SFT_SETTINGS[wildcards.variant], sort_keys=True),
        sft_dir=parent_of("input", "train"),
        out_dir=parent_of("output", "metrics"),
        # outside the declared outputs: Snakemake deletes those of a failed job, a rerun resumes
        checkpoint_dir=lambda wildcards: (
            f"{RESULTS}/checkpoints/{wildcards.variant}/seed{wildcards.seed}/sft"
        ),
        code=SFT_CODE,
    threads: lambda wildcards: max(1, SFT_SETTINGS[wildcards.variant]["train"].get("threads", 1))
    resources:
        gpu=lambda wildcards: int(
            SFT_SETTINGS[wildcards.variant]["train"].get("device", "auto").startswith("cuda")
        ),
    log:
        f"{LOGS}/sft/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/sft/{{variant}}/seed{{seed}}.tsv"
    shell:
        "moebalance sft --pretrained {input.model:q} --sft-dir {params.sft_dir:q}"
        " --out-dir {params.out_dir:q} --checkpoint-dir {params.checkpoint_dir:q}"
        " --settings {params.settings:q} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


rule generate:
    input:
        MLFLOW_READY,
        model=rules.sft.output.model,
    output:
        f"{RUN_DIR}/humaneval/samples.jsonl",
    wildcard_constraints:
        variant="|".join(VARIANTS) or "(?!)",
        seed=r"\d+",
    params:
        flags=cli_flags({key: HUMANEVAL[key] for key in (
            "samples", "temperature", "top_p", "max_new_tokens", "batch_size", "sampling_seed")}),
        code=EVAL_CODE,
    threads: 2
    resources:
        gpu=lambda wildcards: int(
            SETTINGS[wildcards.variant]["train"].get("device", "auto").startswith("cuda")
        ),
    log:
        f"{LOGS}/generate/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/generate/{{variant}}/seed{{seed}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} moebalance generate --model {input.model:q} --out {output:q}"
        " {params.flags} --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


rule solution_nll:
    input:
        MLFLOW_READY,
        model=rules.sft.output.model,
    output:
        f"{RUN_DIR}/humaneval/solution_nll.parquet",
    wildcard_constraints:
        variant="|".join(VARIANTS) or "(?!)",
        seed=r"\d+",
    params:
        code=code_hash("evaluation/solution_nll.py", "model/__init__.py", "model/router.py"),
    threads: 1
    log:
        f"{LOGS}/solution_nll/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/solution_nll/{{variant}}/seed{{seed}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} moebalance solution-nll --model {input.model:q}"
        " --out {output:q} --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


rule score:
    input:
        MLFLOW_READY,
        samples=rules.generate.output[0],
        nll=rules.solution_nll.output[0],
    output:
        summary=f"{RUN_DIR}/humaneval/summary.json",
        executions=f"{RUN_DIR}/humaneval/executions.parquet",
        results=f"{RUN_DIR}/humaneval/results.jsonl",
    wildcard_constraints:
        variant="|".join(VARIANTS) or "(?!)",
        seed=r"\d+",
    params:
        out_dir=parent_of("output", "summary"),
        timeout=HUMANEVAL["timeout"],
        isolation=HUMANEVAL["isolation"],
        code=code_hash("evaluation/scoring.py", "evaluation/sandbox.py",
                       "evaluation/_harness.py", "evaluation/_pair.py"),
    threads: 2
    log:
        f"{LOGS}/score/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/score/{{variant}}/seed{{seed}}.tsv"
    shell:
        "moebalance score {input.samples:q} --out {params.out_dir:q} --workers {threads}"
        " --timeout {params.timeout} --isolation {params.isolation} --nll {input.nll:q}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


EVALUATE_TARGETS = expand(rules.score.output.summary, variant=VARIANTS, seed=SEEDS)
