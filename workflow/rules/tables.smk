# The result tables (cast.stages.tables): models.csv for machines, one readable table per purpose
# (ppl, zeroshot, quant, finetune; .csv/.md/.html). The report rule registers them in the Snakemake
# report as HTML, with captions.
rule table:
    input:
        evals=[L.eval(p) for p in table_prefixes()],
    output:
        md=L.tables / "ppl.md",
        csv=L.tables / "ppl.csv",
        models=L.tables / "models.csv",
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
