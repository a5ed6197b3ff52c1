# Input functions, the config check and the job grid. No torch import here: every job re-parses this.
# Paths come from cast.layout, method kinds from the registry (cast.methods), rerun fingerprints
# from cast.jobs: this file only wires them.
import os
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(workflow.basedir)))  # the repo root holds the cast package
from cast import jobserver
from cast import methods as registry
from cast import tokenizers
from cast.config import ConfigError, config_hash, merge_configs, method_sizes, read_yaml, resolve_config
from cast.jobs import fingerprint, per_size, zeroshot_wanted
from cast.zeroshot import needs_local, resolve_task_names
from cast.layout import (BASE_RE, NAME_RE, PREFIX_RE, RUN_RE, Layout, Prefix, FINETUNE_PATTERN, QUANT_PATTERN,
                         SPARSE_PATTERN, TEACHER_PATTERN, sparse, teacher)

if not workflow.overwrite_configfiles:  # no --configfile: the embedded default (--config keys on top)
    config.update(merge_configs(read_yaml(Path(workflow.basedir) / "config" / "config.yaml"), config))
try:  # a --configfile is used as written: nothing of the embedded default leaks in
    CFG = resolve_config(config)
except ConfigError as e:
    sys.stderr.write(f"cast: invalid config: {e}\n")
    sys.exit(1)

L = Layout(CFG["results_dir"])
R = L.root
TOKENIZERS = tokenizers.ids(CFG)  # {id: source}: one data folder per distinct tokenizer
FT = CFG["finetune"]
QUANT = CFG["quantize"]
DOMAINS = CFG["evaluate"]["domains"]
CORPORA = {**DOMAINS, **FT["datasets"]}  # extra corpora (fine-tuning data, held-out domains): one downstream job each
# Jobs find the interpreter and the resolved config in the environment ($CAST_PYTHON, $CAST_CONFIG):
# as rule params, a new config hash or another virtualenv would rerun every finished job.
os.environ["CAST_PYTHON"] = sys.executable


def launcher(processes, nodes=1):
    """`cast` under torchrun when a job asks for several processes (DDP or FSDP2; gloo on CPU, nccl on
    GPU). Over several nodes one srun task per node starts torchrun, which meet (c10d rendezvous) on
    the first node of the allocation, read inside the task (the job step's environment has no node list)."""
    if nodes > 1:
        cpus = CFG["threads"] * int(processes)
        gres = f" --gres=gpu:{int(processes)}" if CFG["device"] != "cpu" else ""
        head = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):$((29500 + SLURM_JOB_ID % 1000))'
        torchrun = (f'exec "$CAST_PYTHON" -m torch.distributed.run --nnodes={int(nodes)} --nproc_per_node={int(processes)} '
                    f'--rdzv_backend=c10d --rdzv_id="$SLURM_JOB_ID" --rdzv_endpoint="{head}" -m cast.cli "$@"')
        return (f"srun --nodes={int(nodes)} --ntasks={int(nodes)} --ntasks-per-node=1 --cpus-per-task={cpus}{gres} "
                f"--kill-on-bad-exit=1 bash -c '{torchrun}' cast")
    if processes > 1:
        return f'"$CAST_PYTHON" -m torch.distributed.run --standalone --nproc_per_node {int(processes)} -m cast.cli'
    return '"$CAST_PYTHON" -m cast.cli'


def _write_resolved_config():
    """The validated config, content-addressed, handed to every job (`--config`)."""
    path = L.configs / f"{config_hash(CFG)}.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(CFG, sort_keys=True))
        os.replace(tmp, path)
    return path


os.environ["CAST_CONFIG"] = str(_write_resolved_config())


envvars:
    "CAST_PYTHON",
    "CAST_CONFIG",



def data_of(size):
    """The data folder (tokenizer, packed tokens) of a size's models."""
    return L.data_dir(tokenizers.id_of(CFG, size))


def data_of_prefix(w):
    return data_of(Prefix.parse(getattr(w, "prefix", None) or w.base).size)


def domains_of(size):
    """The token folders of the held-out domains (evaluate.domains) in a size's tokenizer."""
    return [L.downstream(d, tokenizers.id_of(CFG, size)) for d in DOMAINS]


def domains_of_prefix(w):
    return domains_of(Prefix.parse(w.prefix).size)


def tokenizer_arg(w):
    src = TOKENIZERS[w.tok]
    return f"--tokenizer {tokenizers.BPE if src is None else src}"


def downstream_of(w):
    """A fine-tuning dataset's tokens in the tokenizer of the model being fine-tuned."""
    return L.downstream(w.dataset, tokenizers.id_of(CFG, Prefix.parse(w.base).size))


def method_kind(method):
    return registry.kind_of(CFG["methods"][method]["algorithm"])


