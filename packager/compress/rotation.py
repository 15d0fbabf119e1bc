"""A block-diagonal random Hadamard rotation of down_proj's inputs, applied by the engine at run time.

Why: on the bundled model, int8 activations at down_proj's input (the SwiGLU product) cause most of a W8A8
model's error. That input has channels far larger than the rest on some tokens, and a per-token int8 scale
spends its range on them. SmoothQuant (smoothing.py) moves part of each channel's range into the weights;
rotating the input spreads every outlier over a block of channels instead. On the bundled model, simulated with
every Linear in int8 (asymmetric activations, round-to-nearest weights, 8 calibration samples), the calibration KL
fell from 0.0123 (SmoothQuant at its best strength) to 0.0073 with down_proj's input rotated in 128-wide blocks
(0.0084 with 64-wide ones); down_proj's own share of it from about 0.0073 to 0.0022.

How (QuaRot's and SpinQuant's online R4, Ashkboos et al. 2024, Liu et al. 2024):
  * M = diag(random signs) @ H / sqrt(b), H the Sylvester Hadamard matrix of size b (a power of 2), is
    orthogonal; applied per block of b input channels, y = (x M) (W M)^T = x W^T, so the float model is unchanged;
  * the checkpoint holds W M, and the compressed-tensors `transform_config` tells the engine to multiply
    down_proj's input by M before quantizing it. vLLM reads it (an input transform of type "random-hadamard"
    with `head_dim` b: a dense b x b product per block, 5.6% of a layer's multiply-adds at b = 128 on the
    bundled model) and loads M unnormalized, as compressed-tensors stores it (+-1 entries), dividing by sqrt(b)
    itself.
  * q/k/v and gate/up read the residual stream, which could be rotated offline (into the weights, with untied
    embeddings). packager does not: beside this rotation it changed nothing measurable on the bundled model
    (0.0084 either way, 64-wide blocks).

llm-compressor's SpinQuant/QuIP modifiers make the same checkpoint, but its pins clash with this stack
(transformers 5, compressed-tensors 0.17): this module builds the transform itself, with compressed-tensors' own
config classes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

from packager.errors import ConfigError

SCHEME = "down_hadamard"  # the transform's name; its tensors are `<linear>.down_hadamard_input.weight`
# The dense MLP's output projection in the llama family (Llama, Mistral, Qwen, Gemma, Phi-3, OLMo). Only that one:
# vLLM applies transforms to its Linear layers, not to fused MoE experts (`mlp.experts.N.down_proj`), and the
# engine's target must select exactly the Linears whose weights were rotated.
SUFFIX = ".mlp.down_proj"
TARGET = r"re:.*\.mlp\.down_proj$"
MIN_BLOCK = 16  # a narrower block spreads an outlier over too few channels to matter


def sylvester(n: int):
    """The n x n Hadamard matrix of +-1 entries (n a power of 2), float64."""
    import torch

    if n < 1 or n & (n - 1):
        raise ConfigError(f"a Hadamard block must be a power of 2; got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def down_linears(names: list[str]) -> list[str]:
    """The Linears the rotation applies to: every name ending in `.mlp.down_proj`."""
    return [n for n in names if n.endswith(SUFFIX)]


def block_for(widths: list[int], most: int) -> int:
    """The largest power of 2, at most `most`, that divides every width (1 if none above 1 does)."""
    b = most
    while b > 1 and any(w % b for w in widths):
        b //= 2
    return b


@dataclass(frozen=True)
class BlockHadamard:
    """The rotation: block size, the seed of its signs, and the Linears it applies to."""

    block: int
    seed: int
    targets: tuple[str, ...]

    def stored(self):
        """The +-1 matrix the checkpoint holds (compressed-tensors stores transforms unnormalized)."""
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        signs = torch.randint(0, 2, (self.block,), generator=gen).to(torch.float64) * 2 - 1
        return signs[:, None] * sylvester(self.block)

    def matrix(self):
        """The orthogonal block M, float64."""
        return self.stored() / math.sqrt(self.block)

    def check_width(self, name: str, width: int) -> None:
        if width % self.block:
            raise ConfigError(f"{name} reads {width} channels, which a Hadamard block of {self.block} does not "
                              "divide; choose a power of 2 that divides it, or down_rotation_block: null")

    @cached_property
    def _m32(self):
        """M in float32, built once: `rotate` runs in a forward hook on every simulated pass."""
        import torch

        return self.matrix().to(torch.float32)

    def rotate(self, t, inverse: bool = False):
        """t @ blockdiag(M) (or M^T, which undoes it) over the last dimension: a weight's input columns or an
        activation's channels."""
        import torch

        m = (self._m32.T if inverse else self._m32).to(t.device)
        return (t.to(torch.float32).unflatten(-1, (-1, self.block)) @ m).flatten(-2).to(t.dtype)

    def weight_transform(self) -> Callable[[str, Any], Any]:
        """A per-tensor transform for the checkpoint writer: each target's weight rotated."""
        weights = {f"{n}.weight" for n in self.targets}

        def pre(name: str, t):
            return self.rotate(t) if name in weights else t

        return pre

    def extra_tensors(self, weight_name: str, dtype) -> dict[str, Any]:
        """The transform tensor that goes beside a target's weight in the checkpoint (none for other tensors)."""
        base = weight_name[: -len(".weight")]
        if base not in self.targets:
            return {}
        return {f"{base}.{SCHEME}_input.weight": self.stored().to(dtype).contiguous()}

    def config(self) -> dict[str, Any]:
        """The `transform_config` of the checkpoint's quantization_config."""
        from compressed_tensors.transform import TransformArgs, TransformConfig, TransformScheme

        scheme = TransformScheme(type="random-hadamard", head_dim=self.block,
                                 apply=[TransformArgs(targets=[TARGET], location="input")])
        return TransformConfig(config_groups={SCHEME: scheme}).model_dump(mode="json")

    def record(self) -> dict[str, Any]:
        return {"block": self.block, "seed": self.seed, "linears": len(self.targets), "type": "random-hadamard",
                "target": TARGET}


