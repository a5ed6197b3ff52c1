"""The pipeline stages as one table, from which `cast` builds its subcommands and its dispatch.

Each stage declares its arguments (with help), which of them are MLflow tags, which result keys
are logged as metrics, and its entry point "module:function" (imported only when that subcommand
runs, so `cast --help` and Snakemake's parse never import torch). The entry is called as
entry(cfg, args, tracker) and returns the result dict written to --result; the MLflow params of the
run are the job's config slice (cast.jobs).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arg:
    flag: str
    help: str
    required: bool = True
    default: object = None
    nargs: str | None = None
    action: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    description: str
    example: str
    entry: str  # "module:function"
    args: tuple = ()
    tags: tuple = ()  # MLflow tags (also in the result JSON): "tag" = the argument of that name, or "tag:argument"
    metrics: tuple = ()  # (metric name or prefix, result key): a dict value logs one metric per item
    job: bool = True  # MLflow params = cast.jobs.job_config(cfg, name, ...)
    result: bool = True  # writes --result
    headline: tuple = ()  # result keys of the job's last log line ("metrics:ppl/": items of a dict by prefix)
    artifacts: tuple = ()  # files in --out attached to the MLflow run (besides the result JSON and config)


OUT = Arg("--out", "folder to create (written under a temporary name, then renamed)")
DATA = Arg("--data", "data folder of the `data` stage (tokenizer, packed tokens, corpus)")
MODEL = Arg("--model", "model folder (config.json + safetensors)")
SIZE = Arg("--size", "a name under `models:` (the size preset or checkpoint)")


def _tag_args(*names: str) -> tuple:
    what = {"size": "size (a `models:` name)", "method": "method (a `methods:` name)", "budget": "token-budget label",
            "replicate": "replicate index (0 = the config seed)", "finetune": "fine-tuning dataset",
            "quant": "quantization scheme"}
    return tuple(Arg(f"--{n}", f"the model folder's {what[n]}, logged as MLflow tag '{n}'", required=False)
                 for n in names)


VARIANT_TAGS = ("size", "method", "budget", "replicate", "finetune", "quant")

STAGES = {s.name: s for s in (
    Stage("validate", "validate a config and print it resolved (defaults filled, budgets canonical)",
          "Checks every key against the schema and the cross-field rules, exactly as `snakemake` does "
          "before any job starts, and prints the resolved config.",
          "cast validate --config config/config.yaml", "cast.cli:validate", job=False, result=False),
    Stage("plan", "per-GPU memory plan of every training job, by component, strategy and GPU count",
          "Prints, for each training job of the config, the bytes per GPU of weights, gradients, moments, masks, "
          "teacher, activations (configured micro-batch and sequence length) and temporaries under ddp and fsdp2 "
          "on 1-16 GPUs, and which fit resources.gpu_mem_gb (`snakemake` refuses a job that does not).",
          "cast plan --config config/paper/llama2_7b.yaml", "cast.plan:cli", job=False, result=False),
    Stage("init", "create the MLflow store and experiment (once, before parallel jobs)",
          "Creates the tracking store (sqlite by default) and the experiment, so that parallel jobs never "
          "race its creation; an unreachable server only warns.",
          "cast init --config cfg.yaml --flag results/.mlflow_initialized", "cast.cli:init",
          (Arg("--flag", "file to touch when done", required=False),), job=False, result=False),
    Stage("data", "corpus splits (by document), tokenizer and packed token streams",
          "Loads the corpus (embedded Wikipedia sample, a Hugging Face dataset or local files), splits it "
          "by document, trains or loads the tokenizer and writes tokens_{train,validation,test}.npy.",
          "cast data --config cfg.yaml --out results/data --result results/data/result.json",
          "cast.stages.data:cli",
          (OUT, Arg("--tokenizer", "hub id or local folder of the tokenizer, or `bpe` for one trained on the train split; "
                    "omitted: data.tokenizer.path (bpe if unset)",
                    required=False)), ("tokenizer:tokenizer",),
          metrics=(("data/unigram_ppl_test", "unigram_ppl_test"), ("data/tokens_", "tokens")),
          headline=("tokens", "vocab_size", "unigram_ppl_test")),
    Stage("tasks", "offline zero-shot lm-eval tasks (JSONL + YAML) from the held-out test split",
          "Builds the local tasks cast_mc (HellaSwag-style), cast_lastword (LAMBADA-style) and cast_ppl "
          "(rolling perplexity) from the test split only.",
          "cast tasks --config cfg.yaml --data results/data --out results/tasks --result results/tasks/result.json",
          "cast.stages.tasks:cli", (DATA, OUT), metrics=(("tasks/items/", "items"),), headline=("items",)),
    Stage("teacher", "pretrain (or export) the dense teacher of one size",
          "Trains a LLaMA preset for teacher.tokens, or exports a pretrained checkpoint as safetensors.",
          "cast teacher --config cfg.yaml --size s --data results/data --out results/s/teacher/model "
          "--result results/s/teacher/result.json", "cast.stages.teacher:cli", (SIZE, DATA, OUT), ("size",),
          metrics=(("model/non_embedding_params", "non_embedding_params"), ("tokens", "tokens")),
          headline=("non_embedding_params", "tokens", "final_train_ce", "wall_s")),
    Stage("sparsify", "turn a dense teacher into an exact N:M model with one method",
          "Runs a registered method (cast.methods): one-shot pruning, or training for a token budget with "
          "the frozen teacher; checks the export is exactly N:M.",
          "cast sparsify --config cfg.yaml --size s --method cast --budget 256k --teacher results/s/teacher/model "
          "--data results/data --out results/s/cast/256k --result results/s/cast/256k/result.json",
          "cast.stages.sparsify:cli",
          (SIZE, Arg("--method", "a name under `methods:` in the config"),
           Arg("--budget", "token budget: 256k, 1.5M, 1e6 or 1000000 (one-shot methods: 0)"),
           Arg("--replicate", "replicate index: seed = config seed + k (0 = the config seed)", required=False, default="0"),
           Arg("--teacher", "dense teacher model folder"), DATA, OUT),
          ("size", "method", "budget", "replicate"),
          metrics=(("sparsify/wall_s", "wall_s"), ("sparsify/target_sparsity", "target_sparsity"),
                   ("sparsify/nm_violations", "nm_violations"), ("tokens", "tokens")),
          headline=("tokens", "target_sparsity", "nm_violations", "wall_s"), artifacts=("mask_stats.json",)),
    Stage("sparsify-group", "several runs at one size in one process (run.group: method or size)",
          "Runs `cast sparsify` for each METHOD/RUN in turn (RUN: a budget, 0 for one-shot methods, `_r{k}` "
          "appended for the k-th extra seed), paying the imports once: one folder, result.json and MLflow run per run.",
          "cast sparsify-group --config cfg.yaml --size s --teacher results/s/teacher/model "
          "--data results/data/bpe cast/16k cast/64k cast/64k_r1 magnitude/0", "cast.stages.sparsify:group_cli",
          (SIZE, Arg("--teacher", "dense teacher model folder"),
           DATA, Arg("runs", "METHOD/RUN labels (as the results folders under the size)", nargs="+")),
          job=False, result=False),
    Stage("evaluate", "perplexity (and zero-shot through lm-eval) of a model folder",
          "Perplexity with the WikiText-2 protocol (joined split, non-overlapping windows) at every "
          "evaluate.ppl_seqlens, then lm-eval 0-shot tasks when zeroshot.enabled.",
          "cast evaluate --config cfg.yaml --model results/s/cast/256k/model --data results/data "
          "--tasks-dir results/tasks --result results/s/cast/256k/eval.json", "cast.stages.evaluate:cli",
          (MODEL, DATA, Arg("--tasks-dir", "folder of the `tasks` stage (the local zero-shot tasks)", required=False),
           Arg("--no-zeroshot", "perplexity only", required=False, action="store_true"), *_tag_args(*VARIANT_TAGS)),
          VARIANT_TAGS, metrics=(("", "metrics"),), headline=("metrics:ppl/", "metrics:bpb/", "wall_s")),
    Stage("evaluate-group", "evaluate several model folders in one process (evaluate.group: size)",
          "Runs `cast evaluate` on each model folder (relative to results_dir) in turn, paying the imports "
          "once: one MLflow run and one eval.json per model, zero-shot as evaluate.on_variants says.",
          "cast evaluate-group --config cfg.yaml --data results/data/bpe --tasks-dir results/tasks xs/teacher xs/cast/256k",
          "cast.stages.evaluate:group_cli",
          (DATA, Arg("--tasks-dir", "folder of the `tasks` stage (the local zero-shot tasks)", required=False),
           Arg("prefixes", "model folders relative to results_dir, all of one size", nargs="+")),
          job=False, result=False),
    Stage("quantize", "weight-only quantization of a model folder (zeros stay zero)",
          "Round-to-nearest, GPTQ (keeping the sparsity mask) or torchao's RTN; writes the dequantized model, "
          "the integer codes (qstate.safetensors) and quant.json.",
          "cast quantize --config cfg.yaml --model results/s/cast/256k/model --data results/data --scheme int4 "
          "--out results/s/cast/256k/quant/int4 --result results/s/cast/256k/quant/int4/result.json",
          "cast.stages.quantize:cli",
          (MODEL, DATA, Arg("--scheme", "a name under `quantize.schemes:`"), OUT, *_tag_args(*VARIANT_TAGS[:5])),
          (*VARIANT_TAGS[:5], "quant:scheme"),
          metrics=tuple((f"quant/{k}", k) for k in ("rel_weight_err", "avg_bits", "nm_violations", "wall_s")),
          headline=("avg_bits", "rel_weight_err", "nm_violations", "wall_s")),
    Stage("downstream", "token streams of one fine-tuning dataset",
          "Loads one finetune.datasets entry, splits it train/test by document and tokenizes it.",
          "cast downstream --config cfg.yaml --dataset news --data results/data --out results/downstream/news "
          "--result results/downstream/news/result.json", "cast.stages.finetune:downstream_cli",
          (Arg("--dataset", "a name under `finetune.datasets:`"), DATA, OUT), ("finetune:dataset",),
          metrics=(("downstream/tokens_", "tokens"),), headline=("tokens",)),
    Stage("finetune", "fine-tune a model on a downstream dataset (sparse models: mask frozen)",
          "Fine-tunes a dense or N:M model; the zeros of an N:M model stay exactly zero.",
          "cast finetune --config cfg.yaml --model results/s/cast/256k/model --data results/data --dataset news "
          "--out results/s/cast/256k/finetune/news --result results/s/cast/256k/finetune/news/result.json",
          "cast.stages.finetune:cli",
          (MODEL, DATA, Arg("--dataset", "a name under `finetune.datasets:`"),
           Arg("--downstream", "token folder of `cast downstream` (default results_dir/downstream/DATASET)", required=False),
           Arg("--teacher", "dense model folder for distillation (finetune.eta > 0)", required=False), OUT,
           *_tag_args(*VARIANT_TAGS[:4])),
          (*VARIANT_TAGS[:4], "finetune:dataset"),
          metrics=(("finetune/before/", "ppl_before"), ("finetune/after/", "ppl_after"), ("finetune/wall_s", "wall_s"),
                   ("tokens", "tokens")),
          headline=("ppl_before", "ppl_after", "tokens", "wall_s")),
    Stage("table", "result tables (CSV, Markdown, HTML) from the result and eval JSONs",
          "Collects every model folder's result.json and eval.json into tables/models.csv and one readable "
          "table per purpose: ppl, zeroshot (acc ± stderr), quant and finetune (when those ran).",
          "cast table --config cfg.yaml --out-dir results/tables --result results/tables/result.json xs/teacher xs/cast/256k",
          "cast.stages.tables:cli",
          (Arg("--out-dir", "folder for the tables"), Arg("prefixes", "model folders relative to results_dir", nargs="+")),
          job=False, headline=("rows", "files")),
    Stage("scaling-law", "fit the scaling laws to the sweep's evaluate runs read back from MLflow",
          "Fits L(N, D) = E + A N^-alpha + B D^-beta and the gap to dense (our forms) with bootstrap "
          "intervals, leave-one-out and extrapolation errors.",
          "cast scaling-law --config cfg.yaml --out-dir results/scaling_law --result results/scaling_law/result.json",
          "cast.stages.scaling_law:cli", (Arg("--out-dir", "folder for fit.json and points.csv"),),
          metrics=(("", "metrics"),), headline=("n_points", "status")),
    Stage("report", "HTML + Markdown report opening on the headline (then tables, scaling law, training curves)",
          "Writes one self-contained index.html and report.md from what exists under results_dir (tables/models.csv, "
          "scaling_law/, the training runs in MLflow), plus every figure (plots/) and table (tables/) as a file.",
          "cast report --config cfg.yaml --out-dir results/report --result results/report/result.json",
          "cast.stages.report:cli", (Arg("--out-dir", "folder for index.html, report.md, plots/ and tables/"),), job=False,
          headline=("html", "headline")),
)}


def job_name(stage: str) -> str:
    """The cast.jobs name of a subcommand ('scaling-law' -> 'scaling_law')."""
    return stage.replace("-", "_")


__all__ = ["Arg", "Stage", "STAGES", "job_name"]
