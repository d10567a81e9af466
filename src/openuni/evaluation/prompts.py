"""Each benchmark's prompts: from a path the user gives, else fetched from its repository at a pinned commit.

GenEval (MIT) and DPG-Bench (Apache-2.0) are fetched at run time; WISE has no license, so it is never bundled and
only fetched on request into the user's cache. Fetched files land under `$OPENUNI_CACHE` (default
`$XDG_CACHE_HOME/openuni` or `~/.cache/openuni`), in a folder named after the commit, written atomically.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OpenUniError
from ..files import write_bytes_atomically, write_directory_atomically

GENEVAL_REPO, GENEVAL_COMMIT = "djghosh13/geneval", "af4902f24d3ca90ebbb446dd9891a59e0f82725f"
DPG_REPO, DPG_COMMIT = "TencentQQGYLab/ELLA", "3c228f1dc6c4d3cad0a47493816151a419f14db3"
WISE_REPO, WISE_COMMIT = "PKU-YuanGroup/WISE", "0c58840e79fe463501a9a8d131964b03e6f5ee7e"
WISE_FILES = ("cultural_common_sense.json", "spatio-temporal_reasoning.json", "natural_science.json")
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class BenchmarkPrompt:
    """One prompt: `key` names its output (GenEval index, DPG item id, WISE prompt id); `record` is the original."""

    key: str
    text: str
    record: dict = field(default_factory=dict, compare=False)


def cache_dir() -> Path:
    if os.environ.get("OPENUNI_CACHE"):
        return Path(os.environ["OPENUNI_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "openuni"


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            return response.read()
    except Exception as error:  # offline, proxy, 404: all mean "give the files yourself"
        raise OpenUniError(f"could not download {url} ({error}); download it where there is internet and pass "
                           "its local path instead (--prompts, --questions)") from None


def fetch_file(repo: str, commit: str, path_in_repo: str) -> Path:
    """One file of a GitHub repository at a commit, cached."""
    target = cache_dir() / repo.replace("/", "--") / commit / path_in_repo
    if not target.is_file():
        write_bytes_atomically(target, _download(f"https://raw.githubusercontent.com/{repo}/{commit}/{path_in_repo}"))
    return target


def fetch_folder(repo: str, commit: str, folder_in_repo: str) -> Path:
    """A folder of a GitHub repository at a commit (from the commit's archive), cached; complete or absent."""
    target = cache_dir() / repo.replace("/", "--") / commit / folder_in_repo
    if target.is_dir():
        return target
    archive = _download(f"https://codeload.github.com/{repo}/tar.gz/{commit}")
    prefix = folder_in_repo.rstrip("/") + "/"

    def unpack(partial: Path) -> None:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar.getmembers():
                inner = member.name.split("/", 1)[-1]  # drop the archive's top folder "<repo>-<commit>/"
                relative = inner[len(prefix):]
                # Plain files directly in the folder only: no links, no subfolders, no hidden or escaping names.
                if member.isfile() and inner.startswith(prefix) and relative and "/" not in relative \
                        and not relative.startswith("."):
                    (partial / relative).write_bytes(tar.extractfile(member).read())

    write_directory_atomically(target, unpack)
    return target


# -- GenEval ------------------------------------------------------------------------------------------------------

def load_geneval(path: str | Path | None = None) -> list[BenchmarkPrompt]:
    """`evaluation_metadata.jsonl` (or a folder holding it); output folder i is line i."""
    source = Path(path) if path else fetch_file(GENEVAL_REPO, GENEVAL_COMMIT, "prompts/evaluation_metadata.jsonl")
    if source.is_dir():
        source = source / "evaluation_metadata.jsonl"
    prompts = []
    for number, line in enumerate(_read_text(source).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise OpenUniError(f"{source} line {number}: not a GenEval metadata object with a 'prompt'") from None
        if not isinstance(text, str):
            raise OpenUniError(f"{source} line {number}: the 'prompt' must be text, got {type(text).__name__}")
        prompts.append(BenchmarkPrompt(f"{len(prompts):05d}", text, record))
    return _non_empty(prompts, source)


# -- DPG-Bench ----------------------------------------------------------------------------------------------------

def load_dpg(path: str | Path | None = None) -> list[BenchmarkPrompt]:
    """A folder of `<item_id>.txt` files (or a folder with `prompts/` in it); the first line is the prompt."""
    folder = Path(path) if path else fetch_folder(DPG_REPO, DPG_COMMIT, "dpg_bench/prompts")
    if not folder.is_dir():
        raise OpenUniError(f"--prompts {folder}: expected the DPG-Bench prompts folder (<item_id>.txt files)")
    if (folder / "prompts").is_dir():
        folder = folder / "prompts"
    prompts = []
    for file in sorted(folder.glob("*.txt"), key=lambda f: (len(f.stem), f.stem)):
        lines = _read_text(file).splitlines()
        prompts.append(BenchmarkPrompt(file.stem, lines[0].strip() if lines else "", {"item_id": file.stem}))
    return _non_empty(prompts, folder)


def dpg_questions_file(path: str | Path | None = None) -> Path:
    """`dpg_bench.csv`: the questions the judge answers (Apache-2.0, fetched when not given)."""
    if path:
        path = Path(path)
        if not path.is_file():
            raise OpenUniError(f"--questions {path}: no such file")
        return path
    return fetch_file(DPG_REPO, DPG_COMMIT, "dpg_bench/dpg_bench.csv")


# -- WISE ---------------------------------------------------------------------------------------------------------

def load_wise(path: str | Path | None = None) -> list[BenchmarkPrompt]:
    """The three WISE JSON files (a folder holding them, or one of them); output `<prompt_id>.png`."""
    if path:
        source = Path(path)
        files = [source] if source.is_file() else [source / name for name in WISE_FILES]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise OpenUniError(f"--prompts {source}: missing {missing[0].name} (expected {', '.join(WISE_FILES)})")
    else:
        files = [fetch_file(WISE_REPO, WISE_COMMIT, f"data/{name}") for name in WISE_FILES]
    prompts = []
    for file in files:
        try:
            records = json.loads(_read_text(file))
            prompts += [BenchmarkPrompt(str(int(r["prompt_id"])), r["Prompt"], r) for r in records]
            if not all(isinstance(p.text, str) for p in prompts):
                raise TypeError("a Prompt that is not text")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise OpenUniError(f"{file}: not a WISE prompt file (a JSON list of objects with prompt_id and Prompt)") \
                from None
    keys = [p.key for p in prompts]
    if len(set(keys)) != len(keys):
        raise OpenUniError(f"{', '.join(f.name for f in files)}: a prompt_id appears twice")
    return _non_empty(prompts, files[0])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise OpenUniError(f"cannot read {path}: {error}") from None


def _non_empty(prompts: list[BenchmarkPrompt], source: Path) -> list[BenchmarkPrompt]:
    if not prompts:
        raise OpenUniError(f"{source}: no prompts found")
    empty = [p.key for p in prompts if not p.text.strip()]
    if empty:
        raise OpenUniError(f"{source}: prompt {empty[0]} is empty")
    return prompts


def task_of(prompt: BenchmarkPrompt) -> str:
    """The task (GenEval's `tag`) or category (WISE's `Category`) a prompt belongs to; DPG-Bench has one list."""
    return str(prompt.record.get("tag") or prompt.record.get("Category") or "all")


def first_of_each_task(prompts: list[BenchmarkPrompt], per_task: int) -> list[BenchmarkPrompt]:
    """A smoke run's prompts: the first `per_task` of each task, in the file's order, keeping their keys (and so
    their output names) as in a full run."""
    taken: dict[str, int] = {}
    kept = []
    for prompt in prompts:
        task = task_of(prompt)
        if taken.get(task, 0) < per_task:
            taken[task] = taken.get(task, 0) + 1
            kept.append(prompt)
    return kept
