"""ddp_struct: Deterministic Differentiable Pruning of attention heads and MLP channels
(Huang et al., arXiv 2603.08065), exported as a smaller dense model of the same family.

Public facts used (the paper's abstract; its method section was not publicly readable to us, so
the parameterisation below is ours): structured pruning = a multiplicative gate per component under
an l0 constraint; instead of stochastic hard-concrete gates, DDP optimises a deterministic soft
surrogate of the l0 objective, mask-only (weights frozen), so that discretising the gates for
deployment causes no train/test mismatch; its masks are not confined to a near-binary range.

Config keys (the method entry `mcfg`; name, type, default, meaning):
  keep_ratio     float|null  null       share of the decoder layers' projection weights kept;
                                        null -> sparsity.n / sparsity.m (a 2:4 model's count)
  prune_heads    bool        true       gate attention heads (per KV group); false: MLP channels
                                        only. Always false for OPT and GPT-2 (see below)
  gate_lr        float       0.02       Adam LR of the gate scores and scales (shared LR schedule)
  gate_tau_start float       1.0        soft top-k temperature at step 0 ...
  gate_tau_end   float       0.01       ... annealed geometrically to this by the end
  budget_warmup  float       0.5        share of the run over which the soft kept count anneals
                                        linearly from all units to the budget
  hard_tail      float       0.2        last share of the run trained on the hard-gated model itself
  gate_scale     bool        true       a learnable scale per unit (init 1) times its gate
  gate_init      str         magnitude  initial scores: magnitude | uniform
  eta            float       1/3        KL weight of the distillation loss (as cast/srste)
  temperature    float       1.0        distillation temperature
  timing_runs    int         5          timed CPU forwards per model for forward_time_ratio; 0 skips

Decisions (ours, where the abstract is silent):
* Units and gates: one gate per KV group of attention heads (per head when num_key_value_heads ==
  num_attention_heads; with GQA a group is one k/v head and the n_rep query heads that read it, so
  the smaller model keeps the GQA ratio) and one per MLP intermediate channel. The gate multiplies
  the unit's input to o_proj / down_proj (out_proj / fc2, c_proj): v = scale * g. The free scale
  (gate_scale) is our reading of the abstract's masks "not confined to a near-binary range"; it is
  folded into the next projection at export. Scores start at the per-layer z-scored log of
  ||next-projection input slice|| * ||producing output slices|| (gate_init: magnitude).
* Mask-only: every model weight is frozen; only scores and scales train (Adam, shared LR
  schedule). They live in a `ddp_gates` submodule of the model, so cast.train.save_checkpoint
  stores them; the schedules read the step off the checkpointed LR scheduler: resume is exact.
* Surrogate and budget: g = sigmoid((s - theta) / tau) with theta per layer such that sum(g) = k_t
  (cast.methods.gates.soft_topk): the l0 surrogate sum(g) is held at the budget by projection, not
  a Lagrangian, at every step; k_t anneals from all units to k over budget_warmup, tau
  geometrically from gate_tau_start to gate_tau_end, so the gates tend to the hard top-k. No noise: the run
  is deterministic (a function of the seed through the data order only).
* Hard tail: a soft surrogate can still prefer fractional gates at any tau > 0 (e.g. two heads at
  1/2 each, or a near-off unit revived by its scale; we measured this on tiny models), which would
  reappear as a train/test gap at export. For the last `hard_tail` share of the steps the forward
  is therefore the hard-gated model the export computes (per-layer top-k by score, values
  scale * g at gate_tau_end): the run ends on exactly the deployed model, and the scales adapt to it.
* Budget -> counts: an HF config has one num_attention_heads / intermediate_size for all layers, so
  every layer keeps the same counts, used during training too: k_groups = round(keep_ratio * groups)
  (>= 1), then k_channels = the channels that bring the layer's kept projection weights closest to
  keep_ratio of its dense count (within half a channel's weights; >= 1). Each layer keeps its own
  top-k units. Biases and norms are not counted in the budget.
* OPT and GPT-2 compute head_dim = hidden_size // num_attention_heads and fix q/k/v/out widths to
  hidden_size, so fewer heads do not load: their heads are kept and the whole budget falls on the
  MLP (fc1/fc2, c_fc/c_proj); a keep_ratio the attention alone exceeds raises ConfigError. Other
  families raise StructuredExportError naming the model_type.
* Export: the hard-gated model keeps each layer's top-k units with their values v at gate_tau_end and
  k, zero elsewhere; the smaller model slices q/k/v and gate/up (fc1, c_fc) outputs, and o/down
  (out_proj, fc2, c_proj) inputs multiplied by v, so it computes the hard-gated model exactly (to
  float rounding). LLaMA-family configs get an explicit head_dim.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..perplexity import forward_ms
from ..sparsity import input_dim_of
from ..train import steps_for_budget, train_method
from . import get
from .gates import StepClock, distill_fn, freeze, geometric, hard_topk, options, prepared_adam, soft_topk

DEFAULTS = get("ddp_struct").defaults()  # the registry's (cast/methods/__init__.py)
LLAMA_LIKE = ("llama", "qwen2", "mistral")


class StructuredExportError(ConfigError):
    """The architecture has no smaller-dense export here."""


@dataclass
class Arch:
    family: str
    layers: nn.ModuleList
    prefix: str  # state-dict prefix of the layer list
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    qkv: tuple  # (q, k, v) paths inside a layer; () where heads cannot be pruned
    o: str
    up: tuple  # paths whose outputs are the MLP channels
    down: str

    @property
    def head_prunable(self) -> bool:
        return bool(self.qkv)

    @property
    def n_rep(self) -> int:
        return self.heads // self.kv_heads

    @property
    def group_cost(self) -> int:  # q, o: n_rep heads each; k, v: one head each
        return 2 * self.head_dim * self.hidden * (self.n_rep + 1)

    @property
    def channel_cost(self) -> int:
        return self.hidden * (len(self.up) + 1)


def arch_of(model: nn.Module) -> Arch:
    c, mt = model.config, model.config.model_type
    if mt in LLAMA_LIKE:
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return Arch(mt, model.model.layers, "model.layers", c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
                    hd, c.intermediate_size, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                    "self_attn.o_proj", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj")
    if mt == "opt":
        return Arch(mt, model.model.decoder.layers, "model.decoder.layers", c.hidden_size, c.num_attention_heads,
                    c.num_attention_heads, c.hidden_size // c.num_attention_heads, c.ffn_dim, (),
                    "self_attn.out_proj", ("fc1",), "fc2")
    if mt == "gpt2":
        return Arch(mt, model.transformer.h, "transformer.h", c.n_embd, c.n_head, c.n_head, c.n_embd // c.n_head,
                    c.n_inner or 4 * c.n_embd, (), "attn.c_proj", ("mlp.c_fc",), "mlp.c_proj")
    raise StructuredExportError(f"ddp_struct cannot export model_type {mt!r} as a smaller dense model "
                                f"(supported: {', '.join(LLAMA_LIKE)}, opt, gpt2)")


def plan_counts(arch: Arch, keep_ratio: float, prune_heads: bool = True) -> tuple[int, int]:
    """(kv groups, intermediate channels) kept in every layer for the budget keep_ratio."""
    g, f, cg, cf = arch.kv_heads, arch.inter, arch.group_cost, arch.channel_cost
    if not 0 < keep_ratio <= 1:
        raise ConfigError(f"config key 'keep_ratio': {keep_ratio} is not in (0, 1]")
    kg = min(g, max(1, int(keep_ratio * g + 0.5))) if prune_heads and arch.head_prunable else g
    kf = int((keep_ratio * (g * cg + f * cf) - kg * cg) / cf + 0.5)
    if kf < 1:
        raise ConfigError(f"config key 'keep_ratio': {keep_ratio} leaves no MLP channel in {arch.family} "
                          f"once {kg} of {g} attention groups are kept (heads are "
                          f"{'pruned' if kg < g else 'not prunable here'})")
    return kg, min(f, kf)


def _sub(layer: nn.Module, path: str) -> nn.Module:
    return layer.get_submodule(path)


def _unit_norms(w: torch.Tensor, dim: int, units: int) -> torch.Tensor:
    """Frobenius norm of each of `units` equal slices of w along dim."""
    w = w.detach().float().movedim(dim, 0)
    return w.reshape(units, -1).norm(dim=1)


def init_scores(arch: Arch, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(layers, groups) and (layers, channels) initial scores: per-layer z-scored log of
    ||next-projection inputs|| * ||producing outputs|| (magnitude), or zeros (uniform)."""
    n = len(arch.layers)
    if kind == "uniform":
        return torch.zeros(n, arch.kv_heads), torch.zeros(n, arch.inter)
    if kind != "magnitude":
        raise ConfigError(f"config key 'gate_init': {kind!r} is not magnitude or uniform")
    sa, sm = [], []
    for layer in arch.layers:
        down = _sub(layer, arch.down)
        imp = _unit_norms(down.weight, input_dim_of(down), arch.inter)
        for p in arch.up:
            mod = _sub(layer, p)
            imp = imp * _unit_norms(mod.weight, 1 - input_dim_of(mod), arch.inter)
        sm.append(imp)
        if arch.head_prunable:
            o, v = _sub(layer, arch.o), _sub(layer, arch.qkv[2])
            sa.append(_unit_norms(o.weight, 1, arch.kv_heads) * _unit_norms(v.weight, 0, arch.kv_heads))
        else:
            sa.append(torch.zeros(arch.kv_heads))

    def z(rows):
        x = torch.stack(rows).clamp_min(1e-30).log()
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).nan_to_num(1.0).clamp_min(1e-6)
    return z(sa), z(sm)


