"""Repository layout, manifest and the atomic writer: a failed or interrupted build never touches the old one."""

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator

from .errors import KitError
from .spec import MANIFEST_FILE


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(root: Path) -> Dict[str, str]:
    """sha256 of every file under root (manifest excluded), by POSIX relative path."""
    return {p.relative_to(root).as_posix(): sha256(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}


def read_manifest(repo: Path) -> dict:
    path = repo / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KitError(f"{repo} has no {MANIFEST_FILE}: not a repository built by build_repo.py") from None
    except json.JSONDecodeError as exc:
        raise KitError(f"{path} is not valid JSON ({exc.msg})") from None


def write_manifest(repo: Path, manifest: dict) -> None:
    (repo / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def _check_replaceable(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise KitError(f"{target} exists and is not a directory; choose another --output")
    if any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise KitError(f"refusing to replace {target}: it is not empty and has no {MANIFEST_FILE}, so it was not "
                       f"built by build_repo.py; choose another --output or move it away")


@contextmanager
def staged_repository(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; on success swap it in, on any failure delete it.

    The staging directory lives in the same parent so the final renames stay on one filesystem. Between the two
    renames the old repository is kept under a side name and put back if the second rename fails.
    """
    target = Path(target).resolve()
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.staging-{os.getpid()}"
    previous = target.parent / f".{target.name}.previous-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if target.exists():
            os.rename(target, previous)
        try:
            os.rename(staging, target)
        except BaseException:
            if previous.exists():
                os.rename(previous, target)
            raise
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
