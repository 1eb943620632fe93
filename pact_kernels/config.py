"""Hyper-parameters of the PACT objective (SPEC §3) and their presets.

The defaults are the paper's equations (λ = 3, τ_mass = 0.9, α = 1, β = 0,
T_g = 1, T = 1); the paper gives no N or τ for the position decay, so they
follow the authors' public code (N = 8, τ = 8). The ``authors`` preset
reproduces ``Glresearch1/PACT`` ``finetuning_pact.py`` (λ = 1, α = 2, T = 2,
N = 8, τ = 8); pair it with ``pact identify --select authors``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# The ablation ladder of the paper's Table 5, bottom row last (SPEC §3).
VARIANTS = ("full_vocab", "safety_tokens", "safety_weights", "response_only_ref", "pact")
# Variants whose reference mixes r_full and r_post through the gate.
GATED_VARIANTS = ("response_only_ref", "pact")
# Variants whose KL is restricted to the safety set S.
SAFETY_SET_VARIANTS = ("safety_tokens", "safety_weights", "response_only_ref", "pact")
# Other names users look for, mapped to the ladder's names.
VARIANT_ALIASES = {"full_vocab_kl": "full_vocab"}

PRESETS = ("paper", "authors")


def canonical_variant(variant: str) -> str:
    """Return the ladder name of ``variant`` (aliases resolved) or raise ValueError."""
    name = VARIANT_ALIASES.get(variant, variant)
    if name not in VARIANTS:
        raise ValueError(
            f"variant={variant!r} is not a PACT variant; use one of {', '.join(VARIANTS)} "
            f"(or the alias {', '.join(VARIANT_ALIASES)})"
        )
    return name


@dataclass(frozen=True)
class PACTConfig:
    """Hyper-parameters of :func:`pact_kernels.pact_loss`.

    Attributes:
        lambda_kl: λ, weight of the safety KL in ``L = CE + λ·KL`` (≥ 0).
        mass_threshold: τ_mass in (0, 1], the cumulative mass that the
            dispersion ``I(q)`` counts the largest entries up to.
        gate_scale: α, slope of the gate ``sigmoid(α·(I_ft − I_post − β))``.
        gate_bias: β, offset of the gate.
        gate_temperature: T_g > 0, temperature of the restricted softmaxes
            that feed the dispersion.
        decay_start: N ≥ 0, answer positions ``t < N`` keep the full gate.
        decay_tau: τ > 0, the gate decays as ``exp(−(t − N)/τ)`` for ``t ≥ N``.
        kl_temperature: T > 0, temperature of the KL (the KL is scaled by T²).
        variant: one of :data:`VARIANTS` (the paper's ablation ladder).
        ignore_index: label value of rows that count for nothing.
    """

    lambda_kl: float = 3.0
    mass_threshold: float = 0.9
    gate_scale: float = 1.0
    gate_bias: float = 0.0
    gate_temperature: float = 1.0
    decay_start: int = 8
    decay_tau: float = 8.0
    kl_temperature: float = 1.0
    variant: str = "pact"
    ignore_index: int = -100

    def __post_init__(self):
        object.__setattr__(self, "variant", canonical_variant(self.variant))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first hyper-parameter that is out of range."""

        def finite(name):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number")
            return value

        if finite("lambda_kl") < 0:
            raise ValueError(f"lambda_kl={self.lambda_kl} must be >= 0 (0 gives plain cross-entropy)")
        if not 0.0 < finite("mass_threshold") <= 1.0:
            raise ValueError(f"mass_threshold={self.mass_threshold} must be in (0, 1]; the paper uses 0.9")
        finite("gate_scale")
        finite("gate_bias")
        for name in ("gate_temperature", "kl_temperature", "decay_tau"):
            if finite(name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if finite("decay_start") < 0 or int(self.decay_start) != self.decay_start:
            raise ValueError(f"decay_start={self.decay_start} must be a whole number >= 0")
        if not isinstance(self.ignore_index, int) or isinstance(self.ignore_index, bool):
            raise ValueError(f"ignore_index={self.ignore_index!r} must be an int (usually -100)")

    @property
    def uses_gate(self) -> bool:
        """True for the variants that mix in the no-prompt reference ``r_post``."""
        return self.variant in GATED_VARIANTS

    @property
    def uses_decay(self) -> bool:
        """True when the gate decays with the answer position (``pact`` only)."""
        return self.variant == "pact"

    @classmethod
    def preset(cls, name: str, **overrides) -> "PACTConfig":
        """The named preset (``paper`` or ``authors``), with ``overrides`` applied."""
        if name == "paper":
            base = {}
        elif name == "authors":
            base = dict(lambda_kl=1.0, gate_scale=2.0, kl_temperature=2.0, decay_start=8, decay_tau=8.0)
        else:
            raise ValueError(f"preset={name!r} is unknown; use one of {', '.join(PRESETS)}")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def paper(cls, **overrides) -> "PACTConfig":
        """The paper's defaults (SPEC §3)."""
        return cls.preset("paper", **overrides)

    @classmethod
    def authors(cls, **overrides) -> "PACTConfig":
        """The authors' public code: λ = 1, α = 2, T = 2, N = 8, τ = 8."""
        return cls.preset("authors", **overrides)

    def replace(self, **changes) -> "PACTConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_kwargs(self) -> dict:
        """The fields as keyword arguments of :func:`pact_kernels.pact_loss`."""
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(PACTConfig))


def resolve_config(config: PACTConfig | None, overrides: dict, caller: str, keywords: tuple = ()) -> PACTConfig:
    """``config`` (default: the paper's) with ``overrides`` (PACTConfig field names) applied.

    ``caller`` and ``keywords`` (its other keyword arguments) name the function
    in the TypeError raised for an unknown keyword, which lists the valid ones.
    """
    unknown = [name for name in overrides if name not in FIELD_NAMES]
    if unknown:
        valid = ", ".join(("config", *keywords, *FIELD_NAMES))
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}; valid keywords: {valid}")
    if config is None:
        return PACTConfig(**overrides)
    if not isinstance(config, PACTConfig):
        raise TypeError(f"config must be a PACTConfig (or None for the paper's), got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config
