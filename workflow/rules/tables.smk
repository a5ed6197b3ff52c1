rule table:
    input:
        evals=[L.eval(p) for p in table_prefixes()],
    output:
        md=report(L.tables / "ppl.md", caption="../report/ppl.rst", category="Method comparison"),
        csv=L.tables / "ppl.csv",
        result=L.tables / "result.json",
    params:
        cast=launcher(1),
        out=L.tables,
        prefixes=" ".join(map(str, table_prefixes())),
    log:
        L.logs / "table.log",
    benchmark:
        L.benchmarks / "table.tsv"
    localrule: True
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} table --config "$CAST_CONFIG" --out-dir {params.out} --result {output.result} {params.prefixes} > {log} 2>&1'
