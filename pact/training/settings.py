"""The keys the driver's :class:`~pact.training.config.TrainConfig` and :class:`pact.trl.PACTTrainerConfig`
share: one name, one default, one ``help`` text and one check each.

* :class:`LossSettings`: PACT's loss hyper-parameters (``None``: the preset's value). ``TrainConfig`` holds
  them as ``loss`` (YAML ``loss: {lambda_kl: 3}``, ``loss.lambda_kl=3``); ``PACTTrainerConfig`` is one (its
  keyword arguments ``lambda_kl=3``, ...).
* :class:`ObjectiveSettings`: the objective and the keys around it (``method``, ``variant``, ``preset``,
  constrained SFT's ``csft_*``, ``post_bos``, ``fused_linear``, ``ref_cache``, ``loss_normalization``,
  ``resume_changes``); both configs are one.

``method`` is the objective (:data:`METHODS`); ``variant`` the rung of PACT's ablation ladder
(:data:`pact_kernels.config.VARIANTS`). A rung's name given as the method (``method=full_vocab``, the
spelling of the experiment grids) is read as ``method=pact variant=full_vocab`` (:func:`split_method`).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from pact_kernels.config import PRESETS, VARIANT_ALIASES, VARIANTS, PACTConfig, canonical_variant

from ..methods.constrained_sft import check_csft_keys

#: The objectives: the paper's baselines and PACT.
BASELINES = ("sft", "constrained_sft", "safe_lora", "asft")
METHODS = BASELINES + ("pact",)
#: Every name ``method=`` accepts: the objectives and the ladder's rungs (and their aliases) as ``method=pact``.
METHOD_NAMES = BASELINES + VARIANTS + tuple(VARIANT_ALIASES)
#: How a step's loss averages over its micro-batches (``loss_normalization``), see :mod:`pact.training.step`.
LOSS_NORMALIZATIONS = ("tokens", "micro_batch")
#: constrained_sft's keys, in ConstrainedSFT's argument order.
CSFT_KEYS = ("csft_beta", "csft_bias_factor", "csft_first_token_bias_factor", "csft_bias_length", "csft_min_weight")


def knob(default, help: str, **metadata):
    """A dataclass field with its ``help`` text (``pact train --help``, TRL's parsers); a list or dict default
    is copied per instance."""
    if default.__hash__ is None:  # a list, dict or dataclass instance: each config gets its own copy
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class LossSettings:
    """PACT's loss hyper-parameters (SPEC §3); each ``None`` takes the value of ``preset``."""

    lambda_kl: float | None = knob(None, "λ of L = CE + λ·KL (paper Eq. 9: 3); null: the preset's")
    mass_threshold: float | None = knob(None, "τ_mass in (0, 1] of the dispersion I(q) (paper Eq. 6: 0.9)")
    gate_scale: float | None = knob(None, "α, slope of the gate sigmoid(α·(I_ft − I_post − β)) (paper Eq. 7: 1)")
    gate_bias: float | None = knob(None, "β, offset of the gate (paper Eq. 7: 0)")
    gate_temperature: float | None = knob(None, "T_g > 0 of the restricted softmaxes that feed the dispersion "
                                                "(paper: 1)")
    decay_start: int | None = knob(None, "N: answer positions t < N keep the full gate (authors' code: 8)")
    decay_tau: float | None = knob(None, "τ > 0: the gate decays as exp(−(t − N)/τ) for t ≥ N (authors' code: 8)")
    kl_temperature: float | None = knob(None, "T > 0 of the KL, which is scaled by T² (paper: 1; authors: 2)")

    def loss_overrides(self) -> dict:
        """The keys that are set (not ``None``), as :meth:`PACTConfig.preset` overrides."""
        return {k: getattr(self, k) for k in LOSS_KEYS if getattr(self, k) is not None}


#: The loss keys, as named in both configs and in :class:`PACTConfig`.
LOSS_KEYS = tuple(f.name for f in dataclasses.fields(LossSettings))


def split_method(method: str, variant: str = "pact") -> tuple[str, str]:
    """``(method, variant)`` with a rung named as the method moved to ``variant`` as spelled (``full_vocab`` ->
    ``("pact", "full_vocab")``, ``full_vocab_kl`` -> ``("pact", "full_vocab_kl")``: run.json records the name the
    user wrote; :class:`PACTConfig` resolves the alias); ValueError when both name a rung other than ``pact`` and
    they differ."""
    if method not in VARIANTS and method not in VARIANT_ALIASES or method == "pact":
        return method, variant
    rung = canonical_variant(method)
    if variant not in ("pact", rung) and VARIANT_ALIASES.get(variant, variant) != rung:
        raise ValueError(f"method={method!r} is the rung variant={rung!r}, and variant={variant!r} names another; "
                         f"set method=pact variant=<rung> (one of {', '.join(VARIANTS)})")
    return "pact", method


def method_label(record: dict) -> str | None:
    """The name of a run's row (``run.json``'s ``method``): the baseline, or the PACT variant of ``method=pact``."""
    method, variant = record.get("method"), record.get("variant")
    return variant if method == "pact" and variant else method


@dataclass
class ObjectiveSettings:
    """The objective and the keys of the loss around it, shared by the driver's and the trainer's configs."""

    method: str = knob("pact", "the objective: pact | sft | constrained_sft | safe_lora | asft (safe_lora and "
                               "asft: `pact train` only); a rung's name (full_vocab, full_vocab_kl, safety_tokens, "
                               "safety_weights, response_only_ref) means method=pact with that variant")
    variant: str = knob("pact", "PACT's rung of the paper's ablation ladder (Table 5): full_vocab (alias "
                                "full_vocab_kl) | safety_tokens | safety_weights | response_only_ref | pact")
    preset: str = knob("paper", "loss defaults: paper (the paper's equations: λ = 3, τ_mass = 0.9, α = 1, β = 0, "
                                "T_g = 1, T = 1; N = 8, τ = 8 from the authors' code) | authors (Glresearch1/PACT: "
                                "λ = 1, α = 2, T = 2); SPEC §3")
    csft_beta: float = knob(0.1, "constrained_sft: β for answer tokens after the first csft_bias_length "
                                 "(Qi et al. code: 0.1)")
    csft_bias_factor: float = knob(20.0, "constrained_sft: β·factor on answer tokens 2..csft_bias_length "
                                         "(0.1·20 = 2.0)")
    csft_first_token_bias_factor: float = knob(5.0, "constrained_sft: β·factor on the first answer token "
                                                    "(0.1·5 = 0.5)")
    csft_bias_length: int = knob(5, "constrained_sft: answer tokens with the larger β")
    csft_min_weight: float = knob(1e-3, "constrained_sft: clamp of the token weight 2(1 − σ(...)) (Qi et al. code)")
    post_bos: bool = knob(False, "put the tokenizer's BOS before the no-prompt view's assistant header (SPEC §4; "
                                 "off in the authors' code)")
    fused_linear: bool = knob(True, "the loss straight from the hidden rows and the output head, chunk by chunk: "
                                    "no [rows, V] logits (false: the policy's logits at the answer rows)")
    ref_cache: str | None = knob(None, "directory of the precomputed reference: both views' K-token logits of "
                                       "every training sample, filled before the first step; a cache of other "
                                       "data, tokens or weights is refused (not for full_vocab)")
    loss_normalization: str = knob("tokens", "tokens: a step's loss is the mean over the labelled rows of all its "
                                             "micro-batches and ranks (a bigger batch) | micro_batch: the mean of "
                                             "the micro-batch means (the baselines' public recipes)")
    resume_changes: bool = knob(False, "a resume may continue with keys and inputs (tokens, tokenizer, data, "
                                       "weights, ranks) that differ from the run's record; otherwise it is "
                                       "refused, naming each difference")

    def loss_settings(self) -> LossSettings:
        """The run's :class:`LossSettings` (``PACTTrainerConfig`` is one; ``TrainConfig`` holds one as ``loss``)."""
        return self

    def loss_config(self) -> PACTConfig:
        """The :class:`PACTConfig` of the run: ``preset``, ``variant`` and every loss key that is set."""
        return PACTConfig.preset(self.preset, variant=self.variant, **self.loss_settings().loss_overrides())

    def check_objective(self, methods=METHODS, sep: str = ": ") -> None:
        """ValueError naming the first key of these settings out of its choices or range (``methods``: the
        objectives this config trains; ``sep``: what follows ``key=value`` in the message)."""
        if self.method not in methods:
            raise ValueError(f"method={self.method!r} is unknown; use one of {', '.join(methods)}")
        check_csft_keys(*(getattr(self, k) for k in CSFT_KEYS))
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"loss_normalization={self.loss_normalization!r}{sep}use tokens (the mean over the "
                             "step's labelled rows) or micro_batch (the mean of the micro-batch means)")
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r} is unknown; use one of {', '.join(PRESETS)}")
        if self.variant not in VARIANTS + tuple(VARIANT_ALIASES):
            raise ValueError(f"variant={self.variant!r}{sep}use one of {', '.join(VARIANTS)}")
        self.loss_config()  # PACTConfig's own range checks

    def unused_pact_keys(self) -> list[str]:
        """PACT's keys set away from their defaults while ``method`` is a baseline (they would change nothing)."""
        if self.method == "pact":
            return []
        return ([k for k in LOSS_KEYS if getattr(self.loss_settings(), k) is not None]
                + ["variant"] * (self.variant != "pact"))
