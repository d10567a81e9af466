"""Text-to-image generation and image editing with OpenUni, as a diffusers pipeline.

`OpenUniPipeline.__call__` reads as the algorithm: check inputs, encode the prompts (one MLLM pass for the
conditional and unconditional branches), prepare the noise, the denoising loop with classifier-free guidance,
decode. Editing (`image=` or `edit()`) differs only in the encoding: the source image's InternViT features fill the
`<IMG_CONTEXT>` positions of both branches (SPEC "Image-to-image"); noise, loop and decoding are shared.
Components are registered diffusers-style, so `save_pretrained`/`from_pretrained` round-trip a directory
(`model_index.json` + one folder per component).

Seeds: with `seed=s`, image k of a prompt starts from `randn` of one latent drawn from a CPU generator seeded
`s + k`, whatever the batch and whatever else is in it; image 0 is therefore exactly the reference's noise. The
batch changes the image only by float rounding (README "Reproducibility").
"""

from __future__ import annotations

import numbers
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from .checks import integer, real, text_list
from .connector import OpenUniConnector
from .devices import default_dtype_kept
from .errors import OpenUniError, reason
from .files import write_files_into
from .images import load_image, size_like
from .loading import LOAD_ERRORS, check_tokenizer, load_components
from .model import OpenUni, to_uint8
from .prompting import (EDIT_UNCONDITIONAL, IMG_CONTEXT, IMG_END, IMG_START, edit_prompt, generation_prompt,
                        unconditional_prompt)
from .sampling import MAX_SEED, SamplingOptions

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# SANA was trained at one latent size; far beyond it the DiT makes no sense and memory grows with the square.
MAX_SIDE_FACTOR = 4


