"""Repository layout, manifest and the atomic writer: a failed or interrupted build never touches the old one."""

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List

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


def _side(target: Path, kind: str) -> Path:
    """Where a build keeps its staging directory (kind "staging") or the replaced repository ("previous")."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}"


class BuildRunning(KitError):
    pass


@contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """An exclusive lock on the lock file beside ``target`` (``.NAME.lock``, kept): one build at a time per output;
    BuildRunning if another process holds it."""
    path = target.parent / f".{target.name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise BuildRunning(f"another build (pid {owner}) is writing {target} right now ({path} is locked): wait for "
                           f"it to finish, or build into another --output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def recover(target: Path) -> List[str]:
    """Undo what a killed build left beside ``target`` (call with the build lock held): put back the repository it
    had moved aside if ``target`` is missing, delete staging and side directories. Returns what was done."""
    target = Path(target).resolve()
    done = []
    previous = sorted(target.parent.glob(f".{target.name}.previous-*"), key=lambda p: p.stat().st_mtime)
    if previous and not target.exists():
        os.rename(previous.pop(), target)  # the newest: the repository that was being replaced
        done.append(f"restored {target} from an interrupted build")
    for leftover in previous + list(target.parent.glob(f".{target.name}.staging-*")):
        shutil.rmtree(leftover, ignore_errors=True)
        done.append(f"removed {leftover.name}, left by an interrupted build")
    return done


def restore_interrupted(target: Path) -> List[str]:
    """recover() for --check: only where a killed build left something, and never while a build runs."""
    target = Path(target).resolve()
    if not any(target.parent.glob(f".{target.name}.previous-*")) and not any(
            target.parent.glob(f".{target.name}.staging-*")):
        return []
    try:
        with build_lock(target):
            return recover(target)
    except BuildRunning:
        return []


@contextmanager
def staged_repository(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; on success swap it in, on any failure delete it.

    One build at a time per output (a lock file beside it); leftovers of a killed build are cleaned first. The
    staging directory lives in the same parent so the renames stay on one filesystem. Between the two renames the
    old repository is kept under a side name: put back if the second rename fails, and by the next build or
    --check if the process is killed right there.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(target):
        recover(target)
        _check_replaceable(target)
        staging, previous = _side(target, "staging"), _side(target, "previous")
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
