rule sparsify:
    input:
        flag=L.mlflow_flag,
        data=lambda w: data_of(w.size),
        teacher=L.model(TEACHER_PATTERN),
    output:
        model=directory(L.model(SPARSE_PATTERN)),
        stats=L.mask_stats(SPARSE_PATTERN),
        result=L.result(SPARSE_PATTERN),
    params:
        cast=lambda w: launcher(CFG["train"]["processes"], CFG["train"]["nodes"]) if method_kind(w.method) == "train" else launcher(1),
        out=lambda w: L.folder(SPARSE_PATTERN.format(**w)),
        job=lambda w: "--size {size} --method {method} --budget {budget} --replicate {replicate}".format(**run_wildcards(w)),
        fingerprint=lambda w: fingerprint(CFG, "sparsify", **run_wildcards(w)),
    log:
        L.logs / "sparsify/{size}_{method}_{run}.log",
    benchmark:
        L.benchmarks / "sparsify/{size}_{method}_{run}.tsv"
    threads: lambda w: CFG["threads"] * (CFG["train"]["processes"] if method_kind(w.method) == "train" else 1)
    resources:
        **job_resources("train", lambda w: w.size, lambda w: method_kind(w.method) == "train"),
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} sparsify --config "$CAST_CONFIG" {params.job} --teacher {input.teacher} --data {input.data} '
        "--out {params.out} --result {output.result} > {log} 2>&1"