@dataclass
class OpenUniPipelineOutput(BaseOutput):
    """`images`: PIL images, a uint8 array [N, H, W, 3], a float tensor [N, 3, H, W] in [-1, 1], or latents."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class OpenUniPipeline(DiffusionPipeline):
    def __init__(self, tokenizer, mllm, connector: OpenUniConnector, transformer, vae, scheduler):
        """Registers the components as they are: constructing a pipeline changes nothing it is given (the trainer
        samples through one built on its live modules). Loading for inference freezes them (`for_inference`)."""
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, mllm=mllm, connector=connector, transformer=transformer, vae=vae, scheduler=scheduler
        )
        self._offload_device: torch.device | None = None
        self._model = OpenUni(mllm, connector, transformer, vae)
        # Opt-in fast sampling used when a call names none (the server and demo set it from their flags).
        self.default_guidance_interval: tuple[float, float] | None = None
        self.default_step_cache: float | None = None

    # -- construction -----------------------------------------------------------------------------------------

    @classmethod
    def from_variant(cls, variant: str = "openuni-b-512", **kwargs) -> "OpenUniPipeline":
        """A released variant from the Hub or local files, ready for inference; the options are those of
        `openuni.loading.load_components` (local paths per part, checkpoint, device, dtype, ...)."""
        return cls(**vars(load_components(variant, **kwargs))).for_inference()

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "OpenUniPipeline":
        """A directory written by `save_pretrained` (diffusers' layout), ready for inference. A damaged or incomplete
        one is an `OpenUniError` naming it."""
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        kwargs.setdefault("use_safetensors", True)  # never fall back to pickled .bin weights
        try:
            with default_dtype_kept():  # (transformers and diffusers can leave it at the load's dtype on failure)
                pipe = super().from_pretrained(*args, **kwargs)
        except (*LOAD_ERRORS, AttributeError) as error:  # (a JSON file that is no mapping fails as attributes)
            raise OpenUniError(f"cannot load a saved OpenUni pipeline from {source}: {reason(error)}") from None
        missing = [name for name in ("tokenizer", "mllm", "connector", "transformer", "vae", "scheduler")
                   if getattr(pipe, name, None) is None]
        if missing:
            raise OpenUniError(f"cannot load a saved OpenUni pipeline from {source}: it has no {missing[0]}")
        check_tokenizer(pipe.tokenizer, Path(source) / "tokenizer")
        return pipe.for_inference()

    @classmethod
    def from_model(cls, model: OpenUni, tokenizer, scheduler) -> "OpenUniPipeline":
        """A pipeline generating with `model` itself (the trainer's live one): its modules' trainability and modes
        are left as they are."""
        pipe = cls(tokenizer, model.mllm, model.connector, model.transformer, model.vae, scheduler)
        pipe._model = model
        return pipe

    def for_inference(self) -> "OpenUniPipeline":
        """Freeze every component and put it in eval mode. (This also keeps CPU results identical however the
        pipeline was built: oneDNN picks another convolution kernel for weights that require grad.)"""
        for module in (self.mllm, self.connector, self.transformer, self.vae):
            module.requires_grad_(False).eval()
        return self

    @property
    def model(self) -> OpenUni:
        """The computation over the registered components (rebuilt only if one of them was replaced)."""
        model = self._model
        if (model.mllm, model.connector, model.transformer, model.vae) != (self.mllm, self.connector,
                                                                          self.transformer, self.vae):
            self._model = OpenUni(self.mllm, self.connector, self.transformer, self.vae, model.train_scheduler)
        return self._model

    # -- memory: model CPU offload ----------------------------------------------------------------------------------

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str = "cuda") -> None:
        """Keep every component on the CPU and move each to `device` only for its stage: MLLM + connector, then
        the DiT, then the VAE. Peak memory is the largest stage's, at the cost of a host-device copy per stage."""
        device = torch.device(device)
        if gpu_id is not None:
            device = torch.device(device.type, gpu_id)
        self._offload_device = device
        for module in (self.mllm, self.connector, self.transformer, self.vae):
            module.to("cpu")

    @property
    def _execution_device(self) -> torch.device:
        return self._offload_device if self._offload_device is not None else self.device

    @contextmanager
    def stage(self, *modules: torch.nn.Module):
        """With offload on, hold `modules` on the execution device for the duration of one stage."""
        if self._offload_device is None:
            yield
            return
        for module in modules:
            module.to(self._offload_device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")

    @property
    def vae_scale_factor(self) -> int:
        return self.model.vae_scale_factor

    @property
    def default_resolution(self) -> int:
        return self.transformer.config.sample_size * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        return max(32, self.vae_scale_factor)

    @property
    def max_side(self) -> int:
        """The largest height or width this model generates: 4x its resolution (2048 px for the 512 variants)."""
        return MAX_SIDE_FACTOR * self.default_resolution

    @property
    def vision_patch_size(self) -> int:
        """The vision encoder's patch (14 px for InternVL3, 16 for the tiny model): the smallest source side."""
        patch = self.mllm.config.vision_config.patch_size
        return patch[0] if isinstance(patch, (list, tuple)) else patch

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt (template, and for edits the source's image tokens, included) the MLLM reads: its
        position window less the learned queries that follow the prompt."""
        window = self.mllm.config.text_config.max_position_embeddings
        return window - self.connector.config.num_queries

    # -- steps of __call__ -------------------------------------------------------------------------------------

    def check_inputs(self, prompts: list[str], negative_prompts: list[str] | None, height: int, width: int,
                     num_inference_steps: int, num_images_per_prompt: int, output_type: str,
                     guidance_scale: float = 4.5, seed=None, latents: torch.Tensor | None = None) -> None:
        if not prompts:
            raise OpenUniError("no prompt given")
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt.strip():
                raise OpenUniError(f"every prompt (or edit instruction) must be non-empty text, got {prompt!r}")
        if negative_prompts is not None and len(negative_prompts) not in (1, len(prompts)):
            raise OpenUniError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts")
        multiple = self.size_multiple
        for name, value in (("height", height), ("width", width)):
            value = integer(value, name)
            if value <= 0 or value % multiple:
                raise OpenUniError(f"{name} must be a positive multiple of {multiple}, got {value}")
            if value > self.max_side:
                raise OpenUniError(f"{name} {value} is over this model's limit of {self.max_side} pixels "
                                   f"({MAX_SIDE_FACTOR}x its {self.default_resolution} px resolution)")
        steps_limit = self.scheduler.config.num_train_timesteps
        integer(num_inference_steps, "num_inference_steps", low=1, high=steps_limit)
        num_images = integer(num_images_per_prompt, "num_images_per_prompt", low=1)
        real(guidance_scale, "guidance_scale")
        for value in seed if isinstance(seed, (list, tuple)) else [] if seed is None else [seed]:
            integer(value, "seed", low=0, high=MAX_SEED - (num_images - 1))
        if output_type not in OUTPUT_TYPES:
            raise OpenUniError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if latents is not None:
            self.check_latents(latents, len(prompts) * num_images, integer(height, "height"),
                               integer(width, "width"))

    def check_latents(self, latents, num_images: int, height: int, width: int) -> None:
        """Given initial latents must be the noise of exactly these images: finite, of the request's size."""
        if not isinstance(latents, torch.Tensor):
            raise OpenUniError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
        expected = (num_images, self.transformer.config.in_channels, height // self.vae_scale_factor,
                    width // self.vae_scale_factor)
        if latents.shape[0] != num_images:
            raise OpenUniError(f"latents hold {latents.shape[0]} images, the request makes {num_images}")
        if tuple(latents.shape) != expected:
            raise OpenUniError(f"latents of shape {tuple(latents.shape)} do not fit {height}x{width} images, which "
                               f"need {expected}: pass the height and width the latents were made for")
        if not torch.isfinite(latents).all():
            raise OpenUniError("the given latents hold NaN or infinite values")

    @staticmethod
    def check_finite(values: torch.Tensor, what: str) -> None:
        """NaN/inf would come out as black images: say so instead of returning them."""
        finite = torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
        if not finite.all():
            raise OpenUniError(
                f"the {what} of {int((~finite).sum())} of {len(finite)} images are NaN or infinite: the model's "
                "weights hold NaN/inf (a damaged or diverged checkpoint) or the guidance scale is far too large"
            )

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Full prompt strings -> right-padded ids and mask, special tokens parsed, nothing added."""
        tokens = self.tokenizer(texts, add_special_tokens=False, padding="longest", return_tensors="pt")
        tokens = tokens.to(self._execution_device)
        return tokens.input_ids, tokens.attention_mask

    def check_prompt_lengths(self, attention_mask: torch.Tensor, shown: list[str]) -> None:
        """A prompt beyond the MLLM's window is refused before any model runs (`shown`: the user's text of the
        first rows, for the message)."""
        lengths = attention_mask.sum(dim=1)
        if int(lengths.max()) > self.max_prompt_tokens:
            row = int(lengths.argmax())
            text = shown[row] if row < len(shown) else "the unconditional prompt"
            raise OpenUniError(
                f"a prompt is {int(lengths[row])} tokens long with its template, over the {self.max_prompt_tokens} "
                f"the MLLM reads (its {self.mllm.config.text_config.max_position_embeddings}-token window less "
                f"{self.connector.config.num_queries} queries); shorten it: {text[:60]!r}..."
            )

    def encode_prompt(
        self, prompts: list[str], negative_prompts: list[str] | None = None, do_classifier_free_guidance: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Caption embeddings for each prompt and for the unconditional branch, in one MLLM forward.

        Returns `(cond [P, Q, C], uncond [1 or P, Q, C] or None)`.
        """
        texts = [generation_prompt(p) for p in prompts]
        if do_classifier_free_guidance:
            negatives = negative_prompts if negative_prompts is not None else [None]
            texts += [unconditional_prompt(n) for n in negatives]
        input_ids, attention_mask = self.tokenize(texts)
        self.check_prompt_lengths(attention_mask, prompts + list(negative_prompts or []))
        with self.stage(self.mllm, self.connector):
            embeds = self.model.encode_text(input_ids, attention_mask)
        cond, uncond = embeds[: len(prompts)], embeds[len(prompts) :]
        return cond, (uncond if do_classifier_free_guidance else None)

    def prepare_latents(
        self, num_prompts: int, num_images_per_prompt: int, height: int, width: int,
        seed: int | list[int] | None, generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """Initial noise [P * N, C, h, w] in float32, image k of prompt p after image k-1 of the same prompt."""
        shape = (
            self.transformer.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        total = num_prompts * num_images_per_prompt
        if seed is not None:
            seeds = [int(seed)] * num_prompts if isinstance(seed, numbers.Integral) else [int(s) for s in seed]
            if len(seeds) != num_prompts:
                raise OpenUniError(f"{len(seeds)} seeds for {num_prompts} prompts")
            generator = [
                torch.Generator("cpu").manual_seed(s + k) for s in seeds for k in range(num_images_per_prompt)
            ]
        if isinstance(generator, list):
            if len(generator) != total:
                raise OpenUniError(f"{len(generator)} generators for {total} images")
            noise = torch.cat([torch.randn((1, *shape), generator=g, device=g.device) for g in generator])
        else:
            device = generator.device if generator is not None else torch.device("cpu")
            noise = torch.randn((total, *shape), generator=generator, device=device)
        return noise.to(self._execution_device, torch.float32)

    def decode(self, latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return latents
        with self.stage(self.vae):
            pixels = self.model.latents_to_pixels(latents)
        self.check_finite(pixels, "decoded pixels")
        if output_type == "pt":
            return pixels.float()
        images = to_uint8(pixels).cpu().numpy()
        if output_type == "np":
            return images
        return [PIL.Image.fromarray(image) for image in images]

    # -- editing: the steps that differ from text-to-image ----------------------------------------------------

    def prepare_source_images(self, image, num_prompts: int) -> list[PIL.Image.Image]:
        """One upright RGB source per instruction (a single image serves every instruction)."""
        sources = list(image) if isinstance(image, (list, tuple)) else [image]
        if not sources:
            raise OpenUniError("no source image given")
        if len(sources) == 1:
            sources = sources * num_prompts
        if len(sources) != num_prompts:
            raise OpenUniError(f"{len(sources)} source images for {num_prompts} instructions: give one image per "
                               "instruction, or one image for all")
        return [load_image(source, min_side=self.vision_patch_size) for source in sources]

    def edit_output_size(self, source_sizes: list[tuple[int, int]], height: int | None,
                         width: int | None) -> tuple[int, int]:
        """Explicit sizes win; otherwise the sources' aspect ratio (their (width, height)) at the default resolution."""
        if height is not None and width is not None:
            return height, width
        sizes = {size_like(size, self.default_resolution, self.size_multiple) for size in source_sizes}
        if len(sizes) > 1:
            raise OpenUniError(f"the source images call for different output sizes {sorted(sizes)}: pass height and "
                               "width, or edit them in separate calls")
        default_height, default_width = sizes.pop()
        return (default_height if height is None else height), (default_width if width is None else width)

    def source_pixels(self, sources: list[PIL.Image.Image], height: int, width: int) -> torch.Tensor:
        """Sources resized to the output size (as the reference's script does), as [N, 3, H, W] in [-1, 1]."""
        resized = [s if s.size == (width, height) else s.resize((width, height), PIL.Image.Resampling.BICUBIC)
                   for s in sources]
        pixels = torch.from_numpy(np.stack([np.asarray(s) for s in resized])).permute(0, 3, 1, 2)
        return (2 * (pixels.to(self._execution_device, torch.float32) / 255) - 1)

    def encode_edit_prompt(
        self, instructions: list[str], source_pixels: torch.Tensor, negative_prompts: list[str] | None = None,
        do_classifier_free_guidance: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Caption embeddings for each (source, instruction) and its unconditional twin (same source, "Keep the
        image as it is." by default), in one MLLM forward. Returns `(cond [P, Q, C], uncond [P, Q, C] or None)`."""
        for text in instructions + (negative_prompts or []):
            if any(marker in text for marker in (IMG_START, IMG_END, IMG_CONTEXT)):
                raise OpenUniError(f"edit instructions cannot contain the image markers {IMG_START}, {IMG_END} or "
                                   f"{IMG_CONTEXT} (the source image's place is set by the pipeline): {text!r}")
        with self.stage(self.mllm, self.connector):
            model = self.model
            image_embeds = model.semantic_features(source_pixels)
            num_tokens = image_embeds.shape[1]
            texts = [edit_prompt(i, num_tokens) for i in instructions]
            if do_classifier_free_guidance:
                negatives = negative_prompts if negative_prompts is not None else [EDIT_UNCONDITIONAL]
                negatives = negatives * len(instructions) if len(negatives) == 1 else negatives
                texts += [edit_prompt(n, num_tokens) for n in negatives]
                image_embeds = torch.cat([image_embeds, image_embeds])
            input_ids, attention_mask = self.tokenize(texts)
            self.check_prompt_lengths(attention_mask, instructions + list(negative_prompts or []))
            embeds = model.condition(model.embed_with_images(input_ids, image_embeds), attention_mask)
        cond, uncond = embeds[: len(instructions)], embeds[len(instructions) :]
        return cond, (uncond if do_classifier_free_guidance else None)

    # -- shared by both -----------------------------------------------------------------------------------------

    @staticmethod
    def guidance_batch(cond: torch.Tensor, uncond: torch.Tensor | None, num_images_per_prompt: int) -> torch.Tensor:
        """Caption embeddings of the DiT batch: [uncond, cond] as SanaPipeline orders it in the reference."""
        cond = cond.repeat_interleave(num_images_per_prompt, dim=0)
        if uncond is None:
            return cond
        uncond = uncond.expand(cond.shape[0] // num_images_per_prompt, -1, -1)
        return torch.cat([uncond.repeat_interleave(num_images_per_prompt, dim=0), cond])

    def denoise(self, latents: torch.Tensor, caption_embeds: torch.Tensor, num_inference_steps: int,
                guidance_scale: float, callback_on_step_end=None, guidance_interval: tuple[float, float] | None = None,
                step_cache: float | None = None) -> torch.Tensor:
        """DPM-Solver++ on flow sigmas with classifier-free guidance; the DiT sees the integer timestep (quirk 6).

        `guidance_interval` (start, end): guidance only on steps i with start <= i / steps < end, the conditional
        branch alone elsewhere. `step_cache`: cache-dit's residual threshold for skipping DiT blocks between steps.
        `callback_on_step_end(pipe, step, timestep, {"latents", "noise_pred"})` may return {"latents": ...}.
        """
        from .acceleration import use_step_cache

        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        use_step_cache(self.transformer, step_cache, num_inference_steps)
        with self.stage(self.transformer):
            return self._denoising_loop(latents, caption_embeds, guidance_scale, callback_on_step_end,
                                        guidance_interval)

    def _denoising_loop(self, latents, caption_embeds, guidance_scale, callback_on_step_end, guidance_interval=None):
        do_cfg = guidance_scale > 1.0
        model = self.model
        caption_embeds = caption_embeds.to(self.transformer.dtype)
        cond_embeds = caption_embeds[caption_embeds.shape[0] // 2:] if do_cfg else caption_embeds
        timesteps = self.scheduler.timesteps
        start, end = guidance_interval or (0.0, 1.0)
        for step, t in enumerate(self.progress_bar(timesteps)):
            guided = do_cfg and start <= step / len(timesteps) < end
            model_input = torch.cat([latents, latents]) if guided else latents
            timestep = t.expand(model_input.shape[0]).to(torch.float32)
            velocity = model.predict_velocity(model_input, timestep, caption_embeds if guided else cond_embeds).float()
            if guided:
                velocity_uncond, velocity_cond = velocity.chunk(2)
                velocity = velocity_uncond + guidance_scale * (velocity_cond - velocity_uncond)
            latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                changed = callback_on_step_end(self, step, t, {"latents": latents, "noise_pred": velocity}) or {}
                latents = changed.get("latents", latents)
        return latents

    # -- the algorithm ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.5,
        num_images_per_prompt: int = 1,
        seed: int | list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        image=None,
        callback_on_step_end=None,
        guidance_interval: tuple[float, float] | None = None,
        step_cache: float | None = None,
    ) -> OpenUniPipelineOutput | tuple:
        """Text-to-image; with `image` (a path or PIL image, or one per prompt) the prompts are edit instructions
        and `negative_prompt` replaces "Keep the image as it is." in the unconditional branch. `guidance_interval`
        and `step_cache` are the opt-in fast sampling of `openuni.sampling` (None: the pipeline's defaults, off
        unless set)."""
        prompts = text_list(prompt, "prompt")
        negative_prompts = None if negative_prompt is None else text_list(negative_prompt, "negative_prompt")
        sources = self.prepare_source_images(image, len(prompts)) if image is not None else None
        if sources is not None:
            height, width = self.edit_output_size([source.size for source in sources], height, width)
        height = self.default_resolution if height is None else height
        width = self.default_resolution if width is None else width
        self.check_inputs(prompts, negative_prompts, height, width, num_inference_steps, num_images_per_prompt,
                          output_type, guidance_scale, seed, latents)
        height, width, num_inference_steps, num_images_per_prompt = (
            int(height), int(width), int(num_inference_steps), int(num_images_per_prompt))
        guidance_scale = float(guidance_scale)
        do_cfg = guidance_scale > 1.0
        fast = SamplingOptions(
            guidance_interval=self.default_guidance_interval if guidance_interval is None else guidance_interval,
            step_cache=self.default_step_cache if step_cache is None else step_cache,
        ).check(names={"guidance_interval": "guidance_interval", "step_cache": "step_cache"})

        # 1. Conditioning: once per prompt, shared by all of its images.
        if sources is None:
            cond, uncond = self.encode_prompt(prompts, negative_prompts, do_cfg)
        else:
            pixels = self.source_pixels(sources, height, width)
            cond, uncond = self.encode_edit_prompt(prompts, pixels, negative_prompts, do_cfg)
        caption_embeds = self.guidance_batch(cond, uncond, num_images_per_prompt)

        # 2. Noise.
        if latents is None:
            latents = self.prepare_latents(len(prompts), num_images_per_prompt, height, width, seed, generator)
        latents = latents.to(self._execution_device, torch.float32)

        # 3. Denoising.
        latents = self.denoise(latents, caption_embeds, num_inference_steps, guidance_scale, callback_on_step_end,
                               fast.guidance_interval, fast.step_cache)
        self.check_finite(latents, "denoised latents")

        # 4. Decode.
        images = self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        return OpenUniPipelineOutput(images=images) if return_dict else (images,)

    def edit(self, image, instruction: str | list[str], **kwargs) -> OpenUniPipelineOutput | tuple:
        """Edit `image` (or one image per instruction) following `instruction`; the rest as `__call__`."""
        return self(prompt=instruction, image=image, **kwargs)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """Diffusers' layout in safetensors. Only our own files are written or replaced in `save_directory` (each
        atomically, so a failure leaves no torn file): whatever else the folder holds stays as it is."""
        target = Path(save_directory)
        if target.exists() and not target.is_dir():
            raise OpenUniError(f"cannot save the pipeline to {target}: it exists and is not a folder")
        write_files_into(target, lambda partial: super(OpenUniPipeline, self).save_pretrained(
            partial, safe_serialization=True, **kwargs), is_stale=is_weight_file)


WEIGHT_FILE = re.compile(r"^(diffusion_pytorch_model|model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")


def is_weight_file(relative: Path) -> bool:
    """A component's weight file or shard index, as diffusers and transformers name them: an older save's shards
    that a new save does not write again must go, or a loader would mix them in (diffusers cleans them too)."""
    return len(relative.parts) == 2 and WEIGHT_FILE.match(relative.name) is not None


load_pipeline = OpenUniPipeline.from_variant
