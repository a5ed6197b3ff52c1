"""The method registry: every sparsification method in one table, readable without torch.

An entry is a name (the `algorithm:` of a config `methods:` entry), a kind (`oneshot`: prunes a
dense model without training, budget label "0"; `train`: spends a token budget), its implementation
as "module:function" (imported only when a job runs it), and the config keys it takes, as JSON-schema
properties. The config schema's method list, its per-method keys, the Snakemake rules and the CLI
all read this table. Adding a method = one module with its function + one `register` line below.

The implementation is called as fn(model, targets, cfg, mcfg, *, method, accelerator, tracker,
tokens, [teacher, budget, fingerprint, ckpt_dir, lr for `train`]) and changes `model` in place, or
returns the model to save as info["model"] (see cast.stages.sparsify). Its `export` says what comes
out: `nm` (same architecture, the targets exactly N:M: checked), `dense` (same architecture, dense:
the dense control) or `smaller` (a smaller dense model of the same family: structured pruning).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module

from ..errors import ConfigError

KINDS = ("oneshot", "train")
EXPORTS = ("nm", "dense", "smaller")


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    impl: str  # "module:function"
    doc: str
    keys: dict = field(default_factory=dict)  # JSON-schema properties of the config entry
    check: Callable | None = None  # check(cfg, entry_name, mcfg): cross-field rules, raises ConfigError
    export: str = "nm"

    def defaults(self) -> dict:
        """{key: default} of the method's own keys (its module's fallback for callers that skip the config)."""
        return {k: s["default"] for k, s in self.keys.items() if "default" in s}

    def load(self) -> Callable:
        module, _, fn = self.impl.partition(":")
        return getattr(import_module(module), fn)


REGISTRY: dict[str, Method] = {}


def register(name: str, kind: str, impl: str, doc: str, keys: dict | None = None, check: Callable | None = None,
             export: str = "nm") -> Method:
    if kind not in KINDS or export not in EXPORTS:
        raise ValueError(f"method {name!r}: kind must be one of {KINDS} and export one of {EXPORTS}")
    REGISTRY[name] = Method(name, kind, impl, doc, dict(keys or {}), check, export)
    return REGISTRY[name]


def get(name: str) -> Method:
    """The registry entry of an algorithm; the error lists the known names."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method algorithm {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def kind_of(name: str) -> str:
    return get(name).kind


def entry_schema() -> dict:
    """JSON schema of one `methods.<entry>`: `algorithm` picks the registered method, whose own keys
    (and only those) the entry may hold."""
    return {"type": "object", "required": ["algorithm"],
            "properties": {"algorithm": {"type": "string", "enum": list(REGISTRY),
                                         "description": "a registered method (cast.methods)"}},
            "allOf": [{"if": {"properties": {"algorithm": {"const": name}}, "required": ["algorithm"]},
                       "then": {"additionalProperties": False,
                                "properties": {"algorithm": {"const": name}, **m.keys}}}
                      for name, m in REGISTRY.items()]}


# -- shared key sets ------------------------------------------------------------------------------
def _num(default, lo=None, desc="", exclusive=False, null=False):
    s = {"type": ["number", "null"] if null else "number", "default": default, "description": desc}
    if lo is not None:
        s["exclusiveMinimum" if exclusive else "minimum"] = lo
    return s


def _int(default, lo=1, desc="", null=False):
    return {"type": ["integer", "null"] if null else "integer", "minimum": lo, "default": default, "description": desc}


MASK_REFRESH = {"t1": _int(10, desc="mask refresh period in steps (Eq. 6, paper T1)")}
DECAY = {"lambda": _num(1.0e-4, 0, "decay coefficient on masked weights: AdamS L1 (paper 7B: 4e-7) / SR-STE lambda_w"),
         "alpha_indexing": {"type": "string", "enum": ["alg1", "alg2"], "default": "alg2",
                            "description": "a_t = t/T with t = 0..T-1 (alg1) or 1..T (alg2)"}}
DISTILL = {"eta": {**_num(1 / 3, 0, "KL weight of Eq. 13 (paper LLaMA: 1/3); 0 = plain CE, no teacher"), "maximum": 1},
           "temperature": _num(1.0, 0, "softmax temperature of the KL (Eq. 13 has none: 1)", exclusive=True)}
CALIBRATION = {"calib_samples": _int(128, desc="calibration windows (SparseGPT/Wanda protocol: 128)"),
               "calib_seqlen": _int(None, 8, "calibration window length; null -> train.seqlen", null=True)}
SCALING = {"scaling": {"type": "boolean", "default": True, "description": "learnable weight scaling (Eq. 11-12)"},
           "scaling_blocks": _int(2, desc="scale blocks n per row (paper Sec. VI-A: 2)"),
           "scaling_lr": _num(None, 0, "learning rate of the scales; null -> train.lr", exclusive=True, null=True)}


def _blocksize_multiple_of_m(cfg: dict, name: str, mcfg: dict) -> None:
    m = cfg["sparsity"]["m"]
    if mcfg["blocksize"] % m:
        raise ConfigError(f"config key 'methods.{name}.blocksize': {mcfg['blocksize']} is not a multiple of "
                          f"M={m} (sparsity.m)")


