"""Assembling an `OpenUniPipeline` from a released variant: Hub ids by default, any component overridable locally.

A source is a local path when it exists, a Hub repo id ("owner/name") otherwise. Nothing is downloaded for a
component given as a local path; where the Hub cannot be reached, the error names the component, the repo and the
flag that takes a local copy.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel
from transformers import AutoTokenizer

from .checkpoints import connector_geometry, load_release, read_state_dict, split_release
from .connector import OpenUniConnector
from .errors import OpenUniError
from .internvl import load_mllm
from .pipeline import OpenUniPipeline
from .prompting import IMG_CONTEXT, IMG_END, IMG_START
from .variants import RELEASE_REPO, SANA_SCHEDULER_CONFIG, Variant, get_variant

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
MLLM_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on accelerators (as the reference runs), fp32 on CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _hub_failure(what: str, repo: str, flag: str, error: Exception, include: str = "") -> OpenUniError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return OpenUniError(
        f"could not get the {what} {repo!r} from the Hugging Face Hub ({reason}). Download it where there is "
        f"internet (`hf download {repo}{include}`) and pass {flag} PATH, or fill the Hub cache and set HF_HUB_OFFLINE=1"
    )


def resolve_dir(source: str | Path, what: str, flag: str, allow_patterns: list[str], local_files_only: bool) -> Path:
    """A local directory as it is, or a Hub repo downloaded (only `allow_patterns`) into the Hub cache."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise OpenUniError(f"{flag} {source}: expected a directory with the {what}, got a file")
        return path
    if not HUB_ID.match(str(source)):
        raise OpenUniError(f"{flag} {source}: no such directory (and not a Hub repo id like 'owner/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), allow_patterns=allow_patterns, local_files_only=local_files_only))
    except Exception as error:  # offline, missing repo, auth, disk: all mean "provide it locally"
        include = "".join(f" --include '{p}'" for p in allow_patterns if "/" in p)
        raise _hub_failure(what, str(source), flag, error, include) from None


def resolve_checkpoint(source: str | Path | None, variant: Variant, stage: str, local_files_only: bool) -> Path:
    if source is not None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise OpenUniError(f"--checkpoint {source}: no such file")
        return path
    from huggingface_hub import hf_hub_download

    filename = variant.checkpoint_filename(stage)
    try:
        return Path(hf_hub_download(RELEASE_REPO, filename, local_files_only=local_files_only))
    except Exception as error:
        raise _hub_failure(f"{variant.name} checkpoint", RELEASE_REPO, "--checkpoint", error, f" {filename}") from None


def _component_dir(root: Path, subfolder: str, marker: str) -> Path | None:
    """`root` itself when it holds the component, else `root/subfolder` when that does."""
    for candidate in (root, root / subfolder):
        if (candidate / marker).is_file():
            return candidate
    return None


def load_diffusers_model(model_class, path: Path, dtype: torch.dtype, what: str, flag: str):
    try:
        found = json.loads((path / "config.json").read_text()).get("_class_name", model_class.__name__)
    except (OSError, ValueError) as error:
        raise OpenUniError(f"{flag} {path}: unreadable config.json ({error})") from None
    if found != model_class.__name__:
        raise OpenUniError(f"{flag} {path}: cannot load a {what} there (it holds a {found}, not a {model_class.__name__})")
    try:
        return model_class.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError, TypeError) as error:  # missing or damaged files, a config of another model
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OpenUniError(f"{flag} {path}: cannot load a {what} there ({reason})") from None


