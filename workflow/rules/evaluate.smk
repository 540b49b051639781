# HumanEval of every fine-tuned (variant, seed): generation, sandboxed scoring and the
# canonical-solution likelihood. Uses the sft rule of train.smk; include this file after it.

HUMANEVAL = config["humaneval"]  # keys of two stages: generate's and score's settings


rule generate:
    input:
        MLFLOW_READY,
        model=rules.sft.output.model,
    output:
        run_file("humaneval", "samples.jsonl"),
    params:
        settings=settings_param(GenerateSettings, section_of(GenerateSettings, HUMANEVAL)),
        code=stage_code("generate"),
    # one thread: two are no faster for this model, and a 1-thread job can run beside a
    # pretraining run (docs/sizing.md)
    threads: 1
    resources:
        gpu=lambda wildcards: uses_gpu(SETTINGS[wildcards.variant]),
    log:
        run_log("generate"),
    benchmark:
        run_benchmark("generate")
    shell:
        "OMP_NUM_THREADS={threads} moebalance generate --model {input.model:q} --out {output:q}"
        " --settings {params.settings:q} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


rule solution_nll:
    input:
        MLFLOW_READY,
        model=rules.sft.output.model,
    output:
        run_file("humaneval", "solution_nll.parquet"),
    params:
        # the means cover the problems whose prompt + solution fit the trained length
        settings=lambda wildcards: settings_param(
            SolutionNllSettings, {"fit_tokens": TRAINED_LENGTH[wildcards.variant]}),
        code=stage_code("solution-nll"),
    threads: 1
    log:
        run_log("solution_nll"),
    benchmark:
        run_benchmark("solution_nll")
    shell:
        "OMP_NUM_THREADS={threads} moebalance solution-nll --model {input.model:q}"
        " --out {output:q} --settings {params.settings:q} --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


rule score:
    input:
        MLFLOW_READY,
        samples=rules.generate.output[0],
        nll=rules.solution_nll.output[0],
    output:
        summary=run_file("humaneval", "summary.json"),
        executions=run_file("humaneval", "executions.parquet"),
        results=run_file("humaneval", "results.jsonl"),
    params:
        out_dir=parent_of("output", "summary"),
        settings=settings_param(ScoreSettings, section_of(ScoreSettings, HUMANEVAL)),
        code=stage_code("score"),
    threads: 1  # the scorer's --workers, an execution knob: 164 programs take seconds
    log:
        run_log("score"),
    benchmark:
        run_benchmark("score")
    shell:
        "moebalance score {input.samples:q} --out {params.out_dir:q} --workers {threads}"
        " --settings {params.settings:q} --nll {input.nll:q}"
        " --source-hash {params.code}"
        " --variant {wildcards.variant} --seed {wildcards.seed} > {log:q} 2>&1"


EVALUATE_TARGETS = expand(rules.score.output.summary, variant=VARIANTS, seed=SEEDS)
