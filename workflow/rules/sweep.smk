# Fair tuning (moebalance.sweep): in the tune phase the study's variants are the grid points
# on the tuning seeds; `snakemake sweep_select` trains them and applies the stated rule.
# Uses RUNS and PRETRAIN_TARGETS from train.smk; include this file after it.

if config["sweep"]["grids"] and config["sweep"]["phase"] == "tune":

    rule sweep_select:
        input:
            runs=[path for path in PRETRAIN_TARGETS if path.endswith(".parquet")],
            baselines=f"{DATA}/baselines.json",
        output:
            table=f"{RESULTS}/tables/sweep.csv",
            choice=f"{RESULTS}/tables/sweep_choice.json",
            figure=f"{RESULTS}/figures/frontier.png",
        params:
            sweep=json.dumps(config["sweep"], sort_keys=True),
            runs=RUNS,
            code=stage_code("sweep-select"),
        log:
            f"{LOGS}/sweep_select.log",
        benchmark:
            f"{BENCH}/sweep_select.tsv"
        shell:
            "moebalance sweep-select --sweep {params.sweep:q} --runs {params.runs:q}"
            " --table {output.table:q} --choice {output.choice:q}"
            " --figure {output.figure:q} --baselines {input.baselines:q} --source-hash {params.code}"
            " > {log:q} 2>&1"
