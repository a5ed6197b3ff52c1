"""A training job's distributed strategy, in one place: a stage asks `strategy(...)` and gets the
object that wraps its model, holds the checkpointer and exports the full model.

  ddp    one process, or DDP through accelerate (the path before strategies existed, unchanged):
         every rank holds whole tensors; checkpoints in our own safetensors format (cast.train).
  fsdp2  torch's fully_shard on every decoder layer (transformers' `_no_split_modules`) and on the
         root. Weights, gradients, optimizer states and masks live sharded: dim 0 for nn.Linear
         ([out, in]: each rank holds whole rows, so N:M groups along the inputs stay whole and a
         mask computed on the local shard is the slice of the full mask), dim 1 for GPT-2's Conv1D
         ([in, out]; its groups run down dim 0). bf16 compute with fp32 master weights, moments and
         gradient reduction (MixedPrecisionPolicy) when train.precision is bf16; the frozen teacher
         is sharded too, in its own dtype. AdamS and its kernels see plain tensors only: leaf
         aliases of the local shards (`local`), whose .grad is the local shard of the gradient
         (set before each step). Checkpoints through torch.distributed.checkpoint
         (cast.checkpointing); the export gathers a full state dict on rank 0 into a plain copy
         of the model (`export`), which the stage writes as before.
`strategy: auto` picks by the memory plan (cast.plan.choose). Activation checkpointing
(`activation_checkpointing`) is transformers' per-layer gradient checkpointing, for either strategy.
"""
from __future__ import annotations

import copy
import re

import torch
from torch import nn

STRATEGIES = ("ddp", "fsdp2")
_ORIGINAL = re.compile(r"^(.*)\.parametrizations\.([A-Za-z_]\w*)\.original$")
_PARAMETRIZATION = re.compile(r"\.parametrizations\.[A-Za-z_]\w*\.\d+\.")


def resolve(cfg: dict, section: str, label: str) -> str:
    """The strategy of the job `label` (cast.plan.jobs_of: "teacher S", "sparsify S/M", "finetune S")."""
    from . import plan

    want = cfg[section].get("strategy", "auto")
    if want != "auto":
        return want
    job = next((j for j in plan.jobs_of(cfg, unique=False) if j.label == label), None)
    return plan.choose(cfg, job) if job is not None else "ddp"


def autocast_precision(precision: str, strategy: str) -> str:
    """accelerate's autocast dtype: fsdp2 computes in bf16 through its MixedPrecisionPolicy instead."""
    return "no" if strategy == "fsdp2" else precision


