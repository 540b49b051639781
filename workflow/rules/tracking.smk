# The MLflow store, created once before any stage logs to it.


rule mlflow_store:
    # Created once, before any rule logs: concurrent first writers race on a new SQLite file.
    output:
        MLFLOW_READY,
    log:
        f"{LOGS}/mlflow_store.log",
    benchmark:
        f"{BENCH}/mlflow_store.tsv"
    shell:
        "moebalance init-tracking --out {output:q} > {log:q} 2>&1"
