"""The memory planner: per-GPU bytes of every training job of the DAG, by component, for each
distributed strategy (ddp / fsdp2) and GPU count (`cast plan`; cast.validation refuses, at config
time, a job whose plan does not fit `resources.gpu_mem_gb`; `strategy: auto` picks by it).

Pure arithmetic (no torch): a model's shape (a preset, a checkpoint's config.json, or the table of
well-known hub ids below) and the job's settings give
  weights      fp32 master weights (+ the cached bf16 copies autocast keeps through the step, ddp)
  grads        fp32 gradients (+ DDP's bucket copy with more than one process)
  moments      Adam(S)'s two fp32 moments
  mask         the N:M masks (bool), sparse training and frozen-mask fine-tuning
  teacher      the frozen distillation teacher in train.teacher_dtype (fsdp2: sharded, + its gathered layers)
  activations  what autograd saves per decoder layer at the micro-batch and sequence length (per
               token: bytes = a*hidden + b*intermediate, measured with saved-tensor hooks on
               transformers' LLaMA, GPT-2 and OPT; activation checkpointing keeps each layer's input
               and one layer's saved tensors), the (micro-batch x sequence x vocabulary) fp32
               log-probabilities, teacher probabilities and their gradient of the distillation loss,
               and the reparametrised weights a linear layer saves for its backward (CAST's W * A,
               SR-STE's W * M: one copy of every target in the compute dtype, unsharded)
  temporaries  the optimizer's foreach temporaries (AdamS: the mixed moment and the denominator of
               the sparse group; none for the compiled kernels; AdamW: the denominator)
  gathered     fsdp2: the unsharded layers in flight (two, in the compute dtype) and the root's
               parameters (embeddings, head), with their gradients before the reduce-scatter
  runtime      CUDA context and communication buffers (GPU plans only)
Sharded components are divided by the process count under fsdp2. The total is the persistent part
(weights, grads, moments, mask, teacher, runtime) plus the larger of the forward/backward part
(activations, gathered) and the optimizer step's temporaries, which exist only once the backward
pass has freed the activations. A plan fits when its total is at most HEADROOM of the card (the
rest: the caching allocator's fragmentation).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import ConfigError

GIB = 2**30
HEADROOM = 0.9
GPU_COUNTS = (1, 2, 4, 8, 16)
RUNTIME_BYTES = int(1.5 * GIB)
# saved activation bytes per token and decoder layer: (a, b) in a*hidden + b*intermediate, fp32 / bf16
ACT = {"llama": {4: (41, 16), 2: (35, 8)}, "gpt2": {4: (64, 20), 2: (54, 10)}, "opt": {4: (40, 4), 2: (28, 2)}}
# config.json fields of the checkpoints the paper configs name, for plans without the hub
KNOWN = {
    "meta-llama/Llama-2-7b-hf": dict(model_type="llama", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008),
    "meta-llama/Llama-2-13b-hf": dict(model_type="llama", vocab_size=32000, hidden_size=5120, num_hidden_layers=40,
                                      num_attention_heads=40, num_key_value_heads=40, intermediate_size=13824),
    **{f"openai-community/{name}": dict(model_type="gpt2", vocab_size=50257, n_embd=h, n_layer=n, n_head=a, n_positions=1024)
       for name, h, n, a in (("gpt2", 768, 12, 12), ("gpt2-medium", 1024, 24, 16), ("gpt2-large", 1280, 36, 20),
                             ("gpt2-xl", 1600, 48, 25))},
    **{f"facebook/{name}": dict(model_type="opt", vocab_size=50272, hidden_size=h, num_hidden_layers=n, ffn_dim=f,
                                word_embed_proj_dim=p, max_position_embeddings=2048, num_attention_heads=a)
       for name, h, n, f, p, a in (("opt-125m", 768, 12, 3072, 768, 12), ("opt-350m", 1024, 24, 4096, 512, 16),
                                   ("opt-1.3b", 2048, 24, 8192, 2048, 32))},
}


@dataclass(frozen=True)
class Shape:
    """A decoder-only model's sizes: parameters per decoder layer, outside the layers (root), and
    in the layers' linear weights (the N:M targets)."""
    arch: str
    vocab: int
    hidden: int
    layers: int
    inter: int
    layer_params: int
    root_params: int
    sparse_params: int
    largest: int  # the largest target weight (foreach and mask-refresh transients)

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.root_params


