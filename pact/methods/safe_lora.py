"""SafeLoRA (Hsu et al. 2024, "Safe LoRA: the Silver Lining of Reducing Safety Risks when Finetuning LLMs").

Training is plain SFT; after training, each LoRA pair of the exported
adapter is compared with the alignment matrix of its module
(:mod:`pact.methods.alignment`, ``C = V Vᵀ / ‖V‖_F``):

    ΔW  = B A                                 [out, in]
    cos = cos(vec(C ΔW), vec(ΔW))
    if cos <= threshold:  B <- C B            (the update is projected)

Selection as in the authors' code (``IBM/SafeLoRA``; its ``config.py``
defaults): ``number`` (default) projects the ``num_layers`` layers with the
lowest cosine (default 10), ``threshold`` every layer at or under the
threshold (default 0.5). As there, the cosine is rounded to 5 decimals
before it is compared (``round_decimals``; None compares it exactly), and
``number`` projects every layer whose cosine is at most the N-th lowest, so
ties at the N-th are all projected (``ties="all"``; ``ties="name"`` takes
exactly N, ties broken by module name). Pairs are matched by module name,
not by position (the public code zips two parameter lists). A ``peft`` port
(``peft.utils.safelora``) exists only as an unmerged pull request; no
released ``peft`` has it.
``train.py`` runs :meth:`SafeLoRA.finish` on rank 0 after ``export_final``:
the exported adapter moves to ``final_unprojected/``, ``final/`` gets the
projected one (written beside it and renamed, so ``final/`` never holds
unprojected weights), and ``safe_lora.json`` records every layer's cosine
and whether it was projected.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic_files import write_json_atomic
from .base import SFT
from .alignment import AlignmentMatrix, load_alignment, lora_module_name, lora_pairs

ADAPTER_FILE = "adapter_model.safetensors"


@dataclass
class LayerRecord:
    """What SafeLoRA did to one module: its cosine and whether ``B`` was replaced by ``C B``."""

    module: str
    cosine: float
    projected: bool


def update_cosine(a: torch.Tensor, b: torch.Tensor, align: AlignmentMatrix) -> float:
    """``cos(C B A, B A)`` over all entries; ``a``: ``[r, in]``, ``b``: ``[out, r]`` (any float dtype)."""
    a, b = a.float(), b.float()
    delta = b @ a
    projected = align.apply(b) @ a
    return float(torch.nn.functional.cosine_similarity(projected.reshape(1, -1), delta.reshape(1, -1)))


def round_cosine(cosine: float, decimals: int | None) -> float:
    """``cosine`` rounded to ``decimals`` places as ``numpy.round`` does (the authors' code); None: unchanged."""
    import numpy

    return cosine if decimals is None else float(numpy.round(cosine, decimals))


def select_layers(cosines: dict[str, float], select: str, threshold: float, num_layers: int,
                  ties: str = "all") -> set[str]:
    """The modules to project.

    ``threshold``: cosine ``<= threshold``. ``number``: the ``num_layers``
    lowest cosines; ``ties="all"`` (the authors' code) projects every module
    whose cosine is at most the N-th lowest (more than N on a tie),
    ``ties="name"`` exactly N, ties broken by module name.
    """
    if select == "threshold":
        return {m for m, c in cosines.items() if c <= threshold}
    if select == "number":
        ordered = sorted(cosines, key=lambda m: (cosines[m], m))
        if ties == "name":
            return set(ordered[:num_layers])
        if ties == "all":
            nth = cosines[ordered[min(num_layers, len(ordered)) - 1]]
            return {m for m, c in cosines.items() if c <= nth}
        raise ValueError(f"ties={ties!r}: use all or name")
    raise ValueError(f"select={select!r}: use threshold or number")


def project_adapter(weights: dict[str, torch.Tensor], alignment: dict[str, AlignmentMatrix], *,
                    select: str = "number", threshold: float = 0.5, num_layers: int = 10,
                    round_decimals: int | None = 5, ties: str = "all"):
    """Project an adapter's LoRA updates (a state dict keyed as peft saves it).

    Args:
        weights: ``{name: tensor}`` with ``...<module>.lora_A.weight`` ``[r, in]`` and
            ``...<module>.lora_B.weight`` ``[out, r]``; other entries pass through.
        alignment: ``{module: AlignmentMatrix}`` for every module with a LoRA pair.

        select, threshold, num_layers, ties: see :func:`select_layers`.
        round_decimals: the cosines are rounded to this many decimals before
            the selection (:func:`round_cosine`).

    Returns:
        ``(new_weights, records)``: the projected B keeps its key and dtype;
        ``records`` lists a :class:`LayerRecord` per module (its cosine as
        compared, i.e. rounded), sorted by name.
    """
    pairs = lora_pairs(weights.items())
    missing = sorted(set(pairs) - set(alignment))
    if missing:
        raise ValueError(f"no alignment matrix for LoRA module(s) {missing}")
    cosines = {m: round_cosine(update_cosine(p["A"], p["B"], alignment[m]), round_decimals) for m, p in pairs.items()}
    chosen = select_layers(cosines, select, threshold, num_layers, ties)
    out = dict(weights)
    for name, tensor in weights.items():
        found = lora_module_name(name)
        if found and found[1] == "B" and found[0] in chosen:
            out[name] = alignment[found[0]].apply(tensor.float()).to(tensor.dtype).contiguous()
    records = [LayerRecord(m, cosines[m], m in chosen) for m in sorted(pairs)]
    return out, records


class SafeLoRA(SFT):
    """SFT during training; the SafeLoRA projection of the exported adapter afterwards.

    Args:
        model, gguf_file: the aligned model (the run's ``model``).
        base_model, base_gguf_file: the unaligned model it came from.
        select, threshold, num_layers, round_decimals, ties: the layer selection (see the module doc).
        dtype: the dtype the two models are loaded in (differences are taken in float32; the authors
            load both in float32).
    """

    name = "safe_lora"
    needs_base_model = True

    def __init__(self, model: str, base_model: str, *, gguf_file: str | None = None,
                 base_gguf_file: str | None = None, select: str = "number", threshold: float = 0.5,
                 num_layers: int = 10, round_decimals: int | None = 5, ties: str = "all", dtype: str = "float32"):
        self.model, self.gguf_file = model, gguf_file
        self.base_model, self.base_gguf_file = base_model, base_gguf_file
        self.select, self.threshold, self.num_layers, self.dtype = select, threshold, num_layers, dtype
        self.round_decimals, self.ties = round_decimals, ties

    def project_dir(self, run_dir: Path) -> list[LayerRecord]:
        """Project the adapter exported to ``run_dir/final``.

        The exported adapter first moves to ``run_dir/final_unprojected`` (a
        rename); the projected one is written beside it and renamed to
        ``final``, so ``final/`` never holds unprojected weights, even when the
        projection fails half-way (a rerun of this method projects
        ``final_unprojected`` again).
        """
        from safetensors.torch import load_file, save_file

        run_dir = Path(run_dir)
        final, raw, tmp = run_dir / "final", run_dir / "final_unprojected", run_dir / "final.tmp"
        if final.is_dir():  # a fresh export: it becomes the unprojected copy
            shutil.rmtree(raw, ignore_errors=True)
            os.replace(final, raw)
        adapter = raw / ADAPTER_FILE
        if not adapter.is_file():
            raise FileNotFoundError(f"{adapter} is missing: SafeLoRA projects a LoRA adapter (lora=true)")
        weights = load_file(str(adapter))
        modules = lora_pairs(weights.items())
        alignment = load_alignment(self.model, self.base_model, modules, aligned_gguf=self.gguf_file,
                                   base_gguf=self.base_gguf_file, dtype=self.dtype)
        projected, records = project_adapter(weights, alignment, select=self.select, threshold=self.threshold,
                                             num_layers=self.num_layers, round_decimals=self.round_decimals,
                                             ties=self.ties)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(raw, tmp)
        save_file(projected, str(tmp / ADAPTER_FILE), metadata={"format": "pt"})
        report = {"method": "safe_lora", "select": self.select, "threshold": self.threshold,
                  "num_layers": self.num_layers, "round_decimals": self.round_decimals, "ties": self.ties,
                  "alignment_dtype": self.dtype, "base_model": self.base_model,
                  "projected": sum(r.projected for r in records), "layers": [vars(r) for r in records]}
        write_json_atomic(run_dir / "safe_lora.json", report)
        os.replace(tmp, final)
        return records

    def finish(self, run_dir: Path, rank: int) -> None:
        """After ``export_final``: rank 0 projects ``run_dir/final``; every rank waits and raises if it failed."""
        import torch.distributed as dist

        error = None
        if rank == 0:
            try:
                records = self.project_dir(Path(run_dir))
                print(f"pact train: safe_lora projected {sum(r.projected for r in records)} of {len(records)} "
                      f"LoRA layers (record: {Path(run_dir) / 'safe_lora.json'})", flush=True)
            except Exception as e:  # reported on every rank below, so none waits forever
                error = f"safe_lora projection of {Path(run_dir) / 'final'} failed: {type(e).__name__}: {e}"
        if dist.is_available() and dist.is_initialized():
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error:
            raise RuntimeError(error)
