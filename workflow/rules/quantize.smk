# Weight-only quantization: {base}/quant/{scheme}/model for the folders common.smk quant_bases()
# names (zeros, hence N:M sparsity, preserved exactly).
rule quantize:
    input:
        flag=L.mlflow_flag,
        data=data_of_prefix,
        model=L.model("{base}"),
    output:
        model=directory(L.model(QUANT_PATTERN)),
        result=L.result(QUANT_PATTERN),
    wildcard_constraints:
        base=BASE_RE + rf"(/finetune/{NAME_RE})?",
        scheme="|".join(QUANT["schemes"]),
    params:
        cast=launcher(1),
        out=lambda w: L.folder(QUANT_PATTERN.format(**w)),
        tags=lambda w: tag_args(w.base),
        fingerprint=lambda w: fingerprint(CFG, "quantize", scheme=w.scheme, base=w.base),
    log:
        L.logs / "quantize/{base}/{scheme}.log",
    benchmark:
        L.benchmarks / "quantize/{base}/{scheme}.tsv"
    threads: CFG["threads"]
    priority: lambda w: size_priority(Prefix.parse(w.base).size)
    resources:
        gpu=lambda w: gpus(Prefix.parse(w.base).size),
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} quantize --config "$CAST_CONFIG" --model {input.model} --data {input.data} '
        "--scheme {wildcards.scheme} --out {params.out} {params.tags} --result {output.result} > {log} 2>&1"