def shape_from_config(c: dict) -> Shape:
    """A Shape from a transformers config.json dict (LLaMA-like, GPT-2, OPT)."""
    kind = c.get("model_type", "llama")
    if kind == "gpt2":
        h, v, n = c["n_embd"], c["vocab_size"], c["n_layer"]
        i = c.get("n_inner") or 4 * h
        lin = 3 * h * h + h * h + 2 * h * i
        return Shape("gpt2", v, h, n, i, lin + 3 * h + h + i + h + 4 * h, v * h + c.get("n_positions", 1024) * h + 2 * h,
                     n * lin, max(3 * h * h, h * i))
    if kind == "opt":
        h, v, n, i = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"], c["ffn_dim"]
        p = c.get("word_embed_proj_dim") or h
        lin = 4 * h * h + 2 * h * i
        root = v * p + (c.get("max_position_embeddings", 2048) + 2) * h + 2 * h + (2 * p * h if p != h else 0)
        return Shape("opt", v, h, n, i, lin + 4 * h + i + h + 4 * h, root, n * lin, h * i)
    h, v, n, i = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"], c["intermediate_size"]
    kv = h // c["num_attention_heads"] * (c.get("num_key_value_heads") or c["num_attention_heads"])
    lin = 2 * h * h + 2 * h * kv + 3 * h * i
    head = 0 if c.get("tie_word_embeddings") else v * h
    return Shape("llama", v, h, n, i, lin + 2 * h, v * h + head + h, n * lin, h * i)


def shape_of(cfg: dict, size: str, vocab: int | None = None) -> Shape | None:
    """The shape of models.<size>: a preset (vocabulary: the tokenizer's, else data.tokenizer.vocab_size),
    a checkpoint's config.json (local or in the hub cache), a KNOWN hub id; None if unknown."""
    spec = cfg["models"][size]
    if "pretrained" not in spec:
        return shape_from_config(dict(hidden_size=spec["hidden_size"], num_hidden_layers=spec["num_layers"],
                                      num_attention_heads=spec["num_heads"], num_key_value_heads=spec.get("num_kv_heads"),
                                      intermediate_size=spec["intermediate_size"],
                                      vocab_size=vocab or cfg["data"]["tokenizer"]["vocab_size"]))
    from .validation import checkpoint_config

    try:
        found, _ = checkpoint_config(spec["pretrained"])
    except ConfigError:
        found = None
    found = found or KNOWN.get(spec["pretrained"])
    try:
        return shape_from_config(found) if found else None
    except KeyError:
        return None


@dataclass(frozen=True)
class Job:
    """One training job's settings, as the plan needs them."""
    label: str
    section: str  # the config section of its processes/strategy/nodes: train or teacher
    shape: Shape
    micro_batch: int
    seqlen: int
    compute_bytes: int  # 2 with bf16/fp16 compute, else 4
    teacher_bytes: int  # 0: no distillation teacher
    adams: bool  # AdamS (masks, foreach temporaries of the sparse group); else AdamW
    compiled: bool
    masked: bool  # holds N:M masks (sparse training, frozen-mask fine-tuning)
    ste: bool  # SR-STE's masked forward (fsdp2: a target's full mask gathered in its forward)
    reparam: bool  # the forward sees a product of the target weights (CAST's scaling, SR-STE's mask)
    act_ckpt: bool
    world: int


