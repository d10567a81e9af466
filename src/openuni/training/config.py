"""Training configuration: one dataclass, presets with the reference's hyper-parameters, `key=value` overrides.

A config file is YAML with the same keys (`preset: pretrain-b-512` at its top starts from a preset). Overrides
reach nested data sources as `data.0.path=...`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import OpenUniError, reason
from ..files import check_writable
from ..sampling import MAX_SEED, MAX_STEPS
from ..variants import STAGES, VARIANTS


TASKS = ("text2image", "edit", "reconstruct")


@dataclass
class DataSource:
    kind: str = "json"  # json (the reference's layout) | webdataset | latents
    path: str = ""
    ratio: float = 1.0
    image_dir: str | None = None  # json: images folder (default: the index file's folder)
    annotation_dir: str | None = None  # json: caption files folder (default: image_dir)
    caption_key: str = "caption"  # json/webdataset: key of the caption (or edit instruction) in .json annotations
    task: str | None = None  # text2image | edit (instruction pairs) | reconstruct (its images); None: the run's task


@dataclass
class TrainConfig:
    # model: a variant's Hub components, each overridable by a local path
    variant: str = "openuni-b-512"
    mllm: str | None = None
    tokenizer: str | None = None
    transformer: str | None = None
    vae: str | None = None
    scheduler: str | None = None
    init_checkpoint: str | None = None  # release .pth to start from; "none" = fresh connector (pretraining)
    init_stage: str = "pretrain"  # which released weights when init_checkpoint is unset
    connector_heads: int | None = None
    connector: dict | None = None  # geometry of a fresh connector other than the variant's
    # data
    task: str = "text2image"  # the task of data sources that name none (text2image | edit | reconstruct)
    data: list[DataSource] = field(default_factory=list)
    resolution: int = 512
    aspect_buckets: bool = False
    num_workers: int | None = None  # data loader processes per training process; None: as many as the CPUs allow
    caption_dropout: float = 0.1
    max_prompt_tokens: int = 128
    # optimisation
    max_steps: int = 100_000
    batch_size: int = 32  # per device
    grad_accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_ratio: float = 0.01
    warmup_start_factor: float = 1e-5
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # > 0: an EMA of the trained weights, exported as the run's result (training/ema.py)
    train_shift: float = 1.0  # sigma shift of the training schedule; the reference's is unshifted (parity quirk 7)
    mixed_precision: str = "bf16"  # bf16 | fp16 | no
    seed: int = 42
    # what trains
    train_transformer: bool = False  # SANA: frozen in pretraining, trained in finetuning
    lora_rank: int = 0  # > 0: LoRA adapters on SANA's attention (peft) instead of full finetuning
    lora_alpha: float | None = None
    activation_checkpointing: bool = False
    # outputs
    output_dir: str = "openuni-training"
    resume: str | None = "auto"  # auto: the latest complete checkpoint in output_dir; a path; none: start over
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    log_with: str | None = "tensorboard"  # tensorboard | wandb | none
    sample_every: int = 0  # 0: no sample images
    sample_prompts: list[str] = field(default_factory=lambda: ["a photo of a cat", "a red cube on a blue sphere"])
    sample_steps: int = 20
    sample_edits: list[dict] = field(default_factory=list)  # [{image: PATH, instruction: TEXT}] edited in the grid

    def check(self, require_data: bool = True) -> None:
        """The whole config, before anything is loaded: a bad setting must not surface at the first sample step (or
        never), nor as a traceback of the library that reads it. (`require_data=False`: a preset shown as it is.)"""
        if self.variant not in VARIANTS:
            raise OpenUniError(f"unknown variant {self.variant!r}; choose one of: {', '.join(VARIANTS)}")
        if not self.data and require_data:
            raise OpenUniError("no training data: set `data` in the config (see docs/training.md)")
        for i, source in enumerate(self.data):
            if source.kind not in ("json", "webdataset", "latents") or not source.path:
                raise OpenUniError(f"data.{i}: needs kind json|webdataset|latents and a path (data.{i}.path=...), "
                                   f"got {source}")
            if not (math.isfinite(source.ratio) and source.ratio > 0):
                raise OpenUniError(f"data.{i}.ratio must be a positive number, got {source.ratio}")
        self.check_tasks()
        self.check_counts()
        self.check_rates()
        if self.resolution <= 0 or self.resolution % 32:
            raise OpenUniError(f"resolution must be a positive multiple of 32, got {self.resolution}")
        if self.mixed_precision not in ("bf16", "fp16", "no"):
            raise OpenUniError(f"mixed_precision must be bf16, fp16 or no, got {self.mixed_precision!r}")
        if self.init_stage not in STAGES:
            raise OpenUniError(f"init_stage must be one of {', '.join(STAGES)}, got {self.init_stage!r}")
        if str(self.log_with).lower() not in ("tensorboard", "wandb", "none", ""):
            raise OpenUniError(f"log_with must be tensorboard, wandb or none, got {self.log_with!r}")
        bad_prompts = [p for p in self.sample_prompts if not isinstance(p, str) or not p.strip()]
        if bad_prompts:
            raise OpenUniError(f"sample_prompts must be non-empty texts, got {bad_prompts[0]!r}")
        check_writable(self.output_dir, "output_dir", folder=True)
        self.check_cached_latents()

    def check_tasks(self) -> None:
        if self.task not in TASKS:
            raise OpenUniError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for i, source in enumerate(self.data):
            if source.task not in (None, *TASKS):
                raise OpenUniError(f"data.{i}.task must be one of {', '.join(TASKS)}, got {source.task!r}")
        for i, edit in enumerate(self.sample_edits):
            if not (isinstance(edit, dict) and set(edit) == {"image", "instruction"}
                    and all(isinstance(v, str) and v.strip() for v in edit.values())):
                raise OpenUniError(f"sample_edits.{i} must be {{image: PATH, instruction: TEXT}}, both non-empty, "
                                   f"got {edit!r}")

    def check_counts(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every",
                     "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise OpenUniError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("num_workers", "sample_every", "lora_rank"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise OpenUniError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not 1 <= self.sample_steps <= MAX_STEPS:
            raise OpenUniError(f"sample_steps must be between 1 and {MAX_STEPS}, got {self.sample_steps}")
        if self.connector_heads is not None and self.connector_heads < 1:
            raise OpenUniError(f"connector_heads must be at least 1, got {self.connector_heads}")
        if not 0 <= self.seed <= MAX_SEED:
            raise OpenUniError(f"seed must be between 0 and 2^63 - 1, got {self.seed}")

    def check_rates(self) -> None:
        """Every float finite (NaN passes every comparison unnoticed, and inf trains nothing) and in its range."""
        check_range("lr", self.lr, 0, math.inf, open_low=True)
        check_range("train_shift", self.train_shift, 0, math.inf, open_low=True)
        if self.lora_alpha is not None:
            check_range("lora_alpha", self.lora_alpha, 0, math.inf, open_low=True)
        check_range("warmup_start_factor", self.warmup_start_factor, 0, 1, open_low=True)
        check_range("warmup_ratio", self.warmup_ratio, 0, 1)
        check_range("weight_decay", self.weight_decay, 0, math.inf)
        check_range("grad_clip", self.grad_clip, 0, math.inf)
        check_range("ema_decay", self.ema_decay, 0, 1, open_high=True)
        check_range("caption_dropout", self.caption_dropout, 0, 1, open_high=True)
        for i, beta in enumerate(self.betas):
            check_range(f"betas[{i}]", beta, 0, 1, open_high=True)

    def check_cached_latents(self) -> None:
        """Cached latents must be intact and of this run's resolution (a 256 px cache trains silently in a 64 px
        run otherwise); aspect buckets need images."""
        from ..data.latent_cache import check_latent_folder

        latents = [source for source in self.data if source.kind == "latents"]
        if latents and self.aspect_buckets:
            raise OpenUniError("aspect_buckets needs images: cached latents have one fixed size")
        for source in latents:
            if Path(source.path).is_dir():
                check_latent_folder(Path(source.path), self.resolution)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_range(name: str, value: float, low: float, high: float, open_low: bool = False,
                open_high: bool = False) -> None:
    inside = math.isfinite(value) and (value > low if open_low else value >= low) and \
        (value < high if open_high else value <= high)
    if not inside:
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise OpenUniError(f"{name} must be a finite number in {interval}, got {value}")


# Per-GPU batch sizes of the reference configs (wusize/OpenUni configs/datasets/*): 32 at 512 px; at 1024 px 16 in
# pretraining and 8 in finetuning. The reference trains on 16 (B/L-512) or 32 (L-1024) GPUs in pretraining, 8 in
# finetuning: with fewer GPUs raise grad_accum to keep the global batch.
REFERENCE_BATCH = {("pretrain", 512): 32, ("pretrain", 1024): 16, ("finetune", 512): 32, ("finetune", 1024): 8}
# Image-to-image: the reference's reconstruction pretraining (configs/datasets/internvl3_1b_512/
# megalith10m_reconstruct.py) takes 16 per GPU at 512 px, half its text-to-image batch (an edit sample has the 256
# source image tokens in the LLM and an InternViT pass on top). It has no 1024 px or instruction-edit config: we
# halve again at 1024 px and keep 16 / 8 for instruction finetuning.
REFERENCE_EDIT_BATCH = {512: 16, 1024: 8}


def require_packages(wanted: dict[str, bool]) -> None:
    """The optional packages (the `train` extra) that are wanted, checked before anything loads: a missing one
    would otherwise be an ImportError deep inside the run."""
    missing = [name for name, needed in wanted.items() if needed and importlib.util.find_spec(name) is None]
    if missing:
        raise OpenUniError(f"this needs {', '.join(missing)}: pip install -e '.[train]'"
                           + (" wandb" if "wandb" in missing else ""))


def require_training_packages(config: TrainConfig) -> None:
    require_packages({"peft": config.lora_rank > 0,
                      "webdataset": any(source.kind == "webdataset" for source in config.data),
                      "tensorboard": config.log_with == "tensorboard", "wandb": config.log_with == "wandb"})


def _preset(variant: str, stage: str) -> dict:
    resolution = VARIANTS[variant].resolution
    common = dict(variant=variant, resolution=resolution, output_dir=f"runs/{stage}-{variant}",
                  batch_size=REFERENCE_BATCH[stage, resolution], activation_checkpointing=resolution >= 1024)
    if stage == "pretrain":
        # SPEC: lr 1e-4, 100k iterations, SANA frozen; the connector starts fresh.
        return dict(common, init_checkpoint="none", lr=1e-4, max_steps=100_000, train_transformer=False)
    # SPEC: finetune on BLIP3o-60k from the pretrained release, lr 1e-5, 10k iterations, SANA trained.
    return dict(common, init_stage="pretrain", lr=1e-5, max_steps=10_000, train_transformer=True,
                checkpoint_every=1000 if resolution < 1024 else 2000)


def _edit_preset(variant: str, stage: str) -> dict:
    """Image-to-image stages: the text-to-image stage's hyper-parameters (the reference's image2image10m config
    differs from its text2image23m one only in data and batch), with the edit batch and the stage's task."""
    resolution = VARIANTS[variant].resolution
    values = dict(_preset(variant, stage), output_dir=f"runs/{stage}-edit-{variant}",
                  batch_size=REFERENCE_EDIT_BATCH[resolution])
    # pretrain: reconstruction of images (ReconstructDataset), a fresh connector as the reference's config;
    # finetune: instruction-edit pairs, from the released pretrained weights unless init_checkpoint says otherwise.
    return dict(values, task="reconstruct" if stage == "pretrain" else "edit")


