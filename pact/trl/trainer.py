"""``PACTTrainer``: TRL's ``SFTTrainer`` with the PACT loss, built from the driver's own pieces.

Per micro-batch (:meth:`PACTTrainer.compute_loss`), the driver's own
:func:`pact.training.step.micro_batch_loss`: the policy's hidden rows (fused
linear loss, the default) or logits at the answer rows of the full view
(``RowModel``'s modes), the reference's K-token logits on both views (the
peft model with its adapter disabled, or ``ref_model``; or the memory-mapped
cache), then the loss of the config's ``method`` (:class:`pact.methods.PACT`
through ``pact_kernels``, or the baselines :class:`~pact.methods.SFT` and
:class:`~pact.methods.ConstrainedSFT`; :func:`pact.methods.build_method`), and
the driver's :class:`~pact.training.metrics.StepMetrics` for the logs. The sampler gives
the driver's data order (:class:`~pact.training.data.StepSampler`), so the
same data, seed and hyper-parameters give the driver's step losses.
"""
from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from trl import SFTTrainer

from ..data.collator import PACTBatch
from ..data.views import ViewBuilder
from ..methods import build_method
from ..fingerprint import tokenization_digest, weights_digest
from ..models import ModelLoadError, vocab_size_of
from ..reference import (OnlineReference, ReferenceCache, cache_fingerprint, causal_lm_of, fill_reference_cache,
                         patch_row_forward)
from ..safety_tokens import SafetyTokens
from ..training.checkpoint import verify_checkpoint
from ..training.safe_load import weights_only_loading
from ..training.data import StepSampler, dataset_digest
from ..training.metrics import KINDS, POSITIONS, StepMetrics
from ..training.step import micro_batch_loss
from .config import PACTTrainerConfig
from .data import VIEW_COLUMNS, ViewCollator, build_views, views_dataset
from .identity import IDENTITY_FILE, check_trainer_resume, intact_checkpoint, trainer_identity


class RowCaller:
    """Calls a (wrapped) model patched by :func:`pact.reference.patch_row_forward` with the driver's signature.

    ``RowCaller(model)(input_ids, attention_mask, rows, mode)`` is what the
    driver's ``engine(input_ids, attention_mask, rows, mode=mode)`` is, so
    :class:`pact.reference.OnlineReference` works on it unchanged.
    """

    def __init__(self, model):
        self.model = model

    @property
    def module(self):
        """The model inside the wrappers (what :func:`pact.reference.output_head` reads the head of)."""
        return getattr(self.model, "module", self.model)

    def __call__(self, input_ids, attention_mask, rows, mode=None, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, pact_rows=rows,
                          pact_mode=mode or "policy", pact_labels=labels)


class StepOrderSampler(torch.utils.data.Sampler):
    """The driver's sample order: each epoch's seeded permutation cut to whole steps.

    With the ``DataLoader``'s ``batch_size`` = micro-batch and ``accelerate``
    dealing micro-batches to ranks in turn, rank r gets micro-batches
    ``g*world + r`` of each step's block: the driver's
    :meth:`~pact.training.data.StepSampler.micro_batches`.
    """

    def __init__(self, steps: StepSampler):
        self.steps = steps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps.steps_per_epoch * self.steps.block

    def __iter__(self):
        return iter(self.steps.permutation(self.epoch)[:len(self)])


