# Scaling-law fit (read back from MLflow) and the HTML/Markdown report. Both are cheap: local rules.
rule scaling_law:
    input:
        flag=L.mlflow_flag,
        evals=scaling_law_inputs(),
    output:
        fit=L.scaling_law / "fit.json",
        points=report(L.scaling_law / "points.csv", caption="../report/scaling.rst", category="Scaling law"),
        result=L.scaling_law / "result.json",
    params:
        cast=launcher(1),
        out=L.scaling_law,
        fingerprint=fingerprint(CFG, "scaling_law"),
    log:
        L.logs / "scaling_law.log",
    benchmark:
        L.benchmarks / "scaling_law.tsv"
    localrule: True
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} scaling-law --config "$CAST_CONFIG" --out-dir {params.out} --result {output.result} > {log} 2>&1'


rule report:
    input:
        flag=L.mlflow_flag,
        data=[L.data_dir(t) for t in TOKENIZERS],
        fit=[L.scaling_law / "fit.json"] if CFG["scaling_law"]["method"] else [],
        table=L.tables / "ppl.csv",
    output:
        html=report(L.report / "index.html", caption="../report/report.rst", category="Report"),
        md=L.report / "report.md",
        result=L.report / "result.json",
    params:
        cast=launcher(1),
        out=L.report,
    log:
        L.logs / "report.log",
    benchmark:
        L.benchmarks / "report.tsv"
    localrule: True
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} report --config "$CAST_CONFIG" --out-dir {params.out} --result {output.result} > {log} 2>&1'
