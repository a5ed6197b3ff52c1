rule data:
    input:
        L.mlflow_flag,
    output:
        directory(L.data),
    params:
        cast=launcher(1),
        fingerprint=fingerprint(CFG, "data"),
    log:
        L.logs / "data.log",
    benchmark:
        L.benchmarks / "data.tsv"
    threads: CFG["threads"]
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} data --config "$CAST_CONFIG" --out {output} --result {output}/result.json > {log} 2>&1'
