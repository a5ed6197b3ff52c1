rule teacher:
    input:
        flag=R / ".mlflow_initialized",
        data=R / "data",
    output:
        model=directory(R / "{size}/teacher/model"),
        result=R / "{size}/teacher/result.json",
    params:
        cast=launcher(CFG["teacher"]["processes"]),
        fingerprint=lambda w: section_hash("teacher", "seed", model=CFG["models"][w.size]),
    log:
        R / "logs/teacher/{size}.log",
    benchmark:
        R / "benchmarks/teacher/{size}.tsv"
    threads: CFG["threads"] * CFG["teacher"]["processes"]
    resources:
        gpu=lambda w: 0 if "pretrained" in CFG["models"][w.size] else gpus(w.size, True, CFG["teacher"]["processes"]),
    shell:
        "{params.cast} teacher --config {CONFIG_FILE} --size {wildcards.size} --data {input.data} "
        "--out {output.model} --result {output.result} > {log} 2>&1"