def strategy(name: str, accelerator, precision: str = "no", activation_checkpointing: bool = False):
    return (FSDP2 if name == "fsdp2" else DDP)(accelerator, precision, activation_checkpointing)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """transformers' per-layer gradient checkpointing, non-reentrant (works under FSDP2 and DDP)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class DDP:
    """One process or DDP (accelerate): the model is prepared as before, tensors are whole."""
    name, sharded = "ddp", False

    def __init__(self, accelerator, precision: str = "no", activation_checkpointing: bool = False):
        from .train import OwnCheckpoints

        self.acc, self.precision, self.act_ckpt = accelerator, precision, activation_checkpointing
        self.checkpointer = OwnCheckpoints()

    def shard(self, model: nn.Module, frozen: bool = False) -> nn.Module:
        if self.act_ckpt and not frozen:
            enable_activation_checkpointing(model)
        return model

    def load_model(self, path, cfg: dict, dtype=torch.float32) -> nn.Module:
        """The checkpoint at `path`, as every process reads it."""
        from .stages.common import load_dense

        return load_dense(path, cfg, dtype=dtype)

    def local(self, p: torch.Tensor) -> torch.Tensor:
        return p

    def localize(self, groups: list[dict]) -> list[dict]:
        return groups

    def prepare(self, model, optimizer):
        return self.acc.prepare(model, optimizer)

    def all_sum(self, values: list[float]) -> list[float]:
        return list(values)

    def full_mask(self, p, mask):
        return mask

    def export(self, model):
        return self.acc.unwrap_model(model)


class FSDP2(DDP):
    name, sharded = "fsdp2", True

    def __init__(self, accelerator, precision: str = "no", activation_checkpointing: bool = False):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy

        from .checkpointing import DCPCheckpoints

        if precision == "fp16":
            raise ValueError("fsdp2 computes in bf16 or fp32 (train.precision fp16 needs a gradient scaler)")
        self.acc, self.precision, self.act_ckpt = accelerator, precision, activation_checkpointing
        self.device = accelerator.device
        if not dist.is_initialized():  # one process without torchrun: a world of one
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", store=dist.HashStore(),
                                    rank=0, world_size=1)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.mesh = init_device_mesh(self.device.type, (self.world,))
        self.mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                   if precision == "bf16" else MixedPrecisionPolicy())
        self.checkpointer = DCPCheckpoints(self)
        self._alias: dict[int, torch.Tensor] = {}
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] = []

    # -- sharding ------------------------------------------------------------------------------
    def load_model(self, path, cfg: dict, dtype=torch.float32) -> nn.Module:
        """Rank 0 reads the checkpoint; the other ranks build the model on the meta device (no
        memory), and `shard` broadcasts rank 0's tensors into their shards: one copy in host memory
        per node instead of one per process."""
        if self.rank == 0:
            return super().load_model(path, cfg, dtype)
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(path), trust_remote_code=cfg["trust_remote_code"])
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=cfg["trust_remote_code"])

    def _to_device(self, module: nn.Module, recurse: bool = True) -> nn.Module:
        tensors = [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]
        if any(t.is_meta for t in tensors):  # filled by the broadcast from rank 0
            return module.to_empty(device=self.device, recurse=recurse)
        return module._apply(lambda t: t.to(self.device), recurse=recurse)

    def shard(self, model: nn.Module, frozen: bool = False) -> nn.Module:
        """fully_shard every decoder layer, then the root, moving each to the device first (so the
        device never holds more than the shards plus one layer). Every rank's shards then get rank
        0's values (models built on the meta device: `load_model`). A frozen model (the teacher)
        keeps its dtype and reshards after every forward, also at the root."""
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        from torch.distributed.tensor import Shard

        from .sparsity import input_dim_of, is_linear, weight_of

        if self.act_ckpt and not frozen:
            enable_activation_checkpointing(model)
        by_rows = {id(weight_of(m)) for m in model.modules() if is_linear(m) and input_dim_of(m) == 0}
        kw = dict(mesh=self.mesh, shard_placement_fn=lambda p: Shard(1) if id(p) in by_rows else Shard(0),
                  mp_policy=MixedPrecisionPolicy() if frozen else self.mp)
        names = set(getattr(model, "_no_split_modules", None) or ())
        layers = [m for m in model.modules() if type(m).__name__ in names]
        if not layers:
            raise ValueError(f"fsdp2: no decoder layer ({type(model).__name__}._no_split_modules) to shard")
        full = model.state_dict() if self.rank == 0 and self.world > 1 else {}
        inside = {id(m) for layer in layers for m in layer.modules()}
        for layer in layers:
            fully_shard(self._to_device(layer), reshard_after_forward=True, **kw)
        for m in model.modules():
            if id(m) not in inside:
                self._to_device(m, recurse=False)
        fully_shard(model, reshard_after_forward=True if frozen else None, **kw)
        if self.world > 1:
            set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
            for b in model.buffers():
                dist.broadcast(b, src=0)
        return model

    def local(self, p: torch.Tensor) -> torch.Tensor:
        """A leaf alias of the local shard of a sharded parameter (same storage); p if not sharded."""
        from torch.distributed.tensor import DTensor

        if not isinstance(p, DTensor):
            return p
        alias = self._alias.get(id(p))
        if alias is None:
            alias = self._alias[id(p)] = p._local_tensor.detach()
            self._pairs.append((p, alias))
        return alias

    def localize(self, groups: list[dict]) -> list[dict]:
        return [{**g, "params": [self.local(p) for p in g["params"]]} for g in groups]

    def prepare(self, model, optimizer):
        """The optimizer's aliases get the local gradient shards before its step; the sharded
        gradients are dropped after it."""
        def pull(*_):
            for p, alias in self._pairs:
                if alias.data_ptr() != p._local_tensor.data_ptr():  # FSDP re-padded the shard (lazy init)
                    alias.data = p._local_tensor
                alias.grad = None if p.grad is None else p.grad._local_tensor

        def drop(*_):
            for p, alias in self._pairs:
                p.grad = alias.grad = None

        if self._pairs:
            optimizer.register_step_pre_hook(pull)
            optimizer.register_step_post_hook(drop)
        return model, optimizer

    # -- collectives ---------------------------------------------------------------------------
    def _comm_device(self):
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def all_sum(self, values: list[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def full(self, p: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """A tensor laid out as the sharded parameter p's local shard, gathered whole."""
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(local, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()).full_tensor()

    def full_mask(self, p, mask):
        """SR-STE's masked forward under fsdp2: the layer sees its whole weight, so its mask is
        gathered from the local shards at every forward (1 byte per weight; nothing is cached)."""
        return self.full(p, mask.to(torch.uint8)).bool()

    # -- export --------------------------------------------------------------------------------
    def export(self, model):
        """Rank 0: a plain (unsharded, CPU) copy of the model with the full state dict gathered into
        it; other ranks: None. Parametrizations must have been folded into their original tensors
        (the copy has none): `X.parametrizations.w.original` becomes `X.w`."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.fsdp import FSDPModule

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        buffers = {k: b.detach().to("cpu") for k, b in model.named_buffers()}
        if self.rank != 0:
            return None
        plain_sd = {}
        for key, value in sd.items():
            if _PARAMETRIZATION.search(key):
                continue
            m = _ORIGINAL.match(key)
            plain_sd[f"{m[1]}.{m[2]}" if m else key] = value
        cls = next(k for k in type(model).__mro__ if not issubclass(k, FSDPModule))
        with torch.device("meta"):
            plain = cls(copy.deepcopy(model.config))
        plain.load_state_dict(plain_sd, strict=False, assign=True)
        for key, b in buffers.items():
            mod, _, name = key.rpartition(".")
            plain.get_submodule(mod)._buffers[name] = b.clone()
        tie = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
        if tie and plain.get_output_embeddings() is not None:
            plain.get_output_embeddings().weight = plain.get_input_embeddings().weight
        meta = [k for k, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
        if meta:
            raise RuntimeError(f"fsdp2 export: no value gathered for {meta[:3]}")
        if getattr(model, "generation_config", None) is not None:
            plain.generation_config = copy.deepcopy(model.generation_config)
        return plain
