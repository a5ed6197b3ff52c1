rule data:
    input:
        R / ".mlflow_initialized",
    output:
        directory(R / "data"),
    params:
        fingerprint=section_hash("data", "seed"),
    log:
        R / "logs/data.log",
    benchmark:
        R / "benchmarks/data.tsv"
    threads: CFG["threads"]
    shell:
        "{CAST} data --config {CONFIG_FILE} --out {output} --result {output}/result.json > {log} 2>&1"
