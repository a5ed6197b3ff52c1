# Offline zero-shot tasks (cast_mc, cast_lastword, cast_ppl; group cast_zs) built once from the
# held-out test split; the evaluate rule points lm-eval at this folder (--tasks-dir).
rule tasks:
    input:
        flag=R / ".mlflow_initialized",
        data=R / "data",
    output:
        directory(R / "tasks"),
    params:
        fingerprint=section_hash("zeroshot", "seed"),
    log:
        R / "logs/tasks.log",
    benchmark:
        R / "benchmarks/tasks.tsv"
    threads: 1
    shell:
        "{CAST} tasks --config {CONFIG_FILE} --data {input.data} --out {output} --result {output}/result.json > {log} 2>&1"
