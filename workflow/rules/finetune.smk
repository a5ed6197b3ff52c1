# Downstream fine-tuning: {base}/finetune/{dataset}/model for dense teachers and sparse models
# (the frozen-mask rule keeps N:M models exactly N:M). Targets: finetune_targets().
FT = CFG["finetune"]
FT_BASE = r"[A-Za-z0-9_]+/(teacher|[A-Za-z0-9_]+/[0-9.]+[kMGT]?)"


def variant_methods(section):
    """Sparse methods that get a variant: `{section}.methods` (null = all of run.methods)."""
    names = CFG[section]["methods"]
    return CFG["run"]["methods"] if names is None else names  # checked: cast.config.check_cross_fields


def variant_sizes(section):
    """Sizes that get a variant: `{section}.sizes` (null = all of run.sizes)."""
    sizes = CFG[section]["sizes"]
    return CFG["run"]["sizes"] if sizes is None else [s for s in CFG["run"]["sizes"] if s in sizes]


def comparison_prefixes(section):
    """The section's methods at their largest budget (the comparison point of the method table)."""
    return [f"{s}/{m}/{budgets_of(m)[-1]}" for s in variant_sizes(section) for m in variant_methods(section)
            if s in method_sizes(CFG, m)]


def finetune_prefixes():
    """Model folders fine-tuned (finetune.apply_to) x finetune.datasets."""
    bases = []
    if "teacher" in FT["apply_to"]:
        bases += [f"{s}/teacher" for s in variant_sizes("finetune")]
    if "sparse" in FT["apply_to"]:
        bases += comparison_prefixes("finetune")
    return [f"{b}/finetune/{d}" for b in bases for d in FT["datasets"]]


def finetune_targets():
    return [R / p / "eval.json" for p in finetune_prefixes()]


def finetune_teacher(w):
    """Distillation teacher of a sparse model (finetune.eta > 0): none for dense teachers."""
    if FT["eta"] <= 0 or not FT["teacher"] or w.fbase.endswith("/teacher"):
        return []
    size = w.fbase.split("/")[0]
    if FT["teacher"] == "original":
        return [R / f"{size}/teacher/model"]
    return [R / f"{size}/teacher/finetune/{w.dataset}/model"]


rule downstream:
    input:
        flag=R / ".mlflow_initialized",
        data=R / "data",
    output:
        directory(R / "downstream/{dataset}"),
    wildcard_constraints:
        dataset="|".join(FT["datasets"]),
    params:
        fingerprint=lambda w: section_hash("seed", dataset=FT["datasets"][w.dataset]),
    log:
        R / "logs/downstream/{dataset}.log",
    benchmark:
        R / "benchmarks/downstream/{dataset}.tsv"
    threads: CFG["threads"]
    shell:
        "{CAST} downstream --config {CONFIG_FILE} --dataset {wildcards.dataset} --data {input.data} "
        "--out {output} --result {output}/result.json > {log} 2>&1"


rule finetune:
    input:
        flag=R / ".mlflow_initialized",
        data=R / "data",
        downstream=R / "downstream/{dataset}",
        model=R / "{fbase}/model",
        teacher=finetune_teacher,
    output:
        model=directory(R / "{fbase}/finetune/{dataset}/model"),
        result=R / "{fbase}/finetune/{dataset}/result.json",
    wildcard_constraints:
        fbase=FT_BASE,
        dataset="|".join(FT["datasets"]),
    params:
        cast=launcher(CFG["train"]["processes"]),
        out=lambda w: R / f"{w.fbase}/finetune/{w.dataset}",
        teacher=lambda w, input: f"--teacher {input.teacher}" if input.teacher else "",
        tags=lambda w: eval_tags(w.fbase),
        fingerprint=lambda w: section_hash("finetune", "seed", "sparsity"),
    log:
        R / "logs/finetune/{fbase}/{dataset}.log",
    benchmark:
        R / "benchmarks/finetune/{fbase}/{dataset}.tsv"
    threads: CFG["threads"] * CFG["train"]["processes"]
    resources:
        gpu=lambda w: gpus(w.fbase.split("/")[0], True, CFG["train"]["processes"]),
    shell:
        "{params.cast} finetune --config {CONFIG_FILE} --model {input.model} --data {input.data} "
        "--dataset {wildcards.dataset} --downstream {input.downstream} {params.teacher} --out {params.out} "
        "{params.tags} --result {output.result} > {log} 2>&1"
