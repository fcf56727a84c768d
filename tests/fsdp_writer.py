"""FSDP-sharded metaseq checkpoints for the tests: metaseq's reference case read back whole and written again
with other shard counts (fairscale's padding rule), one model part, optimizer state, another dtype; or a model
written in that layout from scratch."""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from metaseq_writer import LAYER_ORDER_FUSED, LAYER_ORDER_REST, TOP_ORDER, cfg_for, metaseq_state, split_model_parallel

TIE = [("decoder.embed_tokens.weight", "decoder.output_projection.weight")]


@dataclass
class PartLayout:
    """One model part, unsharded: its FSDP instances' metadata, their whole flat parameters, its buffers and
    the rest of the file (cfg, optimizer_history, ...)."""

    instances: list[dict]
    flats: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    rest: dict = field(default_factory=dict)


def load(path: Path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True)


def fairscale_shards(flat: torch.Tensor, dp: int) -> list[tuple[torch.Tensor, int]]:
    """fairscale's FSDP._get_shard for every rank: torch.chunk, missing chunks empty, each padded with zeros
    to the first chunk's length; (piece, padding) per rank."""
    chunks = list(flat.chunk(dp))
    while len(chunks) < dp:
        chunks.append(flat.new_empty(0))
    out = []
    for chunk in chunks:
        pad = chunks[0].numel() - chunk.numel()
        out.append((F.pad(chunk, [0, pad]) if pad else chunk.clone(), pad))
    return out


def _key(instance: dict, flat: str) -> str:
    return f"{instance['fsdp_path']}.{flat}" if instance["fsdp_path"] else flat


