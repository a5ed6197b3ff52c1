# Scaling-law fit (read back from MLflow) and the report. Both are cheap: local rules. The report's
# page, every figure (plots/{name}.png) and every table (tables/{name}.html) are registered for
# `snakemake --report`, each with its caption from cast.report.captions.
from cast.report import where_to_look
from cast.report.captions import FIGURES, TABLES


rule scaling_law:
    input:
        flag=L.mlflow_flag,
        evals=scaling_law_inputs(),
    output:
        fit=L.scaling_law / "fit.json",
        points=L.scaling_law / "points.csv",
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
        table=L.tables / "models.csv",
    output:
        html=report(L.report / "index.html", caption="../report/report.rst", category="1. Report"),
        md=L.report / "report.md",
        plots=report(directory(L.report / "plots"), patterns=["{name}.png"], caption="../report/figure.rst",
                     category="2. Figures"),
        tables=report(directory(L.report / "tables"), patterns=["{name}.html"], caption="../report/table.rst",
                      category="3. Tables"),
        result=L.report / "result.json",
    params:
        cast=launcher(1),
        out=L.report,
        captions={**FIGURES, **TABLES},  # read by the caption templates
    log:
        L.logs / "report.log",
    benchmark:
        L.benchmarks / "report.tsv"
    localrule: True
    conda:
        "../../envs/cast.yaml"
    shell:
        '{params.cast} report --config "$CAST_CONFIG" --out-dir {params.out} --result {output.result} > {log} 2>&1'

