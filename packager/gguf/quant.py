"""llama.cpp quantization types packager exports, registered by name.

Each name maps to the `llama_ftype` constant of llama-cpp-python (`LLAMA_FTYPE_MOSTLY_*`), read from
`llama_cpp` when the quantization runs, so the numbers always match the library that does the work.
Types that need an importance matrix (IQ*) are not offered; the 4-bit and lower types here take an optional one
(packager.gguf.imatrix).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packager.core.plugins import Registry
from packager.errors import ConfigError


@dataclass(frozen=True)
class QuantType:
    name: str  # packager's name (lowercase), also the artifact directory's name
    ftype_constant: str  # attribute of llama_cpp holding the llama_ftype value
    bits_per_weight: float  # nominal, for sizing
    description: str

    @property
    def is_float(self) -> bool:
        """A float type: the converted GGUF itself, no quantization pass."""
        return self.name in FLOAT_TYPES

    def ftype(self) -> int:
        import llama_cpp

        return int(getattr(llama_cpp, self.ftype_constant))


QUANT_TYPES: Registry[QuantType] = Registry("GGUF quantization type")
FLOAT_TYPES = ("f32", "f16", "bf16")

for _q in (
    QuantType("q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0", 8.5, "8-bit, one scale per 32 weights; near-lossless"),
    QuantType("q6_k", "LLAMA_FTYPE_MOSTLY_Q6_K", 6.56, "6-bit k-quant"),
    QuantType("q5_k_m", "LLAMA_FTYPE_MOSTLY_Q5_K_M", 5.7, "5-bit k-quant, some tensors at 6 bits"),
    QuantType("q5_k_s", "LLAMA_FTYPE_MOSTLY_Q5_K_S", 5.5, "5-bit k-quant"),
    QuantType("q5_0", "LLAMA_FTYPE_MOSTLY_Q5_0", 5.5, "5-bit, one scale per 32 weights"),
    QuantType("q5_1", "LLAMA_FTYPE_MOSTLY_Q5_1", 6.0, "5-bit, scale and minimum per 32 weights"),
    QuantType("q4_k_m", "LLAMA_FTYPE_MOSTLY_Q4_K_M", 4.85, "4-bit k-quant, some tensors at 6 bits (Ollama's default)"),
    QuantType("q4_k_s", "LLAMA_FTYPE_MOSTLY_Q4_K_S", 4.6, "4-bit k-quant"),
    QuantType("q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0", 4.5, "4-bit, one scale per 32 weights"),
    QuantType("q4_1", "LLAMA_FTYPE_MOSTLY_Q4_1", 5.0, "4-bit, scale and minimum per 32 weights"),
    QuantType("q3_k_m", "LLAMA_FTYPE_MOSTLY_Q3_K_M", 3.9, "3-bit k-quant"),
    QuantType("q2_k", "LLAMA_FTYPE_MOSTLY_Q2_K", 3.35, "2-bit k-quant (large quality loss)"),
    QuantType("f16", "LLAMA_FTYPE_MOSTLY_F16", 16.0, "float16, not quantized"),
    QuantType("bf16", "LLAMA_FTYPE_MOSTLY_BF16", 16.0, "bfloat16, not quantized"),
    QuantType("f32", "LLAMA_FTYPE_ALL_F32", 32.0, "float32, not quantized"),
):
    QUANT_TYPES.register(_q.name)(_q)


def parse_quants(names: list[str] | tuple[str, ...]) -> list[QuantType]:
    """Quant types by name (case-insensitive, '-' or '_'), in the order given, each once.

    Raises ConfigError naming the bad value and the known types."""
    if not names:
        raise ConfigError(f"No GGUF quantization type given; choose one or more of: {', '.join(QUANT_TYPES.names())}.")
    out: list[QuantType] = []
    for raw in names:
        key = str(raw).strip().lower().replace("-", "_")
        if key not in QUANT_TYPES:
            raise ConfigError(
                f"Unknown GGUF quantization type {raw!r}. Known: {', '.join(QUANT_TYPES.names())} "
                "(importance-matrix types such as IQ4_XS are not supported)."
            )
        q = QUANT_TYPES.get(key)
        if q not in out:
            out.append(q)
    return out


# Types that keep no super-blocks: a K-quant export holds them only where llama.cpp fell back from a K type
_LEGACY_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
_FLOAT_TENSOR_TYPES = ("F32", "F16", "BF16")


def tensor_type_counts(gguf_path: Path) -> dict[str, int]:
    """How many of a GGUF file's matrices (tensors of two or more dimensions) each type stores, the most used
    first: {"Q5_0": 166, "Q4_K": 16, ...}."""
    from collections import Counter

    from gguf import GGUFReader

    counts = Counter(t.tensor_type.name for t in GGUFReader(str(gguf_path)).tensors if len(t.shape) >= 2)
    return dict(counts.most_common())


def k_quant_fallback(q: QuantType, counts: dict[str, int]) -> str | None:
    """A sentence when an export of a K-quant type stores matrices in legacy types: llama.cpp's K-quants pack rows
    in super-blocks of 256 columns, and quantizes a matrix whose rows are not a multiple of 256 with a legacy type
    instead (Q5_0 for Q4_K, Q8_0 for Q6_K, ...), whose size and error differ. None otherwise."""
    if "_k" not in q.name:
        return None
    legacy = {t: n for t, n in counts.items() if t in _LEGACY_TYPES}
    quantized = sum(n for t, n in counts.items() if t not in _FLOAT_TENSOR_TYPES)
    if not legacy:
        return None
    kinds = ", ".join(f"{n} {t}" for t, n in legacy.items())
    return (f"gguf {q.name}: {sum(legacy.values())} of its {quantized} quantized matrices are stored in legacy types "
            f"({kinds}): llama.cpp's K-quants need rows whose width is a multiple of 256, and this model's are not; "
            "its size and fidelity are those of the types used (the export record's tensor_types lists them)")