def install(model, rot: BlockHadamard) -> list[Any]:
    """Rotate the targets' weights in a loaded float model and their inputs by forward pre-hooks (registered
    before any other hook, so those see the rotated input); returns the hook handles."""
    modules = dict(model.named_modules())
    handles = []

    def hook(_mod, args):
        return (rot.rotate(args[0]),) + tuple(args[1:])

    for n in rot.targets:
        mod = modules[n]
        rot.check_width(n, int(mod.weight.shape[1]))
        mod.weight.data = rot.rotate(mod.weight.data)
        handles.append(mod.register_forward_pre_hook(hook))
    return handles


def install_checked(model, rot: BlockHadamard, batch, record: dict[str, Any]) -> list[Any] | None:
    """`install`, checked on one batch of token ids: the rotated float model must give the same next-token
    distributions (KL at most smoothing.EXACT_KL), else the architecture does not compute y = x W^T there, and the
    rotation is taken back (None; the record says why)."""
    import torch

    from packager.compress.smoothing import EXACT_KL

    with torch.no_grad():
        before = torch.log_softmax(model(input_ids=batch, use_cache=False).logits.float(), dim=-1)
        handles = install(model, rot)
        after = torch.log_softmax(model(input_ids=batch, use_cache=False).logits.float(), dim=-1)
    kl = float((before.exp() * (before - after)).sum(-1).clamp(min=0).mean())
    record["rotation_float_kl"] = kl
    if kl > EXACT_KL:
        for h in handles:
            h.remove()
        uninstall(model, rot)
        record["rotation_skipped"] = (f"rotating down_proj's input changed the float model (KL {kl:.2g} > "
                                      f"{EXACT_KL:g}): this architecture does not feed that input straight to the "
                                      "weight")
        return None
    return handles


def uninstall(model, rot: BlockHadamard) -> None:
    """Rotate the targets' weights back (M is orthogonal: W M M^T = W)."""
    modules = dict(model.named_modules())
    for n in rot.targets:
        modules[n].weight.data = rot.rotate(modules[n].weight.data, inverse=True)