class UnitGates(nn.Module):
    """Scores s and scales a of (layers, units): v = a * soft_topk(s, k, tau)."""

    def __init__(self, scores: torch.Tensor, scale: bool):
        super().__init__()
        self.score = nn.Parameter(scores.clone().float())
        self.scale = nn.Parameter(torch.ones_like(self.score)) if scale else None

    def values(self, k: float, tau: float, hard_k: int | None = None) -> torch.Tensor:
        v = soft_topk(self.score, k, tau)
        if hard_k is not None:
            v = v * hard_topk(self.score, hard_k)
        return v * self.scale if self.scale is not None else v


class GateController:
    """Gates attached to a model: a `ddp_gates` submodule (so checkpoints hold them), a pre-hook on
    the model computing all gate values once per forward, and pre-hooks scaling the inputs of every
    layer's o/down projection. hard=True gives the hard-gated model the export reproduces."""

    def __init__(self, model: nn.Module, arch: Arch, counts: tuple[int, int], o: dict, clock: StepClock):
        self.model, self.arch, self.clock, self.o = model, arch, clock, o
        self.k_groups, self.k_channels = counts
        self.heads = counts[0] < arch.kv_heads
        sa, sm = init_scores(arch, o["gate_init"])
        self.gates = nn.Module()
        self.gates.mlp = UnitGates(sm, o["gate_scale"])
        if self.heads:
            self.gates.attn = UnitGates(sa, o["gate_scale"])
        dev = next(model.parameters()).device
        model.add_module("ddp_gates", self.gates.to(dev))
        self.hard, self.v_attn, self.v_mlp = False, None, None
        self.handles = [model.register_forward_pre_hook(lambda *_: self.refresh())]
        for i, layer in enumerate(arch.layers):
            self.handles.append(_sub(layer, arch.down).register_forward_pre_hook(self._hook("v_mlp", i, 1)))
            if self.heads:
                width = arch.n_rep * arch.head_dim
                self.handles.append(_sub(layer, arch.o).register_forward_pre_hook(self._hook("v_attn", i, width)))

    def _hook(self, attr: str, layer: int, width: int):
        def hook(_mod, args):
            x, v = args[0], getattr(self, attr)[layer].to(args[0].dtype)
            return ((x.unflatten(-1, (-1, width)) * v[:, None]).flatten(-2), *args[1:])
        return hook

    def schedule(self, progress: float) -> dict:
        """tau and the soft kept counts at a point of the run."""
        ramp = min(1.0, progress / self.o["budget_warmup"]) if self.o["budget_warmup"] > 0 else 1.0
        a, f = self.arch.kv_heads, self.arch.inter
        return {"tau": geometric(self.o["gate_tau_start"], self.o["gate_tau_end"], progress),
                "k_groups": a - (a - self.k_groups) * ramp, "k_channels": f - (f - self.k_channels) * ramp}

    def in_tail(self) -> bool:
        return self.clock.progress >= 1 - self.o["hard_tail"]

    def values(self, hard: bool = False):
        """(attn (layers, groups) or None, mlp (layers, channels)) gate values; hard (or in the
        hard tail of the run): the hard-gated model the export computes."""
        hard = hard or self.in_tail()
        s = self.schedule(1.0 if hard else self.clock.progress)
        kg, kc = (self.k_groups, self.k_channels) if hard else (None, None)
        attn = self.gates.attn.values(s["k_groups"], s["tau"], kg) if self.heads else None
        return attn, self.gates.mlp.values(s["k_channels"], s["tau"], kc)

    def refresh(self) -> None:
        self.v_attn, self.v_mlp = self.values(self.hard)

    def parameters(self):
        return [p for p in self.gates.parameters()]

    @torch.no_grad()
    def stats(self) -> dict:
        s = self.schedule(1.0 if self.in_tail() else self.clock.progress)
        st = {"gate/tau": s["tau"], "gate/k_groups": s["k_groups"], "gate/k_channels": s["k_channels"],
              "gate/hard": float(self.in_tail())}
        for name, k in (("mlp", self.k_channels), ("attn", self.k_groups)):
            if name == "attn" and not self.heads:
                continue
            ug = getattr(self.gates, name)
            g = soft_topk(ug.score, s["k_channels" if name == "mlp" else "k_groups"], s["tau"])
            st[f"gate/{name}_binary_gap"] = float((g - hard_topk(ug.score, k).float()).abs().mean())
            if ug.scale is not None:
                st[f"gate/{name}_scale_mean"] = float(ug.scale.mean())
        return st

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        del self.model.ddp_gates
        self.v_attn = self.v_mlp = None


