rule evaluate:
    input:
        flag=L.mlflow_flag,
        data=L.data,
        model=L.model("{prefix}"),
        tasks=[L.tasks] if ZS_LOCAL else [],
    output:
        L.eval("{prefix}"),
    params:
        cast=launcher(1),
        tags=lambda w: tag_args(w.prefix),
        zeroshot=zeroshot_args,
        fingerprint=lambda w: fingerprint(CFG, "evaluate", prefix=w.prefix),
    log:
        L.logs / "evaluate/{prefix}.log",
    benchmark:
        L.benchmarks / "evaluate/{prefix}.tsv"
    threads: CFG["threads"]
    resources:
        gpu=lambda w: gpus(Prefix.parse(w.prefix).size),
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} evaluate --config "$CAST_CONFIG" --model {input.model} --data {input.data} '
        "{params.tags} {params.zeroshot} --result {output} > {log} 2>&1"