# -- the methods ----------------------------------------------------------------------------------
register("cast", "train", "cast.methods.cast_train:train_cast",
         "CAST (Alg. 2): AdamS decay on masked weights, weight scaling, distillation; dense forward",
         {**MASK_REFRESH, **DECAY, **DISTILL, **SCALING,
          "decay": {"type": "string", "enum": ["adams", "srste"], "default": "adams",
                    "description": "AdamS (paper) or SR-STE's decay on the gradient (the 'CAST w SR-STE' ablation)"},
          "second_moment": {"type": "string", "enum": ["mixed", "grad"], "default": "mixed",
                            "description": "AdamS v from the mixed moment on every entry (paper Alg. 1) or, ours, "
                                           "from g^2 on kept entries"}})
register("srste", "train", "cast.methods.cast_train:train_srste",
         "SR-STE: masked forward with a straight-through gradient, lambda_w (1 - M) W decay, plain Adam",
         {**MASK_REFRESH, **DECAY, **DISTILL})
register("magnitude", "oneshot", "cast.methods.oneshot:magnitude",
         "keep the N largest |w| of every M consecutive inputs")
register("wanda", "oneshot", "cast.methods.oneshot:wanda",
         "Wanda: N largest |W| * ||X||_2 per M inputs, layer-wise calibration, no weight update", dict(CALIBRATION))
register("sparsegpt", "oneshot", "cast.methods.oneshot:sparsegpt",
         "SparseGPT: layer-wise OBS pruning with error compensation",
         {**CALIBRATION, "percdamp": _num(0.01, 0, "Hessian dampening, share of its mean diagonal", exclusive=True),
          "blocksize": _int(128, desc="columns per lazy update block (a multiple of M)")},
         check=_blocksize_multiple_of_m)
register("dense_kd", "train", "cast.methods.cast_train:train_dense_kd",
         "the dense control: CAST's trainer, data order, teacher, distillation and LR schedule, no sparsity",
         dict(DISTILL), export="dense")
register("maskllm", "train", "cast.methods.maskllm:train_maskllm",
         "MaskLLM: learnable N:M masks (Gumbel-softmax over the C(M, N) candidates), weights frozen",
         {"prior": {"type": "string", "enum": ["magnitude", "wanda", "sparsegpt", "none"], "default": "magnitude",
                    "description": "prior mask of the logit initialisation"},
          "prior_strength": _num(3.0, 0, "alpha: how strongly the prior candidate starts ahead"),
          "logit_init_std": _num(0.01, 0, "std of the random logit initialisation"),
          "gumbel_tau_start": _num(4.0, 0, "Gumbel-softmax temperature at the start ...", exclusive=True),
          "gumbel_tau_end": _num(0.05, 0, "... annealed linearly to this", exclusive=True),
          "kappa_start": _num(100.0, 0, "logit scale kappa at the start ...", exclusive=True),
          "kappa_end": _num(500.0, 0, "... raised linearly to this", exclusive=True),
          "weight_reg": _num(1.0e-5, 0, "sparse-weight regulariser lambda (Sec. 3.3), decayed linearly to 0"),
          "mask_lr": _num(None, 0, "Adam learning rate of the logits; null -> the model's lr, else train.lr",
                          exclusive=True, null=True),
          **DISTILL, **CALIBRATION, "percdamp": _num(0.01, 0, "sparsegpt prior: Hessian dampening", exclusive=True),
          "blocksize": _int(128, desc="sparsegpt prior: columns per block (a multiple of M)")},
         check=lambda cfg, name, mcfg: mcfg.get("prior") == "sparsegpt" and _blocksize_multiple_of_m(cfg, name, mcfg))
register("ddp_struct", "train", "cast.methods.structured:train_structured",
         "deterministic differentiable structured pruning: gates per head and MLP channel, a smaller dense export",
         {"keep_ratio": {**_num(None, 0, "share of the projection weights kept; null -> sparsity.n / sparsity.m",
                                exclusive=True, null=True), "maximum": 1},
          "prune_heads": {"type": "boolean", "default": True, "description": "gate attention heads too (not OPT/GPT-2)"},
          "gate_lr": _num(0.02, 0, "Adam learning rate of the gate scores and scales", exclusive=True),
          "gate_tau_start": _num(1.0, 0, "soft top-k temperature at the start ...", exclusive=True),
          "gate_tau_end": _num(0.01, 0, "... annealed geometrically to this", exclusive=True),
          "budget_warmup": {**_num(0.5, 0, "share of the run over which the kept count anneals to the budget"), "maximum": 1},
          "hard_tail": {**_num(0.2, 0, "last share of the run trained on the hard-gated model"), "maximum": 1},
          "gate_scale": {"type": "boolean", "default": True, "description": "a learnable scale per unit, folded on export"},
          "gate_init": {"type": "string", "enum": ["magnitude", "uniform"], "default": "magnitude",
                        "description": "initial gate scores"},
          "timing_runs": _int(5, 0, "timed CPU forwards per model for the export's speed ratio (0: skip)"),
          **DISTILL}, export="smaller")