def _slice(sd: dict, key: str, mod: nn.Module, idx: torch.Tensor, *, inputs: bool, scale=None) -> None:
    """Keep output units idx (inputs=False: weight and bias) or input units idx times scale."""
    dim = input_dim_of(mod) if inputs else 1 - input_dim_of(mod)
    w = sd[key + ".weight"].index_select(dim, idx)
    if scale is not None:
        w = w * scale.to(w.dtype).reshape([-1 if d == dim else 1 for d in range(w.dim())])
    sd[key + ".weight"] = w.contiguous()
    if not inputs and sd.get(key + ".bias") is not None:
        sd[key + ".bias"] = sd[key + ".bias"][idx].contiguous()


@torch.no_grad()
def export_smaller(model: nn.Module, ctl: GateController) -> nn.Module:
    """The smaller dense model (same class) computing ctl's hard-gated model."""
    arch = ctl.arch
    va, vm = ctl.values(hard=True)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("ddp_gates.")}
    d, rep = arch.head_dim, arch.n_rep
    for i, layer in enumerate(arch.layers):
        pre = f"{arch.prefix}.{i}."
        ch = hard_topk(ctl.gates.mlp.score[i], ctl.k_channels).nonzero().squeeze(1)
        for p in arch.up:
            _slice(sd, pre + p, _sub(layer, p), ch, inputs=False)
        _slice(sd, pre + arch.down, _sub(layer, arch.down), ch, inputs=True, scale=vm[i, ch])
        if ctl.heads:
            grp = hard_topk(ctl.gates.attn.score[i], ctl.k_groups).nonzero().squeeze(1)
            q_rows = (grp[:, None] * rep * d + torch.arange(rep * d, device=grp.device)).flatten()
            kv_rows = (grp[:, None] * d + torch.arange(d, device=grp.device)).flatten()
            for p, rows in zip(arch.qkv, (q_rows, kv_rows, kv_rows)):
                _slice(sd, pre + p, _sub(layer, p), rows, inputs=False)
            _slice(sd, pre + arch.o, _sub(layer, arch.o), q_rows, inputs=True,
                   scale=va[i, grp].repeat_interleave(rep * d))
    cfg = copy.deepcopy(model.config)
    if arch.family in LLAMA_LIKE:
        cfg.intermediate_size, cfg.head_dim = ctl.k_channels, d
        cfg.num_attention_heads, cfg.num_key_value_heads = ctl.k_groups * rep, ctl.k_groups
    elif arch.family == "opt":
        cfg.ffn_dim = ctl.k_channels
    else:
        cfg.n_inner = ctl.k_channels
    with torch.random.fork_rng(devices=[]):  # the throw-away random init must not move the global RNG
        small = type(model)(cfg)
    p0 = next(iter(sd.values()))
    small = small.to(device=p0.device, dtype=next(model.parameters()).dtype)
    small.load_state_dict(sd, strict=True)
    return small.eval()