PRESETS = {f"{stage}-{name.removeprefix('openuni-')}": _preset(name, stage)
           for stage in ("pretrain", "finetune") for name in VARIANTS}
PRESETS.update({f"{stage}-edit-{name.removeprefix('openuni-')}": _edit_preset(name, stage)
                for stage in ("pretrain", "finetune") for name in VARIANTS})

# The synthetic-shapes benchmark (benchmarks/shapes.py, docs/benchmarks.md): the small model `openuni shapes model
# shapes/model` writes, trained whole (queries, connector, projector and SANA) from scratch on the cached latents of
# `openuni shapes make shapes/data` at 64 px. The variant only names the connector's starting geometry, which
# `connector` replaces. 6000 steps: about 22 minutes on a 2-core Intel Xeon (both cores); held-out pairs are drawn
# right late in training (0.77-0.82 at 4000 steps, 0.94-1.0 at 6000 on the same seeds). Training sigmas shifted
# by 3 (SANA's sampling shift): the prompt decides the image at high noise (held-out 0.742 against 0.155 with the
# reference's uniform sigmas and the old palette; a shift of 6 gave 0.700). The data gives position 3/8 of the images
# (`data.shapes.TRAINING_MIX`); its figures over four training seeds are in docs/benchmarks.md.
PRESETS["shapes-tiny"] = dict(
    variant="openuni-b-512", mllm="shapes/model/mllm", transformer="shapes/model/transformer",
    vae="shapes/model/vae", scheduler="shapes/model/scheduler", init_checkpoint="none",
    connector=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_queries=16),
    data=[dict(kind="latents", path="shapes/latents")], resolution=64, num_workers=0, train_transformer=True,
    lr=1e-3, max_steps=6000, batch_size=16, warmup_ratio=0.03, mixed_precision="no", seed=0, train_shift=3.0,
    output_dir="runs/shapes-tiny", checkpoint_every=1000, log_with="none",
)


