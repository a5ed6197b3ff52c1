# Offline zero-shot tasks (cast_mc, cast_lastword, cast_ppl; group cast_zs) built once from the
# held-out test split; the evaluate rule points lm-eval at this folder (--tasks-dir).
rule tasks:
    input:
        flag=L.mlflow_flag,
        data=L.data_dir(next(iter(TOKENIZERS))),  # the text of the test split (every tokenizer's is the same)
    output:
        directory(L.tasks),
    params:
        cast=launcher(1),
        fingerprint=fingerprint(CFG, "tasks"),
    log:
        L.logs / "tasks.log",
    benchmark:
        L.benchmarks / "tasks.tsv"
    threads: 1
    priority: len(CFG["run"]["sizes"])  # short, and the zero-shot evaluations wait for it
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} tasks --config "$CAST_CONFIG" --data {input.data} --out {output} --result {output}/result.json > {log} 2>&1'