def _job(cfg, label, section, shape, batch, seqlen, grad_accum, teacher, adams, masked, ste=False, reparam=False) -> Job:
    sec, tr = cfg[section], cfg["train"]
    world = sec["processes"] * sec.get("nodes", 1)
    low = section == "train" and tr["precision"] in ("bf16", "fp16")
    return Job(label, section, shape, max(1, batch // world // grad_accum), seqlen, 2 if low else 4,
               ({"bfloat16": 2, "float32": 4}[tr["teacher_dtype"]] if teacher else 0), adams,
               adams and tr["optimizer_impl"] == "compiled", masked, ste, reparam or ste,
               sec.get("activation_checkpointing", False), world)


def jobs_of(cfg: dict, vocab: int | None = None, unique: bool = True) -> list[Job]:
    """The DAG's training jobs with a known shape (unique: one per distinct plan, e.g. the ablations)."""
    from . import methods
    from .config import method_sizes

    run, tr, ft, out = cfg["run"], cfg["train"], cfg["finetune"], []
    for size in run["sizes"]:
        shape = shape_of(cfg, size, vocab)
        if shape is None:
            continue
        tc = cfg["teacher"]
        if "pretrained" not in cfg["models"][size]:
            out.append(_job(cfg, f"teacher {size}", "teacher", shape, tc["batch_size"], tc["seqlen"], 1, False, False, False))
        for name in run["methods"]:
            mcfg = cfg["methods"][name]
            if methods.kind_of(mcfg["algorithm"]) == "train" and size in method_sizes(cfg, name):
                out.append(_job(cfg, f"sparsify {size}/{name}", "train", shape, tr["batch_size"], tr["seqlen"],
                                tr["grad_accum"], mcfg.get("eta", 1 / 3) > 0, True, True, mcfg["algorithm"] == "srste",
                                mcfg.get("scaling", True) and mcfg["algorithm"] == "cast"))
        if ft["apply_to"] and size in (ft["sizes"] or run["sizes"]):
            out.append(_job(cfg, f"finetune {size}", "train", shape, ft["batch_size"], ft["seqlen"], 1, ft["eta"] > 0,
                            False, "sparse" in ft["apply_to"]))
    if not unique:
        return out
    seen, kept = set(), []
    for job in out:
        key = replace(job, label="")
        if key not in seen:
            seen.add(key)
            kept.append(job)
    return kept


def components(job: Job, strategy: str, world: int | None = None, gpu: bool = True) -> dict[str, int]:
    """Per-GPU bytes by component (the module docstring) for `strategy` on `world` processes."""
    s, w = job.shape, world or job.world
    n, ps, c = s.params, s.sparse_params, job.compute_bytes
    shard = w if strategy == "fsdp2" else 1
    tokens = job.micro_batch * job.seqlen
    a, b = ACT[s.arch][c]
    per_layer = tokens * (a * s.hidden + b * s.inter)
    kept = s.layers * tokens * s.hidden * c + per_layer if job.act_ckpt else s.layers * per_layer
    if job.reparam:
        kept += c * (ps // s.layers if job.act_ckpt else ps)
    logits = tokens * s.vocab * (12 if job.teacher_bytes else 8) + tokens * s.vocab * (c if c == 2 else 0)
    if job.adams:
        temp = 0 if job.compiled else max(8 * ps, 4 * (n - ps)) // shard + 8 * s.largest // shard
    else:
        temp = 4 * n // shard
    out = {"weights": 4 * n // shard, "grads": 4 * n // shard, "moments": 8 * n // shard,
           "mask": (ps // shard + (s.largest if job.ste and strategy == "fsdp2" else 0)) if job.masked else 0,
           "teacher": job.teacher_bytes * n // shard, "activations": kept + logits, "temporaries": temp,
           "gathered": 0, "runtime": RUNTIME_BYTES if gpu else 0}
    if strategy == "fsdp2":
        grad_bytes = c + 4 if c == 2 else 4  # gradients in the compute dtype, then fp32 for the reduce-scatter
        out["gathered"] = 2 * s.layer_params * c + s.layer_params * grad_bytes + s.root_params * (c + grad_bytes)
        if job.teacher_bytes:
            out["teacher"] += job.teacher_bytes * (2 * s.layer_params + s.root_params)
    else:
        if c == 2:  # autocast's bf16 copies of the linear weights, cached through forward and backward
            out["weights"] += 2 * (n - s.root_params)
        if w > 1:  # DDP's gradient buckets (a copy of every gradient)
            out["grads"] += 4 * n
    return out


PHASES = ("activations", "gathered", "temporaries")


def total(parts: dict[str, int]) -> int:
    """Persistent components plus the larger of the compute and optimizer phases (module docstring)."""
    persistent = sum(v for k, v in parts.items() if k not in PHASES)
    return persistent + max(parts["activations"] + parts["gathered"], parts["temporaries"])


def fits(parts: dict[str, int], gpu_mem_gb: float | None) -> bool | None:
    return None if gpu_mem_gb is None else total(parts) <= HEADROOM * gpu_mem_gb * GIB


def choose(cfg: dict, job: Job) -> str:
    """`strategy: auto`: ddp unless its plan does not fit resources.gpu_mem_gb (null: ddp)."""
    want = cfg[job.section].get("strategy", "auto")
    if want != "auto":
        return want
    fit = fits(components(job, "ddp"), cfg["resources"]["gpu_mem_gb"])
    return "ddp" if fit in (None, True) else "fsdp2"


def check(cfg: dict) -> None:
    """Config time: every training job's plan, with its resolved strategy, fits resources.gpu_mem_gb
    (GPU runs only); fsdp2 needs GPT-2's Conv1D outputs divisible by the processes."""
    cap = cfg["resources"]["gpu_mem_gb"]
    for job in jobs_of(cfg):
        strategy = choose(cfg, job)
        sec = job.section
        if strategy == "fsdp2" and sec == "train" and cfg["train"]["precision"] == "fp16":
            raise ConfigError(f"config key 'train.precision': fp16 needs a gradient scaler, which fsdp2 (the {job.label} "
                              "job's strategy) does not use; use bf16")
        if strategy == "fsdp2" and job.shape.arch == "gpt2":
            bad = [d for d in (job.shape.hidden, job.shape.inter) if d % job.world]
            if bad:
                raise ConfigError(f"config key '{sec}.processes': fsdp2 shards GPT-2's Conv1D weights along their "
                                  f"outputs, which needs {bad[0]} ({job.label}) divisible by the {job.world} processes")
        if cap is None or cfg["device"] == "cpu":
            continue
        parts = components(job, strategy)
        if not fits(parts, cap):
            big = ", ".join(f"{k} {v / GIB:.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:3])
            hint = "more processes/nodes" if strategy == "fsdp2" else f"{sec}.strategy: fsdp2 (or auto)"
            if strategy == "fsdp2" and not job.act_ckpt:
                hint = f"{sec}.activation_checkpointing: true or " + hint
            raise ConfigError(f"config key 'resources.gpu_mem_gb': the {job.label} job needs {total(parts) / GIB:.1f} GiB "
                              f"per GPU ({strategy}, {job.world} GPUs; {big} GiB), more than {HEADROOM:.0%} of "
                              f"{cap} GiB; try {hint} (`cast plan` prints every option)")


def table(cfg: dict, job: Job) -> list[str]:
    """Markdown rows: every strategy x GPU count (and the configured one), per component (GiB, or
    MiB for a job under 1 GiB)."""
    keys = ("weights", "grads", "moments", "mask", "teacher", "activations", "temporaries", "gathered", "runtime")
    cap, chosen, gpu = cfg["resources"]["gpu_mem_gb"], choose(cfg, job), cfg["device"] != "cpu"
    rows = [(strategy, w, components(job, strategy, w, gpu)) for strategy in ("ddp", "fsdp2")
            for w in sorted(set(GPU_COUNTS) | {job.world})]
    unit, name = (GIB, "GiB") if max(total(p) - p["runtime"] for *_, p in rows) >= GIB else (2**20, "MiB")
    lines = [f"| strategy | GPUs | {' | '.join(keys)} | total ({name}) | fits {cap or '?'} GiB |",
             "|---" * (len(keys) + 4) + "|"]
    for strategy, w, parts in rows:
        ok = fits(parts, cap)
        mark = " **(configured)**" if (strategy, w) == (chosen, job.world) else ""
        lines.append(f"| {strategy}{mark} | {w} | " + " | ".join(f"{parts[k] / unit:.1f}" for k in keys)
                     + f" | {total(parts) / unit:.1f} | {'-' if ok is None else 'yes' if ok else 'no'} |")
    return lines


def cli(cfg: dict, args, _tracker) -> int:
    """`cast plan`: one table per training job; GiB per GPU."""
    jobs = jobs_of(cfg)
    if not jobs:
        print("no training job with a known model shape in this config")
    for job in jobs:
        s, sec = job.shape, cfg[job.section]
        strategy = choose(cfg, job)
        size = (lambda n: f"{n / 1e9:.2f}B" if s.params >= 1e9 else f"{n / 1e6:.1f}M")
        print(f"## {job.label}: {size(s.params)} parameters ({size(s.sparse_params)} N:M targets), "
              f"micro-batch {job.micro_batch} x {job.seqlen} tokens, compute {'bf16' if job.compute_bytes == 2 else 'fp32'}, "
              f"{'AdamS ' + ('compiled' if job.compiled else 'foreach') if job.adams else 'AdamW'}, "
              f"teacher {'none' if not job.teacher_bytes else 'bf16' if job.teacher_bytes == 2 else 'fp32'}, "
              f"activation checkpointing {'on' if job.act_ckpt else 'off'}")
        print(f"configured: {job.section}.strategy {sec.get('strategy', 'auto')} -> {strategy}, "
              f"{sec.get('nodes', 1)} node(s) x {sec['processes']} processes = {job.world} GPUs\n")
        print("\n".join(table(cfg, job)) + "\n")
    return 0
