"""Checkpoints of sharded (fsdp2) training through torch.distributed.checkpoint (DCP).

Every rank writes its shards of the model and of the optimizer state (Adam(S)'s moments, the N:M
masks, the step counts) as DTensors, in DCP's safetensors layout (HuggingFaceStorageWriter, one file
per rank, shard offsets in the safetensors header): loading reads JSON and safetensors, never a
pickle, and may reshard (another process count). Rank 0 adds the LR scheduler and the param-group
hyper-parameters (train_state.pt, read with weights_only=True) and step.json. Atomic like the
single-process format (cast.train.OwnCheckpoints): written to a hidden temporary folder, then renamed.

Optimizer state of a parameter held through a local alias (AdamS under fsdp2) is stored with the
parameter's own sharding; an optimizer holding the sharded parameters (AdamW) has DTensor state already.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

STATE_KEYS = ("exp_avg", "exp_avg_sq", "mask")


def _raw(optimizer):
    while hasattr(optimizer, "optimizer"):  # accelerate's wrapper
        optimizer = optimizer.optimizer
    return optimizer


class DCPCheckpoints:
    tag = "+dcp"  # appended to the job fingerprint in step.json: the other format is never resumed

    def __init__(self, strategy):
        self.s = strategy

    def _held(self, model, optimizer) -> dict:
        """{fqn: (sharded parameter, the tensor the optimizer holds for it)}."""
        ids = {id(q) for g in optimizer.param_groups for q in g["params"]}
        out = {}
        for fqn, p in model.named_parameters():
            q = self.s.local(p)
            if id(q) in ids:
                out[fqn] = (p, q)
            elif id(p) in ids:
                out[fqn] = (p, p)
        return out

    def _state(self, model, optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        from torch.distributed.tensor import DTensor

        opt = _raw(optimizer)
        sd = {f"model.{k}": v for k, v in get_model_state_dict(model).items()}
        for fqn, (p, q) in self._held(model, opt).items():
            st = opt.state.get(q, {})
            for key in STATE_KEYS:
                if key in st:
                    t = st[key]
                    sd[f"optim.{fqn}.{key}"] = t if isinstance(t, DTensor) or q is p else DTensor.from_local(
                        t, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
            if "step" in st:
                sd[f"optim.{fqn}.step"] = st["step"]
        return sd

    def _init_state(self, model, optimizer) -> None:
        """Empty Adam(S) state for every parameter (a fresh optimizer has none), for DCP to load into."""
        opt = _raw(optimizer)
        sparse = {id(q) for g in opt.param_groups if g.get("sparse") for q in g["params"]}
        for _, q in self._held(model, opt).values():
            st = opt.state[q]
            if "step" not in st:
                st["step"] = torch.tensor(0.0)
                st["exp_avg"] = torch.zeros_like(q, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(q, memory_format=torch.preserve_format)
                if id(q) in sparse:
                    st["mask"] = torch.zeros_like(q, dtype=torch.bool)

    def save(self, ckpt_dir, step, model, optimizer, scheduler, fingerprint, accelerator) -> None:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageWriter

        from .io import _DIR_MODE

        ckpt_dir = Path(ckpt_dir)
        tmp = ckpt_dir.parent / f".{ckpt_dir.name}.{step}.tmp"
        if self.s.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        dcp.save(self._state(model, optimizer), storage_writer=HuggingFaceStorageWriter(str(tmp), save_distributed=True))
        if self.s.rank == 0:
            groups = [{k: v for k, v in g.items() if k != "params"} for g in _raw(optimizer).param_groups]
            torch.save({"scheduler": scheduler.state_dict(), "param_groups": groups}, tmp / "train_state.pt")
            (tmp / "step.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint + self.tag,
                                                      "format": "dcp", "processes": self.s.world}))
            os.chmod(tmp, _DIR_MODE)
            if ckpt_dir.exists():
                shutil.rmtree(ckpt_dir)
            os.replace(tmp, ckpt_dir)
        dist.barrier()

    def load(self, ckpt_dir, model, optimizer, scheduler, accelerator) -> int:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageReader
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        ckpt_dir = Path(ckpt_dir)
        self._init_state(model, optimizer)
        sd = self._state(model, optimizer)
        dcp.load(sd, storage_reader=HuggingFaceStorageReader(str(ckpt_dir)))
        set_model_state_dict(model, {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")})
        extra = torch.load(ckpt_dir / "train_state.pt", weights_only=True, map_location="cpu")
        scheduler.load_state_dict(extra["scheduler"])
        for group, saved in zip(_raw(optimizer).param_groups, extra["param_groups"]):
            group.update(saved)
        return json.loads((ckpt_dir / "step.json").read_text())["step"]
