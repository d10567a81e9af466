"""The training loop on `accelerate.Accelerator`: one loop for one device, DDP, FSDP and DeepSpeed alike.

The engine comes from the accelerate config the run is launched with; nothing here branches on it.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data.collate import stack_latents, tokenize_edit_prompts, tokenize_prompts, training_prompts
from ..data.images import aspect_buckets
from ..data.readers import open_source
from ..data.sources import TEXT_TO_IMAGE
from ..data.stream import SampleStream, StreamLayout, sample_generator
from ..errors import OpenUniError
from ..loading import Components, load_components
from ..model import OpenUni
from ..prompting import MAX_EDIT_SEQUENCE_TOKENS
from . import checkpointing
from .checkpointing import EMA_FILE
from .config import TrainConfig, require_training_packages
from .checkpoint_files import check_checkpoint_files, safe_deepspeed_loading
from .ema import WeightAverage
from .engines import (DDP, DEEPSPEED, FSDP, check_resumable, engine_accelerator, fit_fsdp_wrap_policy,
                      running_engine)
from .model import configure_trainable, merge_lora, training_scheduler
from .optim import build_lr_scheduler, build_optimizer

logger = logging.getLogger(__name__)


def load_training_components(config: TrainConfig, device: torch.device) -> Components:
    """The parts to train, in float32 (accelerate's autocast does the mixed precision)."""
    init = config.init_checkpoint
    checkpoint = False if str(init).lower() == "none" else init
    return load_components(
        config.variant, stage=config.init_stage, mllm=config.mllm, tokenizer=config.tokenizer,
        transformer=config.transformer, vae=config.vae, scheduler=config.scheduler, checkpoint=checkpoint,
        connector_heads=config.connector_heads, connector_config=config.connector, device=device, dtype=torch.float32,
    )


def batch_noise(indices: list[int], latents: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and timestep draws of each sample, fixed by (seed, sample index): independent of batch and rank."""
    noise, u = [], []
    for index, sample_latents in zip(indices, latents):
        noise.append(torch.randn(sample_latents.shape, generator=sample_generator(seed, index, "noise")))
        u.append(torch.rand(1, generator=sample_generator(seed, index, "timestep")))
    return torch.stack(noise).to(latents.device), torch.cat(u).to(latents.device)


class Trainer:
    def __init__(self, config: TrainConfig, accelerator=None):
        from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed

        require_training_packages(config)
        self.config = config
        log_with = None if str(config.log_with).lower() in ("none", "") else config.log_with
        # The engine is the one `accelerate launch` was asked for (DDP, FSDP2, DeepSpeed), on GPUs and CPUs alike.
        self.accelerator = accelerator or engine_accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=config.grad_accum, sync_with_dataloader=False),
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs")),
        )
        self.engine = running_engine(self.accelerator)
        self.refuse_sampling_on_sharded_weights()
        self.refuse_averaging_on_sharded_weights()
        self.output_dir = Path(config.output_dir)
        self.sources = [open_source(s.kind, s.path, s.task or config.task, **self.source_options(s))
                        for s in config.data]
        self.sample_edits = load_sample_edits(config.sample_edits)
        # Everything drawn from the global generators (a fresh connector, LoRA's initial adapters) is a function of
        # the seed, the same on every process; data order, caption dropout and noise have their own per-sample draws.
        set_seed(config.seed)
        parts = load_training_components(config, self.accelerator.device)
        self.tokenizer, self.sampling_scheduler = parts.tokenizer, parts.scheduler
        self.model = OpenUni(parts.mllm, parts.connector, parts.transformer, parts.vae,
                             training_scheduler(parts.scheduler.config, config.train_shift))
        self.lower_frozen_precision()
        configure_trainable(self.model, config.train_transformer, config.lora_rank, config.lora_alpha,
                            config.activation_checkpointing)
        # Checkpoints hold what trains: a frozen SANA leaves the wrapped model (as the MLLM and VAE), and the
        # frozen base weights under LoRA are left out of what is saved.
        if not (config.train_transformer or config.lora_rank):
            self.model.hold_transformer_frozen()
            if self.engine == DEEPSPEED and config.mixed_precision != "no":
                # DeepSpeed runs without autocast and would have cast it with the model it wraps: as it did.
                self.model.transformer.to(torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16)
        try:
            self.optimizer = build_optimizer(self.model, config.lr, config.betas, config.weight_decay)
        except ValueError as error:
            raise OpenUniError(str(error)) from None
        self.lr_scheduler = build_lr_scheduler(self.optimizer, config.max_steps, config.warmup_ratio,
                                               config.warmup_start_factor)
        self.fill_deepspeed_config()
        if self.engine == FSDP:
            fit_fsdp_wrap_policy(self.accelerator.state.fsdp_plugin, self.model)
        self.wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        # The LR scheduler is stepped once per optimisation step by us (accelerate would step a prepared one once
        # per process) and saved in trainer_state.json: registered with accelerate it would be a pickle.
        if self.engine == DEEPSPEED:
            safe_deepspeed_loading(self.wrapped)
        self.accelerator.register_save_state_pre_hook(self.leave_out_frozen_weights)
        self.ema = self.weight_average()
        self.step = 0
        self.skipped_samples = 0
        self.losses: list[float] = []

    def refuse_sampling_on_sharded_weights(self) -> None:
        """Sample grids generate on the main process with the whole model: under FSDP and ZeRO-3 it holds a shard."""
        sampling = self.config.sample_every and (self.config.sample_prompts or self.config.sample_edits)
        plugin = self.accelerator.state.deepspeed_plugin
        zero3 = plugin is not None and plugin.zero_stage == 3
        if sampling and (self.engine == FSDP or zero3):
            raise OpenUniError(f"sample_every needs the whole model on the main process, which "
                               f"{'FSDP' if self.engine == FSDP else 'DeepSpeed ZeRO-3'} shards: set sample_every=0 "
                               f"(and sample from the exported pipeline), or train with configs/accelerate/ddp.yaml or "
                               f"deepspeed_zero2.yaml")

    def refuse_averaging_on_sharded_weights(self) -> None:
        """The weight average is kept whole on every process, beside weights each process holds whole (DDP)."""
        if self.config.ema_decay and self.engine in (FSDP, DEEPSPEED):
            raise OpenUniError(f"ema_decay needs the whole trained weights on every process, which "
                               f"{'FSDP shards' if self.engine == FSDP else 'DeepSpeed holds in its own engine'}: "
                               "set ema_decay=0, or train with configs/accelerate/ddp.yaml")

    def weight_average(self) -> WeightAverage | None:
        """With `ema_decay`, the average of what trains, on the main process (the one that saves and exports)."""
        if not (self.config.ema_decay and self.accelerator.is_main_process):
            return None
        trained = self.accelerator.unwrap_model(self.wrapped)
        return WeightAverage([(name, p) for name, p in trained.named_parameters() if p.requires_grad],
                             self.config.ema_decay)

    def fill_deepspeed_config(self) -> None:
        """What accelerate needs from us under DeepSpeed: we prepare no DataLoader for it to read the batch size
        from, and accumulation and clipping are DeepSpeed's to do there."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is not None:
            plugin.deepspeed_config.update(train_micro_batch_size_per_gpu=self.config.batch_size,
                                           gradient_accumulation_steps=self.config.grad_accum,
                                           gradient_clipping=self.config.grad_clip)

    def lower_frozen_precision(self) -> None:
        """Keep the frozen MLLM and VAE in bf16/fp16 under mixed precision: they never need fp32 master weights."""
        precision = self.config.mixed_precision
        if precision != "no" and self.accelerator.device.type != "cpu":
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            self.model.mllm.to(dtype)
            self.model.vae.to(dtype)

    # -- data -------------------------------------------------------------------------------------------------------

    def sample_stream(self) -> DataLoader:
        config, acc = self.config, self.accelerator
        layout = StreamLayout(config.seed, config.batch_size, config.grad_accum, acc.process_index, acc.num_processes)
        buckets = aspect_buckets(config.resolution) if config.aspect_buckets else None
        stream = SampleStream(self.sources, [s.ratio for s in config.data], layout, self.step, config.resolution, buckets)
        workers = self.data_workers()
        return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=acc.device.type == "cuda",
                          persistent_workers=False, prefetch_factor=4 if workers else None)

    def data_workers(self) -> int:
        """`num_workers`, or by default up to 4 per process that the machine's CPUs can run beside the training
        processes on it (none on a machine of 2 cores or fewer, where they would only take turns)."""
        if self.config.num_workers is not None:
            return self.config.num_workers
        return default_data_workers(available_cpus(), local_processes(self.accelerator))

    @staticmethod
    def source_options(source) -> dict:
        if source.kind == "json":
            return dict(image_dir=source.image_dir, annotation_dir=source.annotation_dir, caption_key=source.caption_key)
        if source.kind == "webdataset":
            return dict(caption_key=source.caption_key)
        return {}

    def micro_batches(self, loader):
        """Micro-batches of `batch_size` samples, each of one task (the stream draws one task per step)."""
        batch = []
        for sample in loader:
            batch.append(sample)
            if len(batch) == self.config.batch_size:
                tasks = {s["task"] for s in batch}
                if len(tasks) > 1:
                    raise RuntimeError(f"a micro-batch mixes the tasks {sorted(tasks)}: the sample stream is broken")
                self.step_task = batch[0]["task"]  # (all micro-batches of a step share it)
                yield batch
                batch = []

    def model_inputs(self, samples: list[dict]) -> dict:
        """The forward's inputs for a micro-batch of one task; the inputs it holds choose the loss (text-to-image
        prompts, or edit prompts with their sources)."""
        config, device = self.config, self.accelerator.device
        indices = [s["index"] for s in samples]
        if samples[0]["task"] == TEXT_TO_IMAGE:
            inputs = self.text_inputs(samples)
        else:
            inputs = self.edit_inputs(samples)
        with torch.no_grad():
            latents = stack_latents(samples, lambda pixels: self.model.pixels_to_latents(pixels.to(device))).to(device)
        noise, u = batch_noise(indices, latents, config.seed)
        return dict(inputs, latents=latents, noise=noise, u=u)

    def text_inputs(self, samples: list[dict]) -> dict:
        config, device = self.config, self.accelerator.device
        prompts = training_prompts([s["caption"] for s in samples], [s["index"] for s in samples], config.seed,
                                   config.caption_dropout)
        input_ids, attention_mask = tokenize_prompts(self.tokenizer, prompts, config.max_prompt_tokens)
        return dict(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))

    def edit_inputs(self, samples: list[dict]) -> dict:
        """Edit prompts (left-padded; no caption dropout, as the reference's edit datasets) and the sources: as
        pixels, or as InternViT features when any sample brings cached ones."""
        device, model = self.accelerator.device, self.model
        input_ids, attention_mask = tokenize_edit_prompts(self.tokenizer, [s["instruction"] for s in samples],
                                                          model.num_image_tokens, self.config.max_prompt_tokens)
        inputs = dict(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                      max_length=MAX_EDIT_SEQUENCE_TOKENS)
        if all("source_pixels" in s for s in samples):
            return dict(inputs, source_pixels=torch.stack([s["source_pixels"] for s in samples]).to(device))
        features = []
        for sample in samples:
            if "source_features" in sample:
                features.append(check_cached_features(sample, model).to(device))
            else:
                with torch.no_grad():
                    features.append(model.semantic_features(sample["source_pixels"][None].to(device))[0])
        return dict(inputs, source_features=torch.stack([f.float() for f in features]))

    # -- checkpoints ------------------------------------------------------------------------------------------------

    def resume(self) -> None:
        acc = self.accelerator
        # One decision, the main process's, checked by every process (a process that cannot read it stops all).
        found = checkpointing.agreed_resume(acc, self.config.resume, self.output_dir, check=self.check_resumable)
        if found is None:
            return
        state = checkpointing.read_trainer_state(found)
        self.warn_about_changed_data_settings(state)
        # What is not in the checkpoint is frozen and comes from the model's own sources, as at the start.
        lean = {DDP: dict(strict=False), DEEPSPEED: dict(load_module_strict=False)}.get(self.engine, {})
        self.accelerator.load_state(str(found), **lean)
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.step, self.skipped_samples = state["step"], state.get("skipped_samples", 0)
        self.losses = state.get("losses", [])
        if self.ema and (found / EMA_FILE).is_file():
            self.ema.load(found, state.get("ema_steps", self.step))
        elif self.ema:
            self.ema.restart()
            logger.warning("%s holds no weight average (it was trained without ema_decay): the average starts "
                           "from the resumed weights", found)
        self.accelerator.print(f"resumed from {found} at step {self.step}")

    def frozen_names(self, model=None) -> set[str]:
        """The frozen parameters' names in the unwrapped model (as accelerate's saved state dicts name them)."""
        model = self.accelerator.unwrap_model(model or self.wrapped)
        return {name for name, p in model.named_parameters() if not p.requires_grad}

    def leave_out_frozen_weights(self, models, weights, output_dir) -> None:
        """accelerate's save pre-hook: the state dicts it is about to write (DDP, one process) lose the frozen
        parameters (LoRA's base weights); DeepSpeed is told the same by `exclude_frozen_parameters`."""
        for model, state in zip(models, weights):
            for name in self.frozen_names(model):
                state.pop(name, None)
                state.pop(f"module.{name}", None)  # (a DDP wrapper's names, should accelerate keep them)

    def checkpoint_keys(self) -> set[str]:
        return set(self.accelerator.unwrap_model(self.wrapped).state_dict()) - self.frozen_names()

    def check_resumable(self, checkpoint: Path) -> None:
        """This engine and process count can resume `checkpoint`, which holds only trusted, whole files and, under
        DDP, exactly the weights this run trains."""
        check_resumable(checkpoint, self.engine, self.accelerator.num_processes)
        if self.accelerator.is_local_main_process:  # once per node: its processes read the same files
            check_checkpoint_files(checkpoint, self.engine)
        if self.engine not in (FSDP, DEEPSPEED):
            from safetensors import safe_open

            with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as file:
                saved = set(file.keys())
            expected = self.checkpoint_keys()
            if saved != expected:
                odd = sorted(saved ^ expected)
                raise OpenUniError(f"{checkpoint / 'model.safetensors'} holds other weights than this run trains "
                                   f"({len(saved)} saved, {len(expected)} trained; e.g. {odd[0]}): resume it with the "
                                   "settings it was written with (train_transformer, lora_rank, connector)")
        if self.ema and (checkpoint / EMA_FILE).is_file():
            self.ema.check(checkpoint)
        if "lr_scheduler" not in checkpointing.read_trainer_state(checkpoint):
            raise OpenUniError(f"{checkpoint / checkpointing.STATE_FILE} has no lr_scheduler state: it was not written "
                               "by this version of openuni")

    def warn_about_changed_data_settings(self, state: dict) -> None:
        """The data position is the step, read with the checkpoint's seed, data and global batch: with other ones
        the resumed run trains on other samples than the interrupted one would have (allowed, but said)."""
        saved, now = state.get("config", {}), self.saved_config()
        changed = [key for key in ("seed", "data", "global_batch", "caption_dropout") if key in saved
                   and saved[key] != now[key]]
        if changed:
            logger.warning("resuming with other %s than the checkpoint's: the run will not continue the same sample "
                           "sequence and loss curve", ", ".join(changed))
        streamed = any(source.kind == "webdataset" for source in self.config.data)
        if streamed and "data_readers" in saved and saved["data_readers"] != now["data_readers"]:
            logger.warning("resuming with %d WebDataset readers (processes x data workers) where the checkpoint had "
                           "%d: the shards are split between the readers, so from here on each reads other shards and "
                           "the run trains on other samples than the interrupted one would have (JSON and cached-latent "
                           "sources are not affected)", now["data_readers"], saved["data_readers"])

    def save_checkpoint(self) -> None:
        acc = self.accelerator
        partial = checkpointing.partial_path(self.output_dir, self.step)
        acc.save_state(str(partial), **(dict(exclude_frozen_parameters=True) if self.engine == DEEPSPEED else {}))
        # Every process writes its part (its RNG state, its ZeRO/FSDP shards): all must be done before the rename.
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = dict(step=self.step, skipped_samples=self.skipped_samples, losses=self.losses,
                         config=self.saved_config(), lr_scheduler=self.lr_scheduler.state_dict())
            if self.ema:
                self.ema.save(partial)
                state["ema_steps"] = self.ema.steps
            checkpointing.write_trainer_state(partial, state)
            checkpointing.publish(self.output_dir, self.step, self.config.keep_checkpoints)
        acc.wait_for_everyone()

    def saved_config(self) -> dict:
        config = self.config.to_dict()
        config["global_batch"] = self.config.batch_size * self.config.grad_accum * self.accelerator.num_processes
        config["data_readers"] = self.accelerator.num_processes * max(1, self.data_workers())
        return config

    def export(self, directory: Path) -> None:
        """The trained weights as a loadable pipeline (`pipeline/`) and as a release-style `openuni.pth`."""
        from ..checkpoints import save_release
        from ..pipeline import OpenUniPipeline

        # Every process takes part: under FSDP/ZeRO this gathers the shards.
        state = self.accelerator.get_state_dict(self.wrapped)
        if not self.accelerator.is_main_process:
            return
        if self.ema:  # the average in place of the last weights
            state = {**state, **self.ema.weights()}
        config, trained = self.config, self.accelerator.unwrap_model(self.wrapped)
        connector = type(trained.connector).from_config(trained.connector.config)
        connector.load_state_dict({k.removeprefix("connector."): v for k, v in state.items() if k.startswith("connector.")})
        transformer_state = {k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")}
        if not transformer_state:  # held frozen outside the trained model: as it was loaded
            transformer_state = trained.transformer.state_dict()
        if config.lora_rank:
            transformer_state = merge_lora(transformer_state, (config.lora_alpha or config.lora_rank) / config.lora_rank)
        transformer = type(trained.transformer).from_config(trained.transformer.config)
        transformer.load_state_dict(transformer_state)
        trained_transformer = config.train_transformer or config.lora_rank > 0
        save_release(connector, transformer if trained_transformer else None, directory / "openuni.pth")
        OpenUniPipeline(self.tokenizer, trained.mllm, connector, transformer, trained.vae,
                        self.sampling_scheduler).save_pretrained(directory / "pipeline")

    # -- the loop ---------------------------------------------------------------------------------------------------

    def train_step(self, micro_batches) -> float:
        """One optimisation step over `grad_accum` micro-batches; returns the mean loss of the global batch."""
        acc, total = self.accelerator, torch.zeros((), device=self.accelerator.device)
        for _ in range(self.config.grad_accum):
            samples = next(micro_batches)
            self.skipped_samples += sum(s["skipped"] for s in samples)
            with acc.accumulate(self.wrapped):
                with acc.autocast():  # the forward pass only: torch advises against backward under autocast
                    loss = self.wrapped(**self.model_inputs(samples)).mean()
                acc.backward(loss)
                if acc.sync_gradients and self.config.grad_clip > 0:
                    acc.clip_grad_norm_(self.wrapped.parameters(), self.config.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            total += loss.detach().float()
        self.lr_scheduler.step()
        if self.ema:
            self.ema.update()
        return acc.reduce(total / self.config.grad_accum, reduction="mean").item()

    def run(self) -> list[float]:
        from tqdm.auto import tqdm

        config, acc = self.config, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        if acc.log_with:
            acc.init_trackers("openuni", config={k: v for k, v in config.to_dict().items()
                                                 if isinstance(v, (int, float, str, bool))})
        micro_batches = self.micro_batches(self.sample_stream())
        images_per_step = config.batch_size * config.grad_accum * acc.num_processes
        bar = tqdm(total=config.max_steps, initial=self.step, disable=not acc.is_local_main_process, desc="training")
        started, first_step = time.perf_counter(), self.step
        while self.step < config.max_steps:
            loss = self.train_step(micro_batches)
            self.step += 1
            self.losses.append(loss)
            images_per_second = images_per_step * (self.step - first_step) / (time.perf_counter() - started)
            lr = self.lr_scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_second:.1f}", skipped=self.skipped_samples)
            if self.step % config.log_every == 0:
                acc.log({"loss": loss, f"loss_{self.step_task}": loss, "lr": lr,  # loss_text2image / loss_image2image
                         "images_per_second": images_per_second, "skipped_samples": self.skipped_samples},
                        step=self.step)
            if config.sample_every and self.step % config.sample_every == 0:
                self.write_samples()
            if self.step % config.checkpoint_every == 0 or self.step == config.max_steps:
                self.save_checkpoint()
        bar.close()
        self.export(self.output_dir / "final")
        # Every process leaves together: a process tearing its process group down while the main one still exports
        # could abort in gloo's threads at exit.
        acc.wait_for_everyone()
        acc.end_training()
        if self.skipped_samples:
            logger.warning("%d unusable samples were skipped during training", self.skipped_samples)
        return self.losses

    @torch.no_grad()
    def write_samples(self) -> None:
        """A grid of the sample prompts at this step, saved and sent to TensorBoard (main process). It generates
        with the live model in eval mode, then restores every module's mode: training goes on exactly as before."""
        import PIL.Image

        from ..files import save_image_atomically
        from ..images import image_grid
        from ..pipeline import OpenUniPipeline

        if not self.accelerator.is_main_process or not (self.config.sample_prompts or self.sample_edits):
            return
        model = self.accelerator.unwrap_model(self.wrapped)
        scheduler = type(self.sampling_scheduler).from_config(self.sampling_scheduler.config)
        pipe = OpenUniPipeline.from_model(model, self.tokenizer, scheduler)
        pipe.set_progress_bar_config(disable=True)
        size = self.config.resolution
        options = dict(height=size, width=size, num_inference_steps=self.config.sample_steps, seed=0, output_type="pil")
        with evaluating(model.mllm, model.connector, model.transformer, model.vae), self.accelerator.autocast():
            images = pipe(self.config.sample_prompts, **options).images if self.config.sample_prompts else []
            if self.sample_edits:  # each fixed source beside its edit, two to a row
                sources = [source for source, _ in self.sample_edits]
                edited = pipe.edit(sources, [instruction for _, instruction in self.sample_edits], **options).images
                images += [image for source, result in zip(sources, edited)
                           for image in (source.resize((size, size), PIL.Image.BICUBIC), result)]
        grid = image_grid(images, columns=2 if self.sample_edits else None)
        save_image_atomically(grid, self.output_dir / "samples" / f"step-{self.step:08d}.png")
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                import numpy as np

                tracker.writer.add_images("samples", np.stack([np.asarray(i) for i in images]), self.step, dataformats="NHWC")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on every platform)
        return os.cpu_count() or 1