def read_case(folder: Path) -> list[PartLayout]:
    """metaseq's files, each part's shards joined (padding stripped)."""
    files = sorted(folder.glob("*-shard*.pt"))
    parts = sorted({int(p.name.split("model_part-")[1].split("-")[0]) for p in files})
    out = []
    for part in parts:
        raws = [load(folder / f"checkpoint_last-model_part-{part}-shard{s}.pt") for s in range(len(files) // len(parts))]
        instances = []
        for entry in raws[0]["shard_metadata"]["param_metadata"]:
            instances.append({"fsdp_path": entry["fsdp_path"], "shared_param_info": list(entry["shared_param_info"]),
                              "params": {k: {"names": list(v["names"]), "shapes": [tuple(s) for s in v["shapes"]],
                                             "numels": list(v["numels"])} for k, v in entry["params"].items()}})
        flats = {}
        for index, instance in enumerate(instances):
            for flat in instance["params"]:
                key = _key(instance, flat)
                pieces = []
                for raw in raws:
                    pad = raw["shard_metadata"]["param_metadata"][index]["params"][flat]["padding"]
                    piece = raw["model"][key]
                    pieces.append(piece[: piece.numel() - pad])
                flats[key] = torch.cat(pieces)
        buffers = {b: raws[0]["model"][b] for b in raws[0]["shard_metadata"]["buffer_names"]}
        rest = {k: v for k, v in raws[0].items() if k not in ("model", "shard_metadata")}
        out.append(PartLayout(instances, flats, buffers, rest))
    return out


def _set(cfg, section: str, key: str, value) -> None:
    holder = cfg[section] if isinstance(cfg, dict) else getattr(cfg, section)
    if isinstance(holder, dict):
        holder[key] = value
    else:
        setattr(holder, key, value)


def write_layout(parts: list[PartLayout], folder: Path, shards: int, *, optimizer_state: bool = False,
                 dtype: torch.dtype | None = None, prefix: str = "checkpoint_last") -> list[Path]:
    """Each part cut into `shards` FSDP shards (fairscale's rule) and saved as metaseq names them, each file's
    cfg saying its rank as metaseq's would."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, part in enumerate(parts):
        pieces = {key: fairscale_shards(flat.to(dtype) if dtype else flat, shards) for key, flat in part.flats.items()}
        for d in range(shards):
            metadata = []
            for instance in part.instances:
                params = {flat: {**meta, "shapes": [tuple(s) for s in meta["shapes"]],
                                 "padding": pieces[_key(instance, flat)][d][1]} for flat, meta in instance["params"].items()}
                metadata.append({"fsdp_path": instance["fsdp_path"], "no_broadcast_optim_state": False,
                                 "shared_param_info": instance["shared_param_info"], "params": params})
            model = {key: pieces[key][d][0] for key in part.flats}
            model.update(part.buffers)
            rest = copy.deepcopy(part.rest)
            cfg = rest.get("cfg")
            if cfg is not None:
                _set(cfg, "distributed_training", "distributed_rank", d * len(parts) + k)
                _set(cfg, "distributed_training", "distributed_world_size", shards * len(parts))
                _set(cfg, "checkpoint", "checkpoint_suffix", f"-model_part-{k}" if len(parts) > 1 else "")
                _set(cfg, "common", "model_parallel_size", len(parts))
            payload = {**rest, "model": model,
                       "shard_metadata": {"param_metadata": metadata, "buffer_names": list(part.buffers)}}
            if optimizer_state:
                state = {i: {"step": 1, "exp_avg": torch.randn(t.numel()), "exp_avg_sq": torch.rand(t.numel())}
                         for i, t in enumerate(model.values()) if t.is_floating_point() and t.dim() == 1}
                payload["last_optimizer_state"] = {"state": state, "param_groups": [{"lr": 1e-4, "params": list(state)}]}
            name = f"{prefix}-model_part-{k}-shard{d}.pt" if len(parts) > 1 else f"{prefix}-shard{d}.pt"
            paths.append(folder / name)
            torch.save(payload, paths[-1])
    return paths


def one_part(parts: list[PartLayout]) -> list[PartLayout]:
    """The model parts merged into one (metaseq's model-parallel model at model_parallel_size 1: one fused
    qkv_proj whose rows are [k; v; q] of all heads), in the same FSDP instances."""
    from helpers.checkpoints.merge import merge_tensor

    def named(part: PartLayout, instance: dict) -> dict:
        out = {}
        for flat, meta in instance["params"].items():
            flat_values, start = part.flats[_key(instance, flat)], 0
            for name, shape, n in zip(meta["names"], meta["shapes"], meta["numels"]):
                out[name] = flat_values[start:start + n].view(shape)
                start += n
        return out

    merged = PartLayout([], {}, dict(parts[0].buffers), copy.deepcopy(parts[0].rest))
    for index, instance in enumerate(parts[0].instances):
        tensors = [named(p, p.instances[index]) for p in parts]
        new = {"fsdp_path": instance["fsdp_path"], "shared_param_info": instance["shared_param_info"], "params": {}}
        for flat, meta in instance["params"].items():
            names, shapes, values = [], [], []
            for name in meta["names"]:
                joined = merge_tensor(name, [t[name] for t in tensors])
                if ".qkv_proj." in name:
                    value = torch.cat([joined[name.replace("qkv_proj", p)] for p in ("k_proj", "v_proj", "q_proj")])
                else:
                    value = joined[name]
                names.append(name)
                shapes.append(tuple(value.shape))
                values.append(value.reshape(-1))
            new["params"][flat] = {"names": names, "shapes": shapes, "numels": [v.numel() for v in values]}
            merged.flats[_key(instance, flat)] = torch.cat(values)
        merged.instances.append(new)
    return [merged]


def from_model(model, parts: int, dtype: torch.dtype = torch.float16) -> list[PartLayout]:
    """An OPT (transformers) in metaseq's FSDP layout: one instance for the embeddings and final layer norm,
    one per decoder layer, `parts` model-parallel parts with a fused qkv_proj."""
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in metaseq_state(model).items()}
    layers = model.config.num_hidden_layers
    out = []
    for k, part in enumerate(split_model_parallel(state, parts)):
        top = [n for n in TOP_ORDER if n in part]
        instances = [{"fsdp_path": "", "shared_param_info": TIE, "params": {"flat_param_0": {
            "names": top, "shapes": [tuple(part[n].shape) for n in top], "numels": [part[n].numel() for n in top]}}}]
        flats = {"flat_param_0": torch.cat([part[n].reshape(-1) for n in top])}
        for i in range(layers):
            names = LAYER_ORDER_FUSED + LAYER_ORDER_REST
            full = [part[f"decoder.layers.{i}.{n}"] for n in names]
            instances.append({"fsdp_path": f"decoder.layers.{i}", "shared_param_info": [], "params": {"flat_param_0": {
                "names": names, "shapes": [tuple(t.shape) for t in full], "numels": [t.numel() for t in full]}}})
            flats[f"decoder.layers.{i}.flat_param_0"] = torch.cat([t.reshape(-1) for t in full])
        cfg = cfg_for(model, parts)
        cfg["distributed_training"] = argparse.Namespace(distributed_rank=k, distributed_world_size=parts)
        cfg["checkpoint"] = argparse.Namespace(checkpoint_suffix=f"-model_part-{k}")
        rest = {"cfg": cfg, "criterion": None, "optimizer_history": [{"num_updates": 1}], "task_state": {},
                "extra_state": {}}
        out.append(PartLayout(instances, flats, {"decoder.version": state["decoder.version"]}, rest))
    return out
