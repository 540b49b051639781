# Fair tuning (moebalance.study): in the tune phase the study's variants are the grid points
# on the tuning seeds; `snakemake sweep_select` trains them and applies the stated rule.
# Uses SWEEP and RUNS from common.smk, the pretrain rule of train.smk and the baselines rule
# of data.smk; include this file after them.

if SWEEP.grids and SWEEP.phase == "tune":

    rule sweep_select:
        input:
            runs=expand([rules.pretrain.output.metrics, rules.pretrain.output.routing],
                         variant=VARIANTS, seed=SEEDS),
            baselines=rules.baselines.output[0],
        output:
            table=f"{RESULTS}/tables/sweep.csv",
            choice=str(choice_path(config)),  # where the report phase reads it
            figure=f"{RESULTS}/figures/frontier.png",
        params:
            settings=settings_param(SweepSettings, config["sweep"]),
            runs=RUNS,
            code=stage_code("sweep-select"),
        log:
            f"{LOGS}/sweep_select.log",
        benchmark:
            f"{BENCH}/sweep_select.tsv"
        shell:
            "moebalance sweep-select --settings {params.settings:q} --runs {params.runs:q}"
            " --table {output.table:q} --choice {output.choice:q}"
            " --figure {output.figure:q} --baselines {input.baselines:q} --source-hash {params.code}"
            " > {log:q} 2>&1"