def budgets_of(method):
    """One-shot methods spend no tokens (budget label '0'); sweep methods train at every budget,
    the other training methods at the largest one (the comparison point)."""
    if method_kind(method) == "oneshot":
        return ["0"]
    budgets = CFG["run"]["budgets"]  # canonical labels (cast.layout.budget_label)
    return budgets if method in CFG["run"]["sweep_methods"] else budgets[-1:]


def replicates_of(size, method, budget):
    """Replicate indices of a sparse model: 0, plus 1..count-1 for run.replicates' methods and sizes at
    the method's largest budget."""
    rep = CFG["run"]["replicates"]
    chosen = method in rep["methods"] and (rep["sizes"] is None or size in rep["sizes"]) and budget == budgets_of(method)[-1]
    return range(rep["count"] if chosen else 1)


def sparse_prefixes():
    return [sparse(s, m, b, k) for s in CFG["run"]["sizes"] for m in CFG["run"]["methods"]
            if s in method_sizes(CFG, m) for b in budgets_of(m) for k in replicates_of(s, m, b)]


def model_prefixes():
    return [teacher(s) for s in CFG["run"]["sizes"]] + sparse_prefixes()


def tag_args(prefix):
    """CLI tags of a model folder (a teacher has no budget)."""
    return " ".join(f"--{k} {v}" for k, v in Prefix.parse(prefix).tags().items() if v != "-")


def run_wildcards(w):
    """size, method, budget, replicate of a sparse-model job's wildcards."""
    return Prefix(w.size, w.method, **Prefix.parse_run(w.run)).job_wildcards()


def sparse_groups():
    """{job name: (size, sparse models)} of run.group: method (a method's budgets and seeds at one
    size) or size (every method's runs at one size), one sparsify job each."""
    groups = {}
    for p in sparse_prefixes():
        name = p.size if per_size(CFG, "run", "group", p.size) == "size" else f"{p.size}_{p.method}"
        groups.setdefault(name, (p.size, []))[1].append(p)
    return groups


def size_priority(size, teacher=False):
    """Scheduling priority (run.sizes listed small to large). Teachers first, the largest first: each
    gates its size's chain, and the largest teacher is the longest job. Then a size's other jobs
    (sparsify, quantize, finetune, evaluate) smallest size first: the small sizes' short chains are
    done while the largest size's many jobs keep every core busy, instead of running alone on one
    core at the end (measured: ~1 min of an idle core in the default). downstream and tasks sit
    between the two (len(run.sizes))."""
    n = len(CFG["run"]["sizes"])
    rank = CFG["run"]["sizes"].index(size) if size in CFG["run"]["sizes"] else 0
    return n + 1 + rank if teacher else n - 1 - rank


def gpus(size, training=False, processes=1):
    """GPUs a job asks a cluster for (`resources: gpu`, e.g. the SLURM profile's --gpus): training
    jobs one per process; inference (one-shot pruning, evaluation, quantization) one for a pretrained
    checkpoint and none for the small embedded presets; none at all with `device: cpu`."""
    if CFG["device"] == "cpu":
        return 0
    return int(processes) if training else int("pretrained" in CFG["models"][size])


def job_resources(section, size, trains=lambda w: True, other=None):
    """`resources:` of a rule whose jobs may train (teacher, sparsify, finetune) with {section}.processes
    per node: on one node GPUs as `gpus` says (the plugin's --gpus); with {section}.nodes > 1 a training
    job asks the nodes, the GPUs per node (gres), one task per node and no --ntasks-per-gpu, and `mpi`
    makes the job step run its shell as written (launcher's srun) instead of inside `srun -n1`. A job
    that does not train asks other(w) GPUs (default: `gpus` of an inference job)."""
    procs, nodes = CFG[section]["processes"], CFG[section]["nodes"]
    other = other or (lambda w: gpus(size(w)))
    if nodes == 1:
        return {"gpu": lambda w: gpus(size(w), True, procs) if trains(w) else other(w)}
    per_node = lambda w: gpus(size(w), True, procs) if trains(w) else 0
    return {"gpu": lambda w: 0 if trains(w) else other(w),
            "nodes": lambda w: nodes if trains(w) else 1,
            "gres": lambda w: f"gpu:{per_node(w)}" if per_node(w) else "",
            "tasks": lambda w: nodes if trains(w) else 1,
            "tasks_per_gpu": 0,
            "mpi": lambda w: "srun" if trains(w) else ""}


def variant_methods(section):
    """Sparse methods that get a variant: `{section}.methods` (null = all of run.methods)."""
    names = CFG[section]["methods"]
    return CFG["run"]["methods"] if names is None else names  # checked: cast.validation


def variant_sizes(section):
    """Sizes that get a variant: `{section}.sizes` (null = all of run.sizes)."""
    sizes = CFG[section]["sizes"]
    return CFG["run"]["sizes"] if sizes is None else [s for s in CFG["run"]["sizes"] if s in sizes]


def comparison_prefixes(section):
    """The section's methods at their largest budget (the comparison point of the method table)."""
    return [sparse(s, m, budgets_of(m)[-1]) for s in variant_sizes(section) for m in variant_methods(section)
            if s in method_sizes(CFG, m)]


