rule data:
    input:
        L.mlflow_flag,
    output:
        directory(L.data_dir("{tok}")),
    params:
        cast=launcher(1),
        tokenizer=tokenizer_arg,
        fingerprint=lambda w: fingerprint(CFG, "data", tokenizer=TOKENIZERS[w.tok]),
    log:
        L.logs / "data/{tok}.log",
    benchmark:
        L.benchmarks / "data/{tok}.tsv"
    threads: CFG["threads"]
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} data --config "$CAST_CONFIG" {params.tokenizer} --out {output} --result {output}/result.json > {log} 2>&1'
