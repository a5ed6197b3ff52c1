# Downstream fine-tuning: {base}/finetune/{dataset}/model for dense teachers and sparse models
# (the frozen-mask rule keeps N:M models exactly N:M). Which folders: common.smk finetune_prefixes().
rule downstream:
    input:
        flag=L.mlflow_flag,
        data=L.data_dir("{tok}"),
    output:
        directory(L.downstream("{dataset}", "{tok}")),
    wildcard_constraints:
        dataset="|".join(CORPORA),
    params:
        cast=launcher(1),
        fingerprint=lambda w: fingerprint(CFG, "downstream", dataset=w.dataset, tokenizer=TOKENIZERS[w.tok]),
    log:
        L.logs / "downstream/{dataset}_{tok}.log",
    benchmark:
        L.benchmarks / "downstream/{dataset}_{tok}.tsv"
    threads: CFG["threads"]
    priority: len(CFG["run"]["sizes"])  # short, and every size's evaluation waits for it
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} downstream --config "$CAST_CONFIG" --dataset {wildcards.dataset} --data {input.data} '
        "--out {output} --result {output}/result.json > {log} 2>&1"


rule finetune:
    input:
        flag=L.mlflow_flag,
        data=lambda w: data_of(Prefix.parse(w.base).size),
        downstream=downstream_of,
        model=L.model("{base}"),
        teacher=finetune_teacher,
    output:
        model=directory(L.model(FINETUNE_PATTERN)),
        result=L.result(FINETUNE_PATTERN),
    wildcard_constraints:
        base=BASE_RE,
        dataset="|".join(FT["datasets"]),
    params:
        cast=launcher(CFG["train"]["processes"], CFG["train"]["nodes"]),
        out=lambda w: L.folder(FINETUNE_PATTERN.format(**w)),
        teacher=lambda w, input: f"--teacher {input.teacher}" if input.teacher else "",
        tags=lambda w: tag_args(w.base),
        fingerprint=lambda w: fingerprint(CFG, "finetune", dataset=w.dataset, base=w.base),
    log:
        L.logs / "finetune/{base}/{dataset}.log",
    benchmark:
        L.benchmarks / "finetune/{base}/{dataset}.tsv"
    threads: CFG["threads"] * CFG["train"]["processes"]
    priority: lambda w: size_priority(Prefix.parse(w.base).size)
    resources:
        **job_resources("train", lambda w: Prefix.parse(w.base).size),
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} finetune --config "$CAST_CONFIG" --model {input.model} --data {input.data} '
        "--dataset {wildcards.dataset} --downstream {input.downstream} {params.teacher} --out {params.out} "
        "{params.tags} --result {output.result} > {log} 2>&1"