def finetune_prefixes():
    """Model folders fine-tuned (finetune.apply_to) x finetune.datasets."""
    bases = []
    if "teacher" in FT["apply_to"]:
        bases += [teacher(s) for s in variant_sizes("finetune")]
    if "sparse" in FT["apply_to"]:
        bases += comparison_prefixes("finetune")
    return [b.finetuned(d) for b in bases for d in FT["datasets"]]


def finetune_teacher(w):
    """Distillation teacher of a sparse model (finetune.eta > 0): none for dense teachers."""
    base = Prefix.parse(w.base)
    if FT["eta"] <= 0 or not FT["teacher"] or base.is_teacher:
        return []
    dense = teacher(base.size)
    return [L.model(dense if FT["teacher"] == "original" else dense.finetuned(w.dataset))]


def quant_bases():
    """Model folders quantized: teachers, sparse models at their comparison budget, fine-tuned ones."""
    bases = []
    if "teacher" in QUANT["apply_to"]:
        bases += [teacher(s) for s in variant_sizes("quantize")]
    if "sparse" in QUANT["apply_to"]:
        bases += comparison_prefixes("quantize")
    if "finetuned" in QUANT["apply_to"]:
        bases += [p for p in finetune_prefixes() if p.size in variant_sizes("quantize")]
    return bases


# -- evaluation, fit, targets ----------------------------------------------------------------------
ZS_LOCAL = CFG["zeroshot"]["enabled"] and needs_local(resolve_task_names(CFG["zeroshot"]["tasks"]))


def zeroshot_args(w):
    """--tasks-dir of the local tasks, or --no-zeroshot where cast.jobs.zeroshot_wanted says so."""
    if not zeroshot_wanted(CFG, w.prefix):
        return "--no-zeroshot"
    return f"--tasks-dir {L.tasks}" if ZS_LOCAL else ""


def tasks_input(prefixes):
    """The local zero-shot tasks folder, for a job evaluating a folder that gets zero-shot: only then
    (a job whose folders get perplexity only keeps its inputs when zero-shot is switched on)."""
    return [L.tasks] if ZS_LOCAL and any(zeroshot_wanted(CFG, p) for p in prefixes) else []


def scaling_law_inputs():
    """eval.json of every teacher and of every grid point of the swept method and of the gap law's
    reference method (sizes x budgets; the fit reads them back from MLflow)."""
    laws = {CFG["scaling_law"]["method"], CFG["scaling_law"]["reference"]}
    return [L.eval(p) for p in model_prefixes() if p.method == "dense" or p.method in laws]


def size_prefixes(size):
    """Every model folder of one size: teacher, sparse models, their variants."""
    return [p for p in table_prefixes() if p.size == size]


def eval_shards(size):
    """evaluate.group: size -- the size's folders in evaluate.shards lists: the teacher's folders in
    the first, then each method's folders where the least work is (a zero-shot run counted as 4
    perplexity runs), so the jobs end together."""
    groups = {}
    for p in size_prefixes(size):
        groups.setdefault(p.method, []).append(p)
    shards = [[] for _ in range(per_size(CFG, "evaluate", "shards", size))]
    work = lambda ps: sum(1 + 4 * zeroshot_wanted(CFG, p) for p in ps)
    for method, ps in groups.items():
        min(shards, key=lambda sh: (method != "dense") * work(sh)).extend(ps)
    return [sh for sh in shards if sh]


def variant_prefixes():
    """Fine-tuned and quantized model folders."""
    return finetune_prefixes() + [b.quantized(s) for b in quant_bases() for s in QUANT["schemes"]]


_JOB_SERVER = []


def start_job_server():
    """Snakemake running the jobs here (not a cluster executor, not a job step): one process imports
    torch, transformers and MLflow once and forks each job (cast.jobserver; CAST_JOB_SERVER=off: none)."""
    if workflow.local_exec and workflow.is_main_process and len(workflow.dag) > 1:
        _JOB_SERVER.extend(filter(None, [jobserver.start(CFG["threads"], L.logs / "jobserver.log")]))


def stop_job_server():
    while _JOB_SERVER:
        jobserver.stop(_JOB_SERVER.pop())


def table_prefixes():
    return model_prefixes() + variant_prefixes()


def all_targets():
    """Every model's evaluation, the tables, the scaling-law fit (if configured) and the report."""
    fit = [L.scaling_law / "fit.json"] if CFG["scaling_law"]["method"] else []
    return ([L.eval(p) for p in table_prefixes()] + [L.tables / "ppl.md"] + fit
            + [L.report / "index.html", L.report / "report.md"])


wildcard_constraints:
    size="|".join(CFG["models"]),
    method="|".join(CFG["methods"]),
    run=RUN_RE,
    prefix=PREFIX_RE,
    dataset=NAME_RE,
    scheme=NAME_RE,
    tok="|".join(map(re.escape, TOKENIZERS)),
