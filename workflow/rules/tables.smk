rule table:
    input:
        evals=[R / p / "eval.json" for p in table_prefixes()],
    output:
        md=report(R / "tables/ppl.md", caption="../report/ppl.rst", category="Method comparison"),
        csv=R / "tables/ppl.csv",
        result=R / "tables/result.json",
    params:
        prefixes=" ".join(table_prefixes()),
    log:
        R / "logs/table.log",
    benchmark:
        R / "benchmarks/table.tsv"
    localrule: True
    shell:
        "{CAST} table --config {CONFIG_FILE} --out-dir {R}/tables --result {output.result} {params.prefixes} > {log} 2>&1"
