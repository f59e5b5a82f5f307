"""Cut-layer compression: codecs for the activations and gradients that cross a cut, as a plug-in.

The sending party encodes, the ledger records the encoded bytes (and the raw size beside them), the
receiving party decodes. Codecs act on each tensor as a whole (a batch's activations at a cut):

- ``identity``: the tensor as it is (for checks: bitwise the same training as no codec).
- ``float16``: half precision, 2 bytes a value.
- ``int8``: symmetric per-tensor quantization, scale = max|t| / 127; 1 byte a value plus a float32 scale.
- ``topk``: the ``topk_ratio`` share of values largest in magnitude (at least one), sent as float32
  values and int32 indices into the flattened tensor (8 bytes a kept value); the rest are zero.

A gradient computed against decoded activations is used as it is (straight-through). Element-wise work
counts 0 FLOPs by the meter's convention, so codecs add no FLOPs.
"""
from __future__ import annotations

import math

import torch

from raysplit.accounting import Encoded, Parcel
from raysplit.plugins import PLUGINS, Plugin
from raysplit.registry import Registry

CODECS = Registry("codec", "compression.activation")
COMPRESSED_KINDS = ("activation", "gradient")


class Codec:
    name = "codec"

    def __init__(self, topk_ratio: float = 0.1):
        self.topk_ratio = topk_ratio

    def encode(self, t: torch.Tensor) -> torch.Tensor | Encoded:
        raise NotImplementedError

    def decode(self, e: Encoded) -> torch.Tensor:
        raise NotImplementedError


@CODECS.register("identity")
class Identity(Codec):
    def encode(self, t):
        return t


@CODECS.register("float16")
class Float16(Codec):
    name = "float16"

    def encode(self, t):
        return Encoded(self.name, {"values": t.to(torch.float16)}, (t.dtype,))

    def decode(self, e):
        return e.parts["values"].to(e.meta[0])


@CODECS.register("int8")
class Int8(Codec):
    name = "int8"

    def encode(self, t):
        scale = t.detach().abs().max().to(torch.float32) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale)).reshape(1)
        q = torch.round(t / scale).clamp_(-127, 127).to(torch.int8)
        return Encoded(self.name, {"values": q, "scale": scale}, (t.dtype,))

    def decode(self, e):
        return (e.parts["values"].to(torch.float32) * e.parts["scale"]).to(e.meta[0])


@CODECS.register("topk")
class TopK(Codec):
    name = "topk"

    def encode(self, t):
        flat = t.detach().reshape(-1)
        k = max(1, math.ceil(self.topk_ratio * flat.numel()))
        idx = flat.abs().topk(k, sorted=False).indices
        index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
        return Encoded(self.name, {"values": flat[idx].to(torch.float32), "indices": idx.to(index_dtype)},
                       (tuple(t.shape), t.dtype))

    def decode(self, e):
        shape, dtype = e.meta
        values = e.parts["values"]
        out = torch.zeros(math.prod(shape), dtype=dtype, device=values.device)
        out[e.parts["indices"].long()] = values.to(dtype)
        return out.reshape(shape)


@PLUGINS.register("compression")
class Compression(Plugin):
    """Encode cut activations and/or cut gradients with a codec each (None: sent as they are)."""

    def __init__(self, activation: str | None = None, gradient: str | None = None, topk_ratio: float = 0.1):
        self.codecs = {kind: CODECS.get(name, f"compression.{kind}")(topk_ratio=topk_ratio)
                       for kind, name in (("activation", activation), ("gradient", gradient)) if name}
        self.decoders = {c.name: c for c in self.codecs.values()}

    def on_send(self, src, dst, kind, payload):
        codec = self.codecs.get(kind)
        return codec.encode(payload) if codec is not None and isinstance(payload, torch.Tensor) else payload

    def on_receive(self, parcel: Parcel, payload):
        if isinstance(payload, Encoded) and payload.codec in self.decoders:
            return self.decoders[payload.codec].decode(payload)
        return payload


def compression_plugin(cfg) -> Compression | None:
    """The ``compression:`` config section as a plug-in (None when no codec is set)."""
    if not (cfg.activation or cfg.gradient):
        return None
    return Compression(cfg.activation, cfg.gradient, cfg.topk_ratio)
