"""Resolving and loading OpenUni's components: Hub ids by default, any component overridable by a local path.

A source is a local path when it exists, a Hub repo id ("owner/name") otherwise. Nothing is downloaded for a
component given as a local path; where the Hub cannot be reached, the error names the component, the repo and the
flag that takes a local copy. Each function returns components; `OpenUniPipeline.from_variant` and the trainer
assemble them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel
from transformers import AutoTokenizer

from .checkpoints import load_release, read_state_dict, split_release
from .connector import OpenUniConnector
from .devices import default_dtype_kept, resolve_device, resolve_dtype
from .errors import OpenUniError, reason
from .hub import HUB_ID, MLLM_FILES as HUB_MLLM_FILES, fetch_parts, variant_parts
from .internvl import load_mllm
from .prompting import IMG_CONTEXT, IMG_END, IMG_START
from .quiet import drop_misleading_warnings
from .variants import RELEASE_REPO, SANA_SCHEDULER_CONFIG, Variant, get_variant

logger = logging.getLogger(__name__)
drop_misleading_warnings()

MLLM_FILES = list(HUB_MLLM_FILES)


def _hub_failure(what: str, repo: str, flag: str, error: Exception, include: str = "") -> OpenUniError:
    return OpenUniError(
        f"could not get the {what} {repo!r} from the Hugging Face Hub ({reason(error)}). Download it where there is "
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


# What loaders raise for missing, truncated or damaged files and for configs of another model.
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError)


@default_dtype_kept()
def load_diffusers_model(model_class, path: Path, dtype: torch.dtype, what: str, flag: str):
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OpenUniError(f"{flag} {path}: unreadable config.json ({reason(error)})") from None
    if not isinstance(config, dict):
        raise OpenUniError(f"{flag} {path}: config.json is a JSON {type(config).__name__}, not the {what}'s settings")
    found = config.get("_class_name", model_class.__name__)
    if found != model_class.__name__:
        raise OpenUniError(f"{flag} {path}: cannot load a {what} there (it holds a {found}, not a {model_class.__name__})")
    try:
        return model_class.from_pretrained(path, dtype=dtype)
    except LOAD_ERRORS as error:
        raise OpenUniError(f"{flag} {path}: cannot load a {what} there ({reason(error)})") from None


def load_tokenizer(path: Path):
    # OpenGVLab folders carry `auto_map` (remote code) in config.json: without an explicit False, transformers
    # stops at a "run the custom code? [y/N]" prompt and waits. The tokenizer itself is a stock Qwen2 one.
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as error:
        raise OpenUniError(f"cannot load a tokenizer from {path}: {reason(error)}") from None
    check_tokenizer(tokenizer, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "right"
    return tokenizer


def check_tokenizer(tokenizer, path) -> None:
    unknown = [t for t in (IMG_START, IMG_END, IMG_CONTEXT, "<|im_start|>", "<|im_end|>")
               if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if unknown:
        raise OpenUniError(f"the tokenizer in {path} lacks InternVL's special token {unknown[0]!r}: use InternVL3's")


def load_scheduler(source: str | Path | None, transformer_root: Path) -> DPMSolverMultistepScheduler:
    if source is None:
        found = _component_dir(transformer_root, "scheduler", "scheduler_config.json")
        if found is None and (transformer_root.parent / "scheduler" / "scheduler_config.json").is_file():
            found = transformer_root.parent / "scheduler"
        if found is None:
            logger.info("no scheduler next to %s; using the SANA repos' scheduler config", transformer_root)
            return DPMSolverMultistepScheduler(**SANA_SCHEDULER_CONFIG)
        return scheduler_from(found)
    path = Path(source).expanduser()
    found = path if path.is_file() else _component_dir(path, "scheduler", "scheduler_config.json") if path.is_dir() \
        else None
    if found is None:
        raise OpenUniError(f"--scheduler {source}: no scheduler_config.json there")
    return scheduler_from(found)


def scheduler_from(path: Path) -> DPMSolverMultistepScheduler:
    """A scheduler from its config file, or a folder holding scheduler_config.json."""
    try:
        return DPMSolverMultistepScheduler.from_config(DPMSolverMultistepScheduler.load_config(path))
    except (*LOAD_ERRORS, AttributeError) as error:  # (a config that is JSON but no mapping fails as attributes)
        raise OpenUniError(f"--scheduler {path}: cannot read a scheduler config there ({reason(error)})") from None


def resolve_vae_dir(source: str | Path, local_files_only: bool = False) -> Path:
    """The DC-AE's folder: `source` itself or its `vae/` subfolder, or a Hub repo."""
    vae_dir = resolve_dir(source, "DC-AE", "--vae", ["*.json", "*.safetensors"], local_files_only)
    return _component_dir(vae_dir, "vae", "config.json") or vae_dir


def load_vae(vae_dir: Path, dtype: torch.dtype) -> AutoencoderDC:
    return load_diffusers_model(AutoencoderDC, vae_dir, dtype, "DC-AE", "--vae")


