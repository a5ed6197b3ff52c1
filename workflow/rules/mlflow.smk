rule mlflow_init:
    output:
        L.mlflow_flag,
    params:
        cast=launcher(1),
    log:
        L.logs / "mlflow_init.log",
    benchmark:
        L.benchmarks / "mlflow_init.tsv"
    localrule: True
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} init --config "$CAST_CONFIG" --flag {output} > {log} 2>&1'
