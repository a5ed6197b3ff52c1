rule sparsify:
    input:
        flag=R / ".mlflow_initialized",
        data=R / "data",
        teacher=R / "{size}/teacher/model",
    output:
        model=directory(R / "{size}/{method}/{budget}/model"),
        stats=R / "{size}/{method}/{budget}/mask_stats.json",
        result=R / "{size}/{method}/{budget}/result.json",
    params:
        cast=lambda w: launcher(CFG["train"]["processes"] if method_kind(w.method) == "train" else 1),
        out=lambda w: R / f"{w.size}/{w.method}/{w.budget}",
        fingerprint=lambda w: section_hash("train", "sparsity", "lambda_rule", "seed",
                                           method=CFG["methods"][w.method], model=CFG["models"][w.size]),
    log:
        R / "logs/sparsify/{size}_{method}_{budget}.log",
    benchmark:
        R / "benchmarks/sparsify/{size}_{method}_{budget}.tsv"
    threads: lambda w: CFG["threads"] * (CFG["train"]["processes"] if method_kind(w.method) == "train" else 1)
    resources:
        gpu=lambda w: gpus(w.size, method_kind(w.method) == "train", CFG["train"]["processes"]),
    shell:
        "{params.cast} sparsify --config {CONFIG_FILE} --size {wildcards.size} --method {wildcards.method} "
        "--budget {wildcards.budget} --teacher {input.teacher} --data {input.data} --out {params.out} "
        "--result {output.result} > {log} 2>&1"