def load_tokenizer(path: Path):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:
        raise OpenUniError(f"cannot load a tokenizer from {path}: {error}") from None
    unknown = [t for t in (IMG_START, IMG_END, IMG_CONTEXT, "<|im_start|>", "<|im_end|>")
               if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if unknown:
        raise OpenUniError(f"the tokenizer in {path} lacks InternVL's special token {unknown[0]!r}: use InternVL3's")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "right"
    return tokenizer


def load_scheduler(source: str | Path | None, transformer_root: Path) -> DPMSolverMultistepScheduler:
    if source is None:
        found = _component_dir(transformer_root, "scheduler", "scheduler_config.json")
        if found is None and (transformer_root.parent / "scheduler" / "scheduler_config.json").is_file():
            found = transformer_root.parent / "scheduler"
        if found is None:
            logger.info("no scheduler next to %s; using the SANA repos' scheduler config", transformer_root)
            return DPMSolverMultistepScheduler(**SANA_SCHEDULER_CONFIG)
        return DPMSolverMultistepScheduler.from_pretrained(found)
    path = Path(source).expanduser()
    if path.is_file():
        return DPMSolverMultistepScheduler.from_config(DPMSolverMultistepScheduler.load_config(path))
    found = _component_dir(path, "scheduler", "scheduler_config.json") if path.is_dir() else None
    if found is None:
        raise OpenUniError(f"--scheduler {source}: no scheduler_config.json there")
    return DPMSolverMultistepScheduler.from_pretrained(found)


def build_connector(variant: Variant, connector_state: dict, connector_heads: int | None) -> OpenUniConnector:
    """The connector's size: the variant's when the checkpoint has its shapes, else the shapes plus a head count."""
    found = connector_geometry(connector_state)
    geometry = variant.connector
    expected = dict(
        hidden_size=geometry.hidden_size,
        intermediate_size=geometry.intermediate_size,
        num_hidden_layers=geometry.num_hidden_layers,
        num_queries=variant.num_queries,
    )
    if connector_heads is None:
        differing = {k: (v, found[k]) for k, v in expected.items() if found[k] != v}
        if differing:
            key, (want, got) = next(iter(differing.items()))
            raise OpenUniError(
                f"the checkpoint's connector has {key}={got}, {variant.name} has {want}: pass the right --variant, "
                "or --connector-heads N to load a checkpoint of another size"
            )
        connector_heads = geometry.num_attention_heads
    if found["hidden_size"] % connector_heads:
        raise OpenUniError(f"--connector-heads {connector_heads} does not divide the hidden size {found['hidden_size']}")
    return OpenUniConnector(**found, num_attention_heads=connector_heads)


def fresh_connector(
    variant: Variant, overrides: dict | None, connector_heads: int | None, caption_channels: int
) -> OpenUniConnector:
    """An untrained connector: the variant's geometry unless `overrides` says otherwise; queries ~ N(0, 1/sqrt(d))."""
    geometry = variant.connector
    config = dict(
        hidden_size=geometry.hidden_size,
        intermediate_size=geometry.intermediate_size,
        num_hidden_layers=geometry.num_hidden_layers,
        num_attention_heads=connector_heads or geometry.num_attention_heads,
        num_queries=variant.num_queries,
    )
    unknown = set(overrides or {}) - set(config)
    if unknown:
        raise OpenUniError(f"unknown connector setting {sorted(unknown)[0]!r}; known: {', '.join(config)}")
    config.update(overrides or {})
    if config["hidden_size"] % config["num_attention_heads"]:
        raise OpenUniError(f"{config['num_attention_heads']} connector heads do not divide the hidden size "
                           f"{config['hidden_size']}")
    return OpenUniConnector(**config, caption_channels=caption_channels)


def load_pipeline(
    variant: str = "openuni-b-512",
    *,
    stage: str = "finetune",
    mllm: str | Path | None = None,
    tokenizer: str | Path | None = None,
    transformer: str | Path | None = None,
    vae: str | Path | None = None,
    scheduler: str | Path | None = None,
    checkpoint: str | Path | None | bool = None,
    connector_heads: int | None = None,
    connector_config: dict | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    local_files_only: bool = False,
) -> OpenUniPipeline:
    """Build the pipeline of a released variant; every component can come from a local path instead of the Hub.

    `checkpoint=False` starts from scratch (pretraining): a freshly initialised connector of the variant's geometry
    (or of `connector_config`, for models of other sizes) and the SANA transformer as it comes.
    """
    spec = get_variant(variant)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)

    mllm_dir = resolve_dir(mllm or spec.mllm_repo, "InternVL3 MLLM", "--mllm", MLLM_FILES, local_files_only)
    tokenizer_dir = resolve_dir(tokenizer, "tokenizer", "--tokenizer", MLLM_FILES, local_files_only) if tokenizer else mllm_dir
    transformer_root = resolve_dir(
        transformer or spec.transformer_repo, "SANA transformer", "--transformer",
        ["transformer/*", "scheduler/*"], local_files_only,
    )
    transformer_dir = _component_dir(transformer_root, "transformer", "config.json")
    if transformer_dir is None:
        raise OpenUniError(f"--transformer {transformer_root}: no config.json there or in transformer/")
    vae_dir = resolve_dir(vae or spec.vae_repo, "DC-AE", "--vae", ["*.json", "*.safetensors"], local_files_only)
    vae_dir = _component_dir(vae_dir, "vae", "config.json") or vae_dir
    from_scratch = checkpoint is False
    checkpoint_file = None if from_scratch else resolve_checkpoint(checkpoint, spec, stage, local_files_only)

    tokenizer_obj = load_tokenizer(tokenizer_dir)
    mllm_model = load_mllm(mllm_dir, tokenizer_obj, dtype=dtype, device=device)
    transformer_model = load_diffusers_model(SanaTransformer2DModel, transformer_dir, dtype, "SANA transformer",
                                             "--transformer")
    vae_model = load_diffusers_model(AutoencoderDC, vae_dir, dtype, "DC-AE", "--vae")
    scheduler_obj = load_scheduler(scheduler, transformer_root)

    if from_scratch:
        connector = fresh_connector(spec, connector_config, connector_heads, transformer_model.config.caption_channels)
    else:
        release_state = read_state_dict(checkpoint_file)
        connector_state, _, _ = split_release(release_state)
        connector = build_connector(spec, connector_state, connector_heads)
    llm_hidden = mllm_model.config.text_config.hidden_size
    if connector.config.hidden_size != llm_hidden:
        raise OpenUniError(f"the checkpoint's connector is {connector.config.hidden_size} wide, the MLLM's hidden "
                           f"size is {llm_hidden}: checkpoint and --mllm belong to different variants")
    if connector.config.caption_channels != transformer_model.config.caption_channels:
        raise OpenUniError(f"the checkpoint projects to {connector.config.caption_channels} channels, the SANA "
                           f"transformer takes {transformer_model.config.caption_channels}: they do not belong together")
    if not from_scratch:
        load_release(connector, transformer_model, checkpoint_file, release_state)

    connector.type(dtype)  # (ModelMixin.to(dtype) warns about fp32 modules even when there are none)
    for module in (connector, transformer_model, vae_model):
        module.to(device)
    return OpenUniPipeline(tokenizer_obj, mllm_model, connector, transformer_model, vae_model, scheduler_obj)