def proj_params(arch: Arch, groups: int, channels: int) -> int:
    """Weights of a model's decoder-layer projections at the given per-layer counts."""
    return len(arch.layers) * (groups * arch.group_cost + channels * arch.channel_cost)


def train_structured(model, targets, cfg, mcfg, *, teacher, tokens, budget, method, accelerator, tracker=None,
                     ckpt_dir=None, lr=None, fingerprint="", **_):
    """Train ddp_struct gates within the token budget; returns stats and {"model": smaller model}
    (on CPU). `model` itself is left dense and unchanged, on CPU. `targets` is not used: the units
    are every decoder layer's heads and channels (the default sparsity.targets' projections)."""
    tcfg, o = cfg["train"], options(mcfg, DEFAULTS)
    arch = arch_of(model)
    ratio = o["keep_ratio"] if o["keep_ratio"] is not None else cfg["sparsity"]["n"] / cfg["sparsity"]["m"]
    counts = plan_counts(arch, ratio, o["prune_heads"])
    steps = steps_for_budget(budget, tcfg["batch_size"], tcfg["seqlen"])  # batch_size is the global batch
    gate_lr = o["gate_lr"]
    restore = freeze(model)
    clock = StepClock(steps, cfg["seed"])
    ctl = GateController(model, arch, counts, o, clock)
    model, opt, sched, sampler = prepared_adam(model, ctl.parameters(), gate_lr, cfg, steps, tokens, accelerator)
    distill = distill_fn(teacher, o["eta"], o["temperature"])

    def loss_fn(student, ids):
        clock.tick(sched.last_epoch)  # the gates' schedule follows the checkpointed step
        return distill(student, ids)

    last, history = train_method(model, opt, sched, sampler, steps, loss_fn, tcfg=tcfg, accelerator=accelerator,
                                 ckpt_dir=ckpt_dir, tracker=tracker, stats=lambda _done: ctl.stats(), method=method,
                                 fingerprint=fingerprint)
    model = accelerator.unwrap_model(model)
    small = export_smaller(model, ctl).to("cpu")
    ctl.remove()
    restore()
    model.to("cpu")
    kg, kc = counts
    out = {"model": small, "steps": steps, "final": last, "history": history, "architecture": arch.family,
           "keep_ratio": ratio, "gate_lr": gate_lr,
           "params_dense": sum(p.numel() for p in model.parameters()),
           "params_kept": sum(p.numel() for p in small.parameters()),
           "proj_params_dense": proj_params(arch, arch.kv_heads, arch.inter),
           "proj_params_kept": proj_params(arch, kg, kc),
           "heads_dense": arch.heads, "heads_kept": kg * arch.n_rep, "kv_heads_kept": kg,
           "intermediate_dense": arch.inter, "intermediate_kept": kc}
    if o["timing_runs"]:
        ids = sampler.batch(0)
        dense_ms, small_ms = forward_ms(model, ids, o["timing_runs"]), forward_ms(small, ids, o["timing_runs"])
        out.update(forward_ms_dense=dense_ms, forward_ms_kept=small_ms, forward_time_ratio=small_ms / dense_ms)
    return out
