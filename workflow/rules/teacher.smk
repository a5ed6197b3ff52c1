rule teacher:
    input:
        flag=L.mlflow_flag,
        data=lambda w: data_of(w.size),
    output:
        model=directory(L.model(TEACHER_PATTERN)),
        result=L.result(TEACHER_PATTERN),
    params:
        cast=launcher(CFG["teacher"]["processes"], CFG["teacher"]["nodes"]),
        fingerprint=lambda w: fingerprint(CFG, "teacher", size=w.size),
    log:
        L.logs / "teacher/{size}.log",
    benchmark:
        L.benchmarks / "teacher/{size}.tsv"
    threads: CFG["threads"] * CFG["teacher"]["processes"]
    priority: lambda w: size_priority(w.size, teacher=True)
    resources:
        **job_resources("teacher", lambda w: w.size, lambda w: "pretrained" not in CFG["models"][w.size], lambda w: 0),
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} teacher --config "$CAST_CONFIG" --size {wildcards.size} --data {input.data} '
        "--out {output.model} --result {output.result} > {log} 2>&1"
