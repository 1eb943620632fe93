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
import warnings
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from trl import SFTTrainer

from ..data.collator import PACTBatch
from ..data.views import ViewBuilder
from ..distributed import destroy_at_exit
from ..methods import build_method
from ..fingerprint import tokenization_digest, weights_digest
from ..models import ModelLoadError
from ..model_rows import causal_lm_of, patch_row_forward
from ..reference import OnlineReference, ReferenceCache
from ..training.checkpoint import verify_checkpoint
from ..training.safe_load import weights_only_loading
from ..training.data import StepSampler, dataset_digest
from ..training.deepspeed_shm import unlink_shm_buffer
from ..training.metrics import StepMetrics
from ..training.setup import fill_missing_cache, load_safety_tokens, model_vocab_size, open_reference_cache
from ..training.step import micro_batch_loss, step_loss_weight, token_statistics
from .config import PACTTrainerConfig
from .bridge import RowCaller, StepOrderSampler, flat_record, memory_weights_key
from .data import VIEW_COLUMNS, ViewCollator, build_views, completion_tail_warning, format_warnings, views_dataset
from .identity import IDENTITY_FILE, check_trainer_resume, intact_checkpoint, trainer_identity


class PACTTrainer(SFTTrainer):
    """Fine-tune with PACT where you fine-tune with TRL's ``SFTTrainer``.

    Args:
        model: a causal LM (instance or name/path ``SFTTrainer`` loads), or a
            peft model.
        args: a :class:`PACTTrainerConfig` (its ``safety_tokens`` is required).
        train_dataset, eval_dataset: ``datasets.Dataset`` in TRL's
            conversational ``messages``, ``prompt``/``completion`` or
            conversational prompt-completion format (see :mod:`pact.trl.data`);
            an optional ``harmful`` column (booleans, 0/1 or "true"/"false")
            splits the logged metrics. ``messages``: every assistant turn is
            an answer (what ``SFTTrainer`` trains with ``assistant_only_loss``).
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
    ``ce``, ``kl``, ``gate_mean``, ``SFTTrainer``'s ``entropy``, ``mean_token_accuracy``
    (over the answer rows) and ``num_tokens`` (the full views' tokens trained so far), and per kind
    (``benign``, ``harmful``)
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
    # compute_loss weighs each micro-batch's mean loss by its share of the step (``loss_normalization``)
    loss_is_scaled_for_ga = True

    def __init__(self, model, args: PACTTrainerConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, ref_model=None, peft_config=None, **kwargs):
        if not isinstance(args, PACTTrainerConfig):
            raise TypeError("args: PACTTrainer needs a PACTTrainerConfig(output_dir=..., safety_tokens=...), got "
                            f"{type(args).__name__}")
        for name in ("data_collator", "formatting_func", "compute_loss_func"):
            if kwargs.get(name) is not None:
                raise ValueError(f"{name}: PACTTrainer builds both views of each sample itself; pass a dataset in "
                                 "a TRL format instead")
        for name in ("compute_metrics", "preprocess_logits_for_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(f"{name}: PACTTrainer's evaluation computes the loss from the answer rows (fused: "
                                 "no [rows, V] logits) and logs eval_loss, eval_ce, eval_kl, eval_gate_mean, the "
                                 "safety-token probabilities, eval_entropy and eval_mean_token_accuracy; it passes "
                                 f"no logits to {name}: pass {name}=None")
        for name, data in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            _check_map_style(name, data)
        trust = bool((getattr(args, "model_init_kwargs", None) or {}).get("trust_remote_code", False))
        vocab = model_vocab_size(model, trust_remote_code=trust)
        self.safety = load_safety_tokens(args.safety_tokens, vocab,  # SafetyTokensError before any work
                                         getattr(processing_class, "tokenizer", processing_class))
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
        if ref_model is not None and model_vocab_size(ref_model, trust_remote_code=trust) != vocab:
            raise ValueError(f"ref_model has {model_vocab_size(ref_model, trust_remote_code=trust)} output tokens, "
                             f"the model {vocab}")
        self.collator = ViewCollator()
        self.train_views = None
        self.dropped = {}
        self._metrics_pact = {}
        self._token_sums = {}  # per mode: entropy sum, top-1 hits, rows, policy tokens (float64)
        self._loss_context = None
        self._cache_ready = False
        super().__init__(model, args=args, data_collator=self.collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, peft_config=peft_config,
                         **kwargs)
        unlink_shm_buffer(self.args.process_index, self.args.world_size)  # DeepSpeed's comm is up by now
        destroy_at_exit()  # a process group left up can abort the interpreter's shutdown
        self.model_accepts_loss_kwargs = False  # the model gets no num_items_in_batch: compute_loss uses it
        self._check_trainable(args)
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
        """Both views of every sample (replaces TRL's tokenisation; called by ``SFTTrainer.__init__`` and
        ``evaluate``); a dataset of views already (``trainer.eval_dataset``) is returned as it is."""
        _check_map_style(f"the {dataset_name} dataset", dataset)
        if set(VIEW_COLUMNS) <= set(dataset.column_names):
            return dataset
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.collator.pad_id = int(pad or 0)
        builder = ViewBuilder(tokenizer, args.max_length or 10**9, args.post_bos)  # ChatTemplateError here
        tail = completion_tail_warning(dataset, tokenizer, dataset_name)
        for message in format_warnings(dataset, dataset_name, bool(args.assistant_only_loss)) + [tail] * bool(tail):
            warnings.warn(message, stacklevel=3)
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
        keep_last = not self.args.dataloader_drop_last
        if steps.steps_per_epoch == 0 and not keep_last:
            factors = "per_device_train_batch_size x gradient_accumulation_steps x processes"
            raise ValueError(steps.too_few_samples(factors) + " and dataloader_drop_last=True drops them: set "
                             "dataloader_drop_last=False")
        return StepOrderSampler(steps, keep_last)

    def _check_trainable(self, args) -> None:
        """Before any step: something trains, and the fused loss can read the output head."""
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError("model: no parameter requires a gradient, so training would change nothing "
                             "(pact.models.load_model returns a frozen model); pass peft_config= (e.g. "
                             "peft.LoraConfig) to train an adapter, or call model.requires_grad_(True) for full "
                             "fine-tuning with ref_model=")
        head = causal_lm_of(self.model).get_output_embeddings()
        if args.fused_linear and type(head) is not torch.nn.Linear:
            raise ValueError(f"fused_linear=True reads the output head as a plain nn.Linear; this model's head is a "
                             f"{type(head).__name__} (peft's modules_to_save=['lm_head'] or an adapter on the head "
                             "trains a copy the fused loss would leave out): set fused_linear=False in "
                             "PACTTrainerConfig, or leave the head out of the peft config")

    # -- identity and resume ---------------------------------------------------------------------------
    def _policy_module(self):
        """The policy model without its DeepSpeed/DDP wrapper."""
        return getattr(self.model, "module", self.model)

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
                adapter={name: c.to_dict() for name, c in (getattr(self._policy_module(), "peft_config", None)
                                                             or {}).items()} or None,
                world_size=self.accelerator.num_processes)
        return self._identity

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest intact checkpoint, and a resume
        with other inputs or keys than the checkpoint's run is refused (see :mod:`pact.trl.identity`)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = str(intact_checkpoint(self.args.output_dir))
        missing = [name for name in (IDENTITY_FILE, "manifest.json")
                   if resume_from_checkpoint and not (Path(resume_from_checkpoint) / name).is_file()]
        if missing and not self.args.resume_changes:
            raise ValueError(f"resume_from_checkpoint={resume_from_checkpoint} holds no {' and no '.join(missing)}: "
                             "it was not written by a PACTTrainer, or was cut short, so its inputs and files cannot "
                             "be checked. Pass resume_from_checkpoint=True to take the newest intact checkpoint, or "
                             "set resume_changes=True to resume from it unchecked")
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
        # keyed by the reference's weights in memory: a merged adapter or weights changed in place rebuild it
        autocast = "autocast-bfloat16" if self.args.bf16 else "autocast-float16" if self.args.fp16 else "none"
        return open_reference_cache(self.args.ref_cache, self.train_views, self.safety,
                                    self._reference_weights_key(), compute_dtype=autocast)

    def _reference_weights_key(self) -> str:
        """The reference's weights in memory by content (:func:`pact.trl.bridge.memory_weights_key`)."""
        return memory_weights_key(self.ref_model if self.ref_model is not None else self.model)

    def _online_reference(self, model) -> OnlineReference:
        return OnlineReference(RowCaller(self.ref_model if self.ref_model is not None else model))

    def _reference(self, model, training: bool):
        if not self.method.needs_reference:  # sft
            return None
        if self.cache is None or not training:
            return self._online_reference(model)
        if not self._cache_ready:
            from ..data.collator import PACTCollator

            fill_missing_cache(self.cache, self._online_reference(model), self.train_views,
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
        metrics = self._metrics_pact.setdefault(mode, StepMetrics(self.safety.ids_tensor(), self.accelerator.device,
                                                                  self.args.loss_normalization))
        sums = self._token_sums.setdefault(mode, torch.zeros(4, dtype=torch.float64, device=self.accelerator.device))

        def add_token_statistics(batch, policy):  # SFTTrainer's entropy and mean_token_accuracy, num_tokens
            sums[:3] += token_statistics(policy, batch.labels)
            sums[3] += batch.full_mask.sum()  # the tokens the policy read

        with contextlib.ExitStack() as local:
            stack = self._loss_context if self._loss_context is not None else local
            result = stack.enter_context(micro_batch_loss(self.args, RowCaller(model), self.method,
                                                          self._reference(model, training), batch, metrics,
                                                          add_token_statistics))
        metrics.add_loss(result.loss, result, batch)
        loss = result.loss
        if training and num_items_in_batch is not None:  # a training step: the micro-batch's share of the step
            loss = loss * self._step_share(batch.labels.numel(), num_items_in_batch)
        return (loss, None) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples: list, device) -> torch.Tensor:
        """The labelled rows of the step's micro-batches (every row of a PACT batch is labelled), summed over
        the processes when ``average_tokens_across_devices`` (TRL's default), as ``SFTTrainer`` counts them."""
        rows = torch.tensor(sum(int(b["labels"].numel()) for b in batch_samples), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            rows = self.accelerator.gather(rows).sum()
        return rows

    def _step_share(self, rows: int, step_rows) -> float:
        """Factor of a micro-batch's mean loss in the backward (see :func:`pact.training.step.step_loss_weight`);
        the data-parallel gradient average over the processes is undone when the rows were summed over them."""
        accumulation = self.current_gradient_accumulation_steps
        weight = step_loss_weight(self.args.loss_normalization, rows, int(step_rows), accumulation)
        spread = self.args.loss_normalization == "tokens" and self.args.average_tokens_across_devices
        return weight * (self.accelerator.num_processes if spread else 1)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics_pact.pop(mode, None)
        prefix = "eval_" if mode == "eval" else ""
        if metrics is not None:
            logs.update({prefix + k: v for k, v in flat_record(metrics.reduce()).items()})
        sums = self._token_sums.pop(mode, None)
        if sums is not None:
            entropy, top1, rows, tokens = self.accelerator.reduce(sums, reduction="sum").tolist()
            if mode == "train":
                self._total_train_tokens += int(tokens)
            logs.update({prefix + "entropy": entropy / max(rows, 1), prefix + "mean_token_accuracy": top1 / max(rows, 1),
                         prefix + "num_tokens": float(self._total_train_tokens)})
        super().log(logs, start_time)


def _check_map_style(name: str, dataset) -> None:
    """A streaming ``IterableDataset`` is refused: the views, the step order and the reference cache need
    every sample up front."""
    from datasets import IterableDataset, IterableDatasetDict

    if isinstance(dataset, (IterableDataset, IterableDatasetDict)) or (
            isinstance(dataset, dict) and any(isinstance(d, IterableDataset) for d in dataset.values())):
        raise ValueError(f"{name}: a streaming IterableDataset; PACTTrainer builds both views of every sample and "
                         "its step order before training: load it with streaming=False (or "
                         "datasets.Dataset.from_generator)")