def local_processes(accelerator) -> int:
    """Training processes on this machine (torchrun/accelerate export LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def default_data_workers(cpus: int, processes: int) -> int:
    if cpus <= 2:
        return 0
    return max(0, min(4, cpus // max(1, processes) - 1))  # a core of each share is its training process's


def load_sample_edits(sample_edits: list[dict]) -> list[tuple]:
    """The fixed sources of the sample grid's edits, read (and checked) before the model loads."""
    from ..images import load_image

    return [(load_image(edit["image"]), edit["instruction"]) for edit in sample_edits]


def check_cached_features(sample: dict, model: OpenUni) -> torch.Tensor:
    """Cached InternViT features must be this MLLM's: as many tokens per image, as wide as its LLM."""
    features = sample["source_features"]
    expected = (model.num_image_tokens, model.language_model.config.hidden_size)
    if tuple(features.shape) != expected:
        raise OpenUniError(f"cached source features {sample['key']} are {tuple(features.shape)}, this MLLM takes "
                           f"{expected}: extract them again with this run's --mllm")
    return features


@contextmanager
def evaluating(*modules: torch.nn.Module):
    """Eval mode inside, each submodule's own train/eval mode restored after (the LLM trains in train mode for
    activation checkpointing while the VAE stays in eval mode; requires_grad is never touched)."""
    modes = [(module, module.training) for root in modules for module in root.modules()]
    for root in modules:
        root.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
