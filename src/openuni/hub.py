"""The Hub parts of a released variant: which files of which repos make it, fetching them all, and one error naming
every part that is missing when the Hub cannot be reached.

A variant is four parts: the InternVL3 MLLM, the SANA transformer (with its scheduler), the DC-AE and the release
`.pth`. Whether the Hub answers is asked once, with a short timeout, before any part is fetched: an unreachable Hub
(or HF_HUB_OFFLINE=1) means reading the cache only, so the error comes at once instead of after each part's retries.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import OpenUniError, reason
from .variants import RELEASE_REPO, get_variant

MLLM_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken")
TRANSFORMER_FILES = ("transformer/*", "scheduler/*")
VAE_FILES = ("*.json", "*.safetensors")
REACHABILITY_TIMEOUT_S = 5.0
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class HubPart:
    """One part of a variant on the Hub: a whole repo (only `patterns`) or one `filename` of it."""

    name: str  # the load_components argument (and CLI flag) that takes a local copy instead
    what: str
    repo: str
    patterns: tuple[str, ...] = ()
    filename: str | None = None

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    def describe(self) -> str:
        source = f"{self.repo}/{self.filename}" if self.filename else self.repo
        return f"{self.what} ({source}; or {self.flag} PATH)"


def variant_parts(variant: str, stage: str = "finetune") -> dict[str, HubPart]:
    """Every Hub part of `variant` at `stage`, by the name of the argument that overrides it."""
    spec = get_variant(variant)
    return {
        "mllm": HubPart("mllm", "InternVL3 MLLM", spec.mllm_repo, MLLM_FILES),
        "transformer": HubPart("transformer", "SANA transformer", spec.transformer_repo, TRANSFORMER_FILES),
        "vae": HubPart("vae", "DC-AE", spec.vae_repo, VAE_FILES),
        "checkpoint": HubPart("checkpoint", f"{spec.name} checkpoint", RELEASE_REPO,
                              filename=spec.checkpoint_filename(stage)),
    }


def download_command(variant: str, stage: str = "finetune") -> str:
    return f"openuni download {variant}" + ("" if stage == "finetune" else f" --stage {stage}")


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_unreachable() -> str | None:
    """Why the Hub cannot be used now (offline mode, or no answer within a few seconds), or None when it answers."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=REACHABILITY_TIMEOUT_S)
    except Exception as error:  # refused, DNS, timeout, proxy: all mean "no Hub from here"
        return f"{constants.ENDPOINT} cannot be reached: {reason(error, 120)}"
    return None


def fetch_part(part: HubPart, local_files_only: bool) -> Path:
    """The part's folder (a repo snapshot) or file in the Hub cache, downloaded unless `local_files_only`
    (resumable, with progress bars: huggingface_hub's own)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if part.filename:
        return Path(hf_hub_download(part.repo, part.filename, local_files_only=local_files_only))
    return Path(snapshot_download(part.repo, allow_patterns=list(part.patterns), local_files_only=local_files_only))


def fetch_parts(parts: list[HubPart], variant: str, stage: str, local_files_only: bool = False) -> dict[str, Path]:
    """Every part from the Hub or its cache, or one error listing every part that could not be had and the one
    command that fetches them all."""
    if not parts:
        return {}
    why = "local files only" if local_files_only else hub_unreachable()
    found, missing = {}, []
    for part in parts:
        try:
            found[part.name] = fetch_part(part, local_files_only=why is not None)
        except Exception as error:  # not cached, missing repo, auth, disk: all mean "get it another way"
            missing.append((part, error))
    if missing:
        raise unavailable([part for part, _ in missing], f"part(s) of {variant}", why or reason(missing[0][1], 200),
                          download_command(variant, stage))
    return found


def unavailable(parts: list[HubPart], of: str, cause: str, command: str) -> OpenUniError:
    listed = "; ".join(part.describe() for part in parts)
    return OpenUniError(
        f"{len(parts)} {of} are not in the Hugging Face cache and cannot be downloaded ({cause}): {listed}. Fetch "
        f"them all where there is internet with `{command}` (then HF_HUB_OFFLINE=1 works), or pass each as a local "
        "path")


def check_models_cached(models: list[HubPart], of: str) -> None:
    """Models a command will load by Hub id (scorers, judges): where the Hub cannot be reached, one error names every
    one that is not in the cache, before any of them loads. Local paths are not checked here."""
    from huggingface_hub import try_to_load_from_cache

    on_hub = [model for model in models if not Path(model.repo).expanduser().exists() and HUB_ID.match(model.repo)]
    why = hub_unreachable() if on_hub else None
    if why is None:
        return
    missing = [model for model in on_hub if not isinstance(try_to_load_from_cache(model.repo, "config.json"), str)]
    if missing:
        command = " && ".join(f"hf download {model.repo}" for model in missing)
        raise unavailable(missing, of, why, command)
