# Scaling-law fit (read back from MLflow) and the HTML/Markdown report. Both are cheap: local rules.


def scaling_law_inputs():
    """eval.json of every teacher and of every grid point of the swept method (sizes x budgets)."""
    method = CFG["scaling_law"]["method"]
    return [R / p / "eval.json" for p in model_prefixes() if p.split("/")[1] in ("teacher", method)]


rule scaling_law:
    input:
        flag=R / ".mlflow_initialized",
        evals=scaling_law_inputs(),
    output:
        fit=R / "scaling/fit.json",
        points=report(R / "scaling/points.csv", caption="../report/scaling.rst", category="Scaling law"),
        result=R / "scaling/result.json",
    params:
        fingerprint=section_hash("scaling_law", "run", "evaluate", "seed"),
    log:
        R / "logs/scaling_law.log",
    benchmark:
        R / "benchmarks/scaling_law.tsv"
    localrule: True
    shell:
        "{CAST} fit --config {CONFIG_FILE} --out-dir {R}/scaling --result {output.result} > {log} 2>&1"


rule report:
    input:
        flag=R / ".mlflow_initialized",
        data=R / "data",
        fit=R / "scaling/fit.json",
        table=R / "tables/ppl.csv",
    output:
        html=report(R / "report/index.html", caption="../report/report.rst", category="Report"),
        md=R / "report/report.md",
        result=R / "report/result.json",
    log:
        R / "logs/report.log",
    benchmark:
        R / "benchmarks/report.tsv"
    localrule: True
    shell:
        "{CAST} report --config {CONFIG_FILE} --out-dir {R}/report --result {output.result} > {log} 2>&1"
