from cast.zeroshot import needs_local, resolve_task_names

# the local zero-shot tasks (zeroshot.tasks: local / cast_*) come from the `tasks` rule
ZS_TASKS_DIR = (
    [R / "tasks"]
    if CFG["zeroshot"]["enabled"] and needs_local(resolve_task_names(CFG["zeroshot"]["tasks"]))
    else []
)


rule evaluate:
    input:
        flag=R / ".mlflow_initialized",
        data=R / "data",
        model=R / "{prefix}/model",
        tasks=ZS_TASKS_DIR,
    output:
        R / "{prefix}/eval.json",
    params:
        tags=lambda w: eval_tags(w.prefix),
        tasks_dir=" ".join(f"--tasks-dir {d}" for d in ZS_TASKS_DIR),
        zeroshot=lambda w: "" if CFG["zeroshot"]["on_variants"] or "/quant/" not in w.prefix and "/finetune/" not in w.prefix else "--no-zeroshot",
        fingerprint=section_hash("evaluate", "zeroshot"),
    log:
        R / "logs/evaluate/{prefix}.log",
    benchmark:
        R / "benchmarks/evaluate/{prefix}.tsv"
    threads: CFG["threads"]
    resources:
        gpu=lambda w: gpus(w.prefix.split("/")[0]),
    shell:
        "{CAST} evaluate --config {CONFIG_FILE} --model {input.model} --data {input.data} "
        "{params.tags} {params.tasks_dir} {params.zeroshot} --result {output} > {log} 2>&1"
