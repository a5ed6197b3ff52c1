rule evaluate:
    input:
        flag=R / ".mlflow_initialized",
        data=R / "data",
        model=R / "{prefix}/model",
    output:
        R / "{prefix}/eval.json",
    params:
        tags=lambda w: eval_tags(w.prefix),
        fingerprint=section_hash("evaluate"),
    log:
        R / "logs/evaluate/{prefix}.log",
    benchmark:
        R / "benchmarks/evaluate/{prefix}.tsv"
    threads: CFG["threads"]
    shell:
        "{CAST} evaluate --config {CONFIG_FILE} --model {input.model} --data {input.data} "
        "{params.tags} --result {output} > {log} 2>&1"
