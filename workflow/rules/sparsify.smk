# Sparse models: one job per model folder (run.group: model), or one job per (size, method) running
# its budgets and seeds in one process (run.group: method), or per size running all its methods
# (run.group: size); a grouped job saves ~6 s of imports per run. Either way
# one folder, result.json and MLflow run per sparse model. A rule made in a loop reads its loop values
# from params (fixed when the rule is made), never from the shell string (run later, after the loop).
if CFG["run"]["group"] == "model":

    rule sparsify:
        input:
            flag=L.mlflow_flag,
            data=lambda w: data_of(w.size),
            teacher=L.model(TEACHER_PATTERN),
        output:
            model=directory(L.model(SPARSE_PATTERN)),
            stats=L.mask_stats(SPARSE_PATTERN),
            result=L.result(SPARSE_PATTERN),
        params:
            cast=lambda w: launcher(CFG["train"]["processes"], CFG["train"]["nodes"]) if method_kind(w.method) == "train" else launcher(1),
            out=lambda w: L.folder(SPARSE_PATTERN.format(**w)),
            job=lambda w: "--size {size} --method {method} --budget {budget} --replicate {replicate}".format(**run_wildcards(w)),
            fingerprint=lambda w: fingerprint(CFG, "sparsify", **run_wildcards(w)),
        log:
            L.logs / "sparsify/{size}_{method}_{run}.log",
        benchmark:
            L.benchmarks / "sparsify/{size}_{method}_{run}.tsv"
        threads: lambda w: CFG["threads"] * (CFG["train"]["processes"] if method_kind(w.method) == "train" else 1)
        priority: lambda w: size_priority(w.size)
        resources:
            **job_resources("train", lambda w: w.size, lambda w: method_kind(w.method) == "train"),
        conda:
            "../../envs/cast.yaml"
        shell:
            '{params.cast} sparsify --config "$CAST_CONFIG" {params.job} --teacher {input.teacher} --data {input.data} '
            "--out {params.out} --result {output.result} > {log} 2>&1"

else:
    for _name, (_size, _runs) in sparse_groups().items():

        rule:
            name:
                f"sparsify_{_name}"
            input:
                flag=L.mlflow_flag,
                data=data_of(_size),
                teacher=L.model(teacher(_size)),
            output:
                models=[directory(L.model(p)) for p in _runs],
                stats=[L.mask_stats(p) for p in _runs],
                results=[L.result(p) for p in _runs],
            params:
                cast=launcher(1),
                size=_size,
                runs=" ".join(f"{p.method}/{p.run}" for p in _runs),
                fingerprint=[fingerprint(CFG, "sparsify", **p.job_wildcards()) for p in _runs],
            log:
                L.logs / f"sparsify/{_name}.log",
            benchmark:
                L.benchmarks / f"sparsify/{_name}.tsv"
            threads: CFG["threads"]
            priority: size_priority(_size)
            resources:
                gpu=gpus(_size, any(method_kind(p.method) == "train" for p in _runs)),
            conda:
                "../../envs/cast.yaml"
            shell:
                '{params.cast} sparsify-group --config "$CAST_CONFIG" --size {params.size} --teacher {input.teacher} '
                "--data {input.data} {params.runs} > {log} 2>&1"
