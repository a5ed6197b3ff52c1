# cast: dense teacher -> sparse training (CAST and baselines) -> quantization, fine-tuning ->
# evaluation -> tables, scaling-law fit, report. Thin on purpose: the config (the embedded default
# config/config.yaml unless --configfile names one; never a merge of the two), its validation and
# the helpers live in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/mlflow.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/sparsify.smk"
include: "workflow/rules/tasks.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/report.smk"


onstart:
    start_job_server()


onsuccess:
    stop_job_server()
    print(where_to_look(CFG), flush=True)


onerror:
    stop_job_server()


rule all:
    input:
        all_targets(),
    default_target: True
    localrule: True
