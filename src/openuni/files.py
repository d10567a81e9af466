"""Writing outputs so that an interruption or a failure never leaves a half-written file under the final name.

Everything is written to a hidden `.<name>.partial` beside the target and renamed over it (atomic on one file
system); a failed write removes its partial file or folder and leaves an existing target as it was. Folders come in
two kinds: one that is wholly ours (a checkpoint, a fetched data folder) is renamed into place as a whole;
one that may hold a user's files too (a `save_pretrained` target) receives our files one by one, and nothing else
in it is touched.

Where the system refuses a write (disk full, quota, read-only file system, permissions) the error is one
`OpenUniError` line naming the file; what was written before stays. `check_writable` says before any work starts
whether an output can be written at all.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import OpenUniError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_failure(path: Path, error: OSError) -> OpenUniError:
    """An error of the system while writing `path`, as one line."""
    if error.errno in DISK_FULL:
        return OpenUniError(f"no space left on the device to write {path}: free some space (or write elsewhere) "
                            "and run again")
    return OpenUniError(f"cannot write {path}: {error.strerror or error}")


def nearest_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, flag: str, folder: bool = False) -> None:
    """Before any work: `path` (a file, or with `folder` a folder to fill) can be created or replaced here. The
    nearest existing folder is probed with a real temporary file, which also catches read-only file systems and
    missing permissions that `os.access` does not see (as root, for one)."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise OpenUniError(f"{flag} {path} exists and is not a folder")
    if not folder and path.is_dir():
        raise OpenUniError(f"{flag} {path} is a folder, not a file")
    existing = nearest_existing(path if folder else path.parent)
    if not existing.is_dir():
        raise OpenUniError(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".openuni-write-check-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OpenUniError(f"{flag} {path}: cannot write in {existing} ({error.strerror or error})") from None


@functools.cache
def default_file_mode() -> int:
    """The mode a new file gets under this process's umask (0644 under 022). Read once: reading the umask means
    setting it, which must not race with threads creating files later."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def as_umask_allows(path: Path) -> None:
    """Give a file we wrote the mode the umask allows: some writers (safetensors) create theirs 0600, while PNGs and
    text files beside them are readable by the group and others."""
    os.chmod(path, default_file_mode())


def partial_path(path: Path) -> Path:
    """The hidden name a file or folder is written under before it is renamed onto `path`."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(partial_path)` then rename onto `path`."""
    path = Path(path)
    partial = partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if partial.is_symlink():  # writers follow links: a link planted under our partial name must not be written through
            partial.unlink()
        write(partial)
        if partial.is_file():
            as_umask_allows(partial)
        os.replace(partial, path)
    except BaseException as error:
        with contextlib.suppress(OSError):  # (a folder under the partial name is not ours to remove)
            partial.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:
            raise write_failure(path, error) from None
        raise


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def write_bytes_atomically(path: Path, data: bytes) -> None:
    write_atomically(path, lambda partial: partial.write_bytes(data))


def save_image_atomically(image, path: Path, text: dict[str, str] | None = None) -> None:
    """A PIL image, in the format its suffix names (PNG when it has none); `text` goes into PNG text chunks (ahead
    of the pixels, so reading it back needs the header only)."""
    image_format = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    options = {}
    if text and image_format == "PNG":
        from PIL.PngImagePlugin import PngInfo

        options["pnginfo"] = PngInfo()
        for key, value in text.items():
            options["pnginfo"].add_text(key, value)
    write_atomically(path, lambda partial: image.save(partial, format=image_format, **options))


# -- folders ------------------------------------------------------------------------------------------------------

def publish_directory(partial: Path, target: Path) -> None:
    """Rename a finished folder of ours into place, replacing an older folder of ours under that name."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)


def write_directory_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """`write(partial_folder)` then the whole folder renamed onto `target`: complete or absent. Only for folders
    that are wholly ours."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target)
    shutil.rmtree(partial, ignore_errors=True)  # a stale partial of an interrupted earlier write
    partial.mkdir()
    try:
        write(partial)
        publish_directory(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def write_files_into(target: Path, write: Callable[[Path], None], is_stale: Callable[[Path], bool] = lambda p: False
                     ) -> list[Path]:
    """`write(partial_folder)`, then each file written moved into `target` (each rename atomic), replacing only
    files of the same names. Files of `target` that `is_stale(relative path)` calls ours, in the folders we wrote,
    and that this write did not produce again are removed (an older save's weight shards); nothing else is touched.
    Returns the files written, relative to `target`."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder")
    partial = partial_path(target)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        write(partial)
        written = sorted(p.relative_to(partial) for p in partial.rglob("*") if p.is_file())
        for relative in written:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            as_umask_allows(partial / relative)
            os.replace(partial / relative, target / relative)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    folders = {relative.parent for relative in written}
    for folder in folders:
        for existing in (target / folder).iterdir():
            relative = existing.relative_to(target)
            if existing.is_file() and relative not in written and is_stale(relative):
                existing.unlink()
    return written