class PACTTrainer(SFTTrainer):
    """Fine-tune with PACT where you fine-tune with TRL's ``SFTTrainer``.

    Args:
        model: a causal LM (instance or name/path ``SFTTrainer`` loads), or a
            peft model.
        args: a :class:`PACTTrainerConfig` (its ``safety_tokens`` is required).
        train_dataset, eval_dataset: ``datasets.Dataset`` in TRL's
            conversational ``messages``, ``prompt``/``completion`` or
            conversational prompt-completion format (see :mod:`pact.trl.data`);
            an optional boolean ``harmful`` column splits the logged metrics.
        processing_class: the tokenizer; its chat template must render an
            assistant header (the no-prompt view is that header + the answer).
        ref_model: the frozen reference (the aligned model) when the policy
            is not a peft model and the method has a reference (``pact``,
            ``constrained_sft``); with ``peft_config`` or a peft model, leave
            it None: the reference is the same network with its adapter
            disabled. ``method="sft"`` has none.
        peft_config: as for ``SFTTrainer`` (e.g. ``peft.LoraConfig``).
        **kwargs: the rest of ``SFTTrainer``'s arguments (callbacks,
            optimizers, ...); not ``data_collator`` or ``formatting_func``.

    Logs (through the Trainer's ``log``, so W&B / TensorBoard see them):
    ``ce``, ``kl``, ``gate_mean``, and per kind (``benign``, ``harmful``)
    ``{kind}/ce``, ``{kind}/kl`` and ``{kind}/safety_prob`` (the mean
    probability of S at answer positions 0..3; also per position).
    """

    _tag_names = ["trl", "sft", "pact"]
    _name = "PACT"
    _paper = {
        "title": "Few Tokens, Big Leverage: Preserving Safety Alignment by Constraining Safety Tokens during "
                 "Fine-tuning",
        "id": "2603.07445",
        "citation": textwrap.dedent("""\
            @article{wang2026pact,
                title   = {{Few Tokens, Big Leverage: Preserving Safety Alignment by Constraining Safety Tokens during Fine-tuning}},
                author  = {Guoli Wang and Haonan Shi and Tu Ouyang and An Wang},
                year    = 2026,
                journal = {arXiv preprint arXiv:2603.07445},
            }"""),
    }
    # compute_loss returns the micro-batch's mean loss: the Trainer divides it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: PACTTrainerConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, ref_model=None, peft_config=None, **kwargs):
        if not isinstance(args, PACTTrainerConfig):
            raise TypeError("args: PACTTrainer needs a PACTTrainerConfig(output_dir=..., safety_tokens=...), got "
                            f"{type(args).__name__}")
        for name in ("data_collator", "formatting_func", "compute_loss_func"):
            if kwargs.get(name) is not None:
                raise ValueError(f"{name}: PACTTrainer builds both views of each sample itself; pass a dataset in "
                                 "a TRL format instead")
        trust = bool((getattr(args, "model_init_kwargs", None) or {}).get("trust_remote_code", False))
        vocab = _vocab_size(model, trust)
        self.safety = SafetyTokens.load(args.safety_tokens, vocab_size=vocab,  # SafetyTokensError before any work
                                        tokenizer=getattr(processing_class, "tokenizer", processing_class))
        self.method = build_method(args, self.safety, backend=args.pact_backend)  # the driver's objectives
        peft_policy = peft_config is not None or is_peft_model(model)
        if peft_policy and ref_model is not None:
            raise ValueError("ref_model: the policy is a peft model, so the reference is the same network with its "
                             "adapter disabled (no second copy); pass ref_model=None")
        if not self.method.needs_reference and ref_model is not None:
            raise ValueError(f"ref_model: method={args.method!r} uses no reference; pass ref_model=None")
        if not peft_policy and ref_model is None and self.method.needs_reference:
            raise ValueError("ref_model: the policy is not a peft model; pass ref_model= (a frozen copy of the "
                             "aligned model) or peft_config= (e.g. peft.LoraConfig) to train an adapter")
        if ref_model is not None and _vocab_size(ref_model, trust) != vocab:
            raise ValueError(f"ref_model has {_vocab_size(ref_model, trust)} output tokens, the model {vocab}")
        self.collator = ViewCollator()
        self.train_views = None
        self.dropped = {}
        self._metrics_pact = {}
        self._loss_context = None
        self._cache_ready = False
        super().__init__(model, args=args, data_collator=self.collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, peft_config=peft_config,
                         **kwargs)
        self.model_accepts_loss_kwargs = False  # no token counting: the loss is a per-micro-batch mean
        if processing_class is None:  # the tokenizer SFTTrainer loaded: the tokens file must be of it too
            self.safety.check_vocab(tokenizer=getattr(self.processing_class, "tokenizer", self.processing_class),
                                    where=str(args.safety_tokens))
        owner = self.model if is_peft_model(self.model) else None
        rows = patch_row_forward(causal_lm_of(self.model), owner)
        self.ref_model = None
        if ref_model is None:
            rows.set_safety_ids(self.safety.ids_tensor())
        else:
            ref_model.requires_grad_(False)
            patch_row_forward(ref_model).set_safety_ids(self.safety.ids_tensor())
            if self.is_deepspeed_enabled:
                from trl.models.utils import prepare_deepspeed

                self.ref_model = prepare_deepspeed(ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self.cache = self._reference_cache()

    # -- data ------------------------------------------------------------------------------------------
    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        """Both views of every sample (replaces TRL's tokenisation; called by ``SFTTrainer.__init__``)."""
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.collator.pad_id = int(pad or 0)
        builder = ViewBuilder(tokenizer, args.max_length or 10**9, args.post_bos)  # ChatTemplateError here
        views, dropped = build_views(dataset, builder, dataset_name)
        self.dropped[dataset_name] = dropped
        if dataset_name == "train":
            self.train_views = views
        return views_dataset(views)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(VIEW_COLUMNS)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        steps = StepSampler(len(dataset), self.args.per_device_train_batch_size,
                            self.args.gradient_accumulation_steps, self.accelerator.num_processes, 0, self.args.seed)
        if steps.steps_per_epoch == 0:
            raise ValueError(f"{len(dataset)} samples do not fill one step of {steps.block} "
                             "(per_device_train_batch_size x gradient_accumulation_steps x processes)")
        return StepOrderSampler(steps)

    # -- identity and resume ---------------------------------------------------------------------------
    def _model_key(self) -> str:
        """The reference model's weights by content (:func:`pact.fingerprint.weights_digest`), or its name."""
        lm = causal_lm_of(self.ref_model if self.ref_model is not None else self.model)
        name = str(getattr(lm.config, "_name_or_path", "") or type(lm).__name__)
        try:  # new weights saved at the same path are another model
            return weights_digest(name)
        except ModelLoadError:  # not a path or hub name (a model built in memory): its name only
            return f"name:{name}"

    def run_identity(self) -> dict:
        """What defines this run by content (``pact_identity.json`` of each checkpoint; :mod:`pact.trl.identity`)."""
        if getattr(self, "_identity", None) is None:
            tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
            self._identity = trainer_identity(
                self.args, tokens=self.safety, tokenizer_sha256=tokenization_digest(tokenizer),
                data_sha256=dataset_digest(self.train_views), model_sha256=self._model_key(),
                world_size=self.accelerator.num_processes)
        return self._identity

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest intact checkpoint, and a resume
        with other inputs or keys than the checkpoint's run is refused (see :mod:`pact.trl.identity`)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = str(intact_checkpoint(self.args.output_dir))
        if resume_from_checkpoint and (Path(resume_from_checkpoint) / "manifest.json").is_file():
            problem = verify_checkpoint(Path(resume_from_checkpoint), step_key="global_step")
            if problem is not None:
                raise ValueError(f"resume_from_checkpoint={resume_from_checkpoint}: {problem}; pass "
                                 "resume_from_checkpoint=True to take the newest intact checkpoint")
        if resume_from_checkpoint:
            stage = (self.accelerator.state.deepspeed_plugin.zero_stage
                     if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin else 0)
            check_trainer_resume(Path(resume_from_checkpoint), self.run_identity(), self.args, stage)
            with weights_only_loading(resume_from_checkpoint):  # DeepSpeed's loader too: no checkpoint runs code
                return super().train(resume_from_checkpoint, *args, **kwargs)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        """``Trainer``'s checkpoint, then its identity and the manifest of its files (written last)."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from ..atomic_files import write_json_atomic
        from ..training.checkpoint import write_manifest

        identity = self.run_identity()
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every rank's files are in before the manifest lists them
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and folder.is_dir():
            write_json_atomic(folder / IDENTITY_FILE, identity)
            write_manifest(folder)
        self.accelerator.wait_for_everyone()

    # -- reference -------------------------------------------------------------------------------------
    def _reference_cache(self) -> ReferenceCache | None:
        """The precomputed reference of ``args.ref_cache`` (checked now, filled before the first step)."""
        if not self.args.ref_cache:
            return None
        # keyed by the weights' content, as the driver's cache: new weights at the same path rebuild it
        fingerprint = cache_fingerprint(self._model_key(), self.safety.ids, dataset_digest(self.train_views))
        cache = ReferenceCache(self.args.ref_cache, [v.num_answer for v in self.train_views], len(self.safety.ids),
                               fingerprint)
        status = cache.status()
        if status not in ("valid", "missing"):
            raise ValueError(f"ref_cache: {status}")
        return cache

    def _online_reference(self, model) -> OnlineReference:
        return OnlineReference(RowCaller(self.ref_model if self.ref_model is not None else model))

    def _reference(self, model, training: bool):
        if not self.method.needs_reference:  # sft
            return None
        if self.cache is None or not training:
            return self._online_reference(model)
        if not self._cache_ready and self.cache.status() == "missing":
            from ..data.collator import PACTCollator

            fill_reference_cache(self.cache, self._online_reference(model), self.train_views,
                                 PACTCollator(self.collator.pad_id), self.args.per_device_train_batch_size,
                                 self.accelerator.process_index, self.accelerator.num_processes,
                                 self.accelerator.device)
        self._cache_ready = True
        return self.cache

    # -- loss and logs ---------------------------------------------------------------------------------
    def training_step(self, *args, **kwargs):
        # the micro-batch's loss context (the output head gathered under ZeRO-3) stays open through the backward
        with contextlib.ExitStack() as stack:
            self._loss_context = stack
            try:
                return super().training_step(*args, **kwargs)
            finally:
                self._loss_context = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The driver's micro-batch (:func:`pact.training.step.micro_batch_loss`); sums for the logs."""
        training = self.model.training
        batch = PACTBatch(**inputs)
        mode = "train" if training else "eval"
        metrics = self._metrics_pact.setdefault(mode, StepMetrics(self.safety.ids_tensor(), self.accelerator.device))
        with contextlib.ExitStack() as local:
            stack = self._loss_context if self._loss_context is not None else local
            result = stack.enter_context(micro_batch_loss(self.args, RowCaller(model), self.method,
                                                          self._reference(model, training), batch, metrics))
        metrics.add_loss(result.loss, result, batch)
        return (result.loss, None) if return_outputs else result.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics_pact.pop(mode, None)
        if metrics is not None:
            prefix = "eval_" if mode == "eval" else ""
            logs.update({prefix + k: v for k, v in flat_record(metrics.reduce()).items()})
        super().log(logs, start_time)


def flat_record(record: dict) -> dict[str, float]:
    """The driver's step record (:meth:`StepMetrics.reduce`) as flat scalar log keys (None values left out)."""
    out = {k: record[k] for k in ("ce", "kl", "gate_mean")}
    for kind in KINDS:
        part = record[kind]
        for key in ("ce", "kl"):
            if part[key] is not None:
                out[f"{kind}/{key}"] = part[key]
        if part["safety_prob"] is not None:
            out[f"{kind}/safety_prob"] = sum(part["safety_prob"]) / POSITIONS
            out.update({f"{kind}/safety_prob_t{t}": p for t, p in enumerate(part["safety_prob"])})
    return out


def _vocab_size(model, trust_remote_code: bool = False) -> int:
    """Output vocabulary of a model instance, or of a name/path from its config alone (code shipped with the
    model runs only with ``trust_remote_code``, TRL's ``model_init_kwargs`` key)."""
    if isinstance(model, (str, Path)):
        from ..models import load_model_config

        return int(load_model_config(str(model), trust_remote_code=trust_remote_code).get_text_config().vocab_size)
    return vocab_size_of(causal_lm_of(model))