def parse_value(text: str):
    """`key=value` values are YAML: 1e-4, true, [a, b], null."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(values: dict, key: str, value) -> None:
    """Set `key` (dotted for nested data sources: data.0.path) in a plain dict of config values."""
    parts = key.split(".")
    target = values
    for part in parts[:-1]:
        if isinstance(target, list):
            index = int(part) if part.isdigit() else -1
            if not 0 <= index <= len(target):
                raise OpenUniError(f"override {key}: no data source {part} (there are {len(target)})")
            if index == len(target):
                target.append({})
            target = target[index]
        else:
            target = target.setdefault(part, [] if part == "data" else {})
    if not isinstance(target, (dict, list)) or (isinstance(target, list) and not parts[-1].isdigit()):
        raise OpenUniError(f"override {key}: {'.'.join(parts[:-1])} has no setting {parts[-1]!r}")
    if isinstance(target, list):
        raise OpenUniError(f"override {key}: set a data source's fields, e.g. {key}.path=...")
    target[parts[-1]] = value


def build_config(source: str, overrides: list[str], require_data: bool = True) -> TrainConfig:
    """A preset name or a YAML file, then the `key=value` overrides, checked."""
    if source in PRESETS:
        values = dict(PRESETS[source])
    else:
        path = Path(source)
        if not path.is_file():
            raise OpenUniError(f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a config file")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, ValueError, yaml.YAMLError) as error:  # (ValueError: not UTF-8 text)
            raise OpenUniError(f"cannot read config {path}: {reason(error)}") from None
        if not isinstance(values, dict):
            raise OpenUniError(f"{path}: expected a mapping of settings")
        preset = values.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                raise OpenUniError(f"{path}: unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
            values = {**PRESETS[preset], **values}
    values["data"] = [dict(d) for d in values.get("data", [])]
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise OpenUniError(f"override {override!r} is not key=value")
        apply_override(values, key.strip(), parse_value(text))
    return from_dict(values, require_data)


def typed_value(name: str, value, annotation):
    """`value` as the field's type says, or an OpenUniError naming the setting. YAML reads `1e-4` (no dot) as a
    string, so numbers given as text are converted."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    if value is None and type(None) in options:
        return None
    wanted = next((o for o in options if o is not type(None)), annotation)
    origin = typing.get_origin(wanted) or wanted
    try:
        if wanted is bool and isinstance(value, bool):
            return value
        if wanted in (int, float) and not isinstance(value, bool) and isinstance(value, (int, float, str)):
            number = float(value)
            if wanted is float:
                return number
            if number.is_integer():
                return int(value) if isinstance(value, int) else int(number)
        if wanted is str and isinstance(value, (str, int, float)):
            return str(value).lower() if isinstance(value, bool) else str(value)  # resume=no reads as False
        if origin is tuple and isinstance(value, (list, tuple)) and len(value) == len(typing.get_args(wanted)):
            return tuple(typed_value(name, v, t) for v, t in zip(value, typing.get_args(wanted)))
        if origin is list and isinstance(value, list):
            return [typed_value(name, v, typing.get_args(wanted)[0]) for v in value]
        if origin is dict and isinstance(value, dict):
            return value
    except ValueError:
        pass
    raise OpenUniError(f"setting {name}: expected {getattr(wanted, '__name__', wanted)}, got {value!r}")


def typed_values(cls, values: dict, prefix: str = "") -> dict:
    hints = typing.get_type_hints(cls)
    return {key: typed_value(prefix + key, value, hints[key]) for key, value in values.items()}


def from_dict(values: dict, require_data: bool = True) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OpenUniError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    source_fields = {f.name for f in dataclasses.fields(DataSource)}
    data = []
    for i, entry in enumerate(values.get("data") or []):
        if not isinstance(entry, dict) or set(entry) - source_fields:
            unknown_keys = sorted(set(entry) - source_fields) if isinstance(entry, dict) else entry
            raise OpenUniError(f"data.{i}: unknown keys {unknown_keys}; known: {sorted(source_fields)}")
        data.append(DataSource(**typed_values(DataSource, entry, f"data.{i}.")))
    values = {**typed_values(TrainConfig, {k: v for k, v in values.items() if k != "data"}), "data": data}
    config = TrainConfig(**values)
    for source in config.data:  # sources that name no task take the run's (the preset's) one
        source.task = source.task or config.task
    config.check(require_data)
    return config
