# Evaluation of every model folder: one job per folder (evaluate.group: model), or evaluate.shards
# jobs per size, each evaluating its folders in one process (evaluate.group: size; ~6 s of imports
# saved per folder). Either way one eval.json and one MLflow run per model folder.
if CFG["evaluate"]["group"] == "model":

    rule evaluate:
        input:
            flag=L.mlflow_flag,
            data=data_of_prefix,
            domains=domains_of_prefix,
            model=L.model("{prefix}"),
            tasks=lambda w: tasks_input([w.prefix]),
        output:
            L.eval("{prefix}"),
        params:
            cast=launcher(1),
            tags=lambda w: tag_args(w.prefix),
            zeroshot=zeroshot_args,
            fingerprint=lambda w: fingerprint(CFG, "evaluate", prefix=w.prefix),
        log:
            L.logs / "evaluate/{prefix}.log",
        benchmark:
            L.benchmarks / "evaluate/{prefix}.tsv"
        threads: CFG["threads"]
        priority: lambda w: size_priority(Prefix.parse(w.prefix).size)
        resources:
            gpu=lambda w: gpus(Prefix.parse(w.prefix).size),
        conda:
            "../../envs/cast.yaml"
        shell:
            '{params.cast} evaluate --config "$CAST_CONFIG" --model {input.model} --data {input.data} '
            "{params.tags} {params.zeroshot} --result {output} > {log} 2>&1"

else:
    for _size in CFG["run"]["sizes"]:
        for _k, _shard in enumerate(eval_shards(_size)):

            rule:
                name:
                    f"evaluate_{_size}_{_k}"
                input:
                    flag=L.mlflow_flag,
                    data=data_of(_size),
                    domains=domains_of(_size),
                    models=[L.model(p) for p in _shard],
                    tasks=tasks_input(_shard),
                output:
                    [L.eval(p) for p in _shard],
                params:
                    cast=launcher(1),
                    prefixes=" ".join(map(str, _shard)),
                    tasks=f"--tasks-dir {L.tasks}" if tasks_input(_shard) else "",
                    fingerprint=[fingerprint(CFG, "evaluate", prefix=str(p)) for p in _shard],
                log:
                    L.logs / f"evaluate/{_size}_{_k}.log",
                benchmark:
                    L.benchmarks / f"evaluate/{_size}_{_k}.tsv"
                threads: CFG["threads"]
                priority: size_priority(_size)
                resources:
                    gpu=gpus(_size),
                conda:
                    "../../envs/cast.yaml"
                shell:
                    '{params.cast} evaluate-group --config "$CAST_CONFIG" --data {input.data} {params.tasks} '
                    "{params.prefixes} > {log} 2>&1"