def resolve_mllm_dirs(mllm: str | Path, tokenizer: str | Path | None, local_files_only: bool = False
                      ) -> tuple[Path, Path]:
    """(InternVL3 folder, tokenizer folder): the tokenizer is the MLLM's own unless given."""
    mllm_dir = resolve_dir(mllm, "InternVL3 MLLM", "--mllm", MLLM_FILES, local_files_only)
    tokenizer_dir = (resolve_dir(tokenizer, "tokenizer", "--tokenizer", MLLM_FILES, local_files_only)
                     if tokenizer else mllm_dir)
    return mllm_dir, tokenizer_dir


def load_language_parts(mllm_dir: Path, tokenizer_dir: Path, dtype: torch.dtype, device: torch.device):
    """(tokenizer, InternVL3 model): the understanding half, which chat loads on its own."""
    tokenizer_obj = load_tokenizer(tokenizer_dir)
    return tokenizer_obj, load_mllm(mllm_dir, tokenizer_obj, dtype=dtype, device=device)


@dataclass
class Components:
    """Everything an `OpenUniPipeline` is made of, loaded."""

    tokenizer: object
    mllm: torch.nn.Module
    connector: OpenUniConnector
    transformer: SanaTransformer2DModel
    vae: AutoencoderDC
    scheduler: DPMSolverMultistepScheduler


def load_components(
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
) -> Components:
    """The components of a released variant; every one can come from a local path instead of the Hub.

    `checkpoint=False` starts from scratch (pretraining): a freshly initialised connector of the variant's geometry
    (or of `connector_config`, for models of other sizes) and the SANA transformer as it comes. Every source is
    resolved (and found or downloaded) before any weights are read.
    """
    spec = get_variant(variant)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    from_scratch = checkpoint is False
    sources = resolve_sources(spec, stage, dict(mllm=mllm, transformer=transformer, vae=vae,
                                                checkpoint=None if from_scratch else checkpoint),
                              skip=("checkpoint",) if from_scratch else (), local_files_only=local_files_only)
    mllm_dir = sources["mllm"]
    tokenizer_dir = (resolve_dir(tokenizer, "tokenizer", "--tokenizer", MLLM_FILES, local_files_only)
                     if tokenizer else mllm_dir)
    transformer_root = sources["transformer"]
    transformer_dir = _component_dir(transformer_root, "transformer", "config.json")
    if transformer_dir is None:
        raise OpenUniError(f"--transformer {transformer_root}: no config.json there or in transformer/")
    vae_dir = _component_dir(sources["vae"], "vae", "config.json") or sources["vae"]
    checkpoint_file = sources.get("checkpoint")

    tokenizer_obj, mllm_model = load_language_parts(mllm_dir, tokenizer_dir, dtype, device)
    transformer_model = load_diffusers_model(SanaTransformer2DModel, transformer_dir, dtype, "SANA transformer",
                                             "--transformer")
    vae_model = load_vae(vae_dir, dtype)
    scheduler_obj = load_scheduler(scheduler, transformer_root)
    caption_channels = transformer_model.config.caption_channels
    if from_scratch:
        heads = {} if connector_heads is None else {"num_attention_heads": connector_heads}
        connector = OpenUniConnector.fresh(spec.connector, spec.num_queries, caption_channels,
                                           {**heads, **(connector_config or {})})
    else:
        release_state = read_state_dict(checkpoint_file)
        connector = OpenUniConnector.for_state_dict(split_release(release_state)[0], spec.connector,
                                                    spec.num_queries, connector_heads, spec.name)
    check_components_fit(connector, mllm_model, transformer_model)
    if not from_scratch:
        load_release(connector, transformer_model, checkpoint_file, release_state)

    connector.type(dtype)  # (ModelMixin.to(dtype) warns about fp32 modules even when there are none)
    for module in (connector, transformer_model, vae_model):
        module.to(device)
    return Components(tokenizer_obj, mllm_model, connector, transformer_model, vae_model, scheduler_obj)


def resolve_sources(spec: Variant, stage: str, given: dict, skip: tuple[str, ...] = (), local_files_only: bool = False
                    ) -> dict[str, Path]:
    """The folder (or .pth file) of each part: local paths as they are, the rest fetched from the Hub together, so
    that one error names every part missing when the Hub cannot be reached."""
    parts = variant_parts(spec.name, stage)
    local, hub = {}, []
    for name, source in given.items():
        if name in skip:
            continue
        if source is None:
            hub.append(parts[name])
        elif name != "checkpoint" and not Path(source).expanduser().exists() and HUB_ID.match(str(source)):
            hub.append(replace(parts[name], repo=str(source)))
        elif name == "checkpoint":
            local[name] = resolve_checkpoint(source, spec, stage, local_files_only)
        else:
            local[name] = resolve_dir(source, parts[name].what, parts[name].flag, list(parts[name].patterns),
                                      local_files_only)
    return {**local, **fetch_parts(hub, spec.name, stage, local_files_only)}


def check_components_fit(connector: OpenUniConnector, mllm, transformer) -> None:
    llm_hidden = mllm.config.text_config.hidden_size
    if connector.config.hidden_size != llm_hidden:
        raise OpenUniError(f"the checkpoint's connector is {connector.config.hidden_size} wide, the MLLM's hidden "
                           f"size is {llm_hidden}: checkpoint and --mllm belong to different variants")
    if connector.config.caption_channels != transformer.config.caption_channels:
        raise OpenUniError(f"the checkpoint projects to {connector.config.caption_channels} channels, the SANA "
                           f"transformer takes {transformer.config.caption_channels}: they do not belong together")
