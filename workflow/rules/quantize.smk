# Weight-only quantization: {base}/quant/{scheme}/model for the folders named by quantize.apply_to
# (zeros, hence N:M sparsity, preserved exactly). Targets: quant_targets().
QUANT = CFG["quantize"]


def quant_bases():
    """Model folders quantized: teachers, sparse models at their comparison budget, fine-tuned ones."""
    bases = []
    if "teacher" in QUANT["apply_to"]:
        bases += [f"{s}/teacher" for s in variant_sizes("quantize")]
    if "sparse" in QUANT["apply_to"]:
        bases += comparison_prefixes("quantize")
    if "finetuned" in QUANT["apply_to"]:
        bases += [p for p in finetune_prefixes() if p.split("/")[0] in variant_sizes("quantize")]
    return bases


def quant_targets():
    return [R / b / "quant" / s / "eval.json" for b in quant_bases() for s in QUANT["schemes"]]


rule quantize:
    input:
        flag=R / ".mlflow_initialized",
        data=R / "data",
        model=R / "{base}/model",
    output:
        model=directory(R / "{base}/quant/{scheme}/model"),
        result=R / "{base}/quant/{scheme}/result.json",
    wildcard_constraints:
        base=FT_BASE + r"(/finetune/[A-Za-z0-9_]+)?",
        scheme="|".join(QUANT["schemes"]),
    params:
        out=lambda w: R / f"{w.base}/quant/{w.scheme}",
        tags=lambda w: eval_tags(w.base),
        fingerprint=lambda w: section_hash("sparsity", "seed", scheme=QUANT["schemes"][w.scheme], calib_seqlen=CFG["train"]["seqlen"]),
    log:
        R / "logs/quantize/{base}/{scheme}.log",
    benchmark:
        R / "benchmarks/quantize/{base}/{scheme}.tsv"
    threads: CFG["threads"]
    resources:
        gpu=lambda w: gpus(w.base.split("/")[0]),
    shell:
        "{CAST} quantize --config {CONFIG_FILE} --model {input.model} --data {input.data} "
        "--scheme {wildcards.scheme} --out {params.out} {params.tags} --result {output.result} > {log} 2>&1"
