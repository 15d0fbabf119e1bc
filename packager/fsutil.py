"""File helpers: sha256 manifests and atomic writes (nothing half-written is ever left behind)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from packager.errors import ConfigError, IntegrityError

MANIFEST_NAME = "packager-manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_tree(root: Path, exclude: tuple[str, ...] = (MANIFEST_NAME,)) -> dict[str, str]:
    """sha256 of every regular file under root, keyed by its POSIX path relative to root."""
    root = Path(root)
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in exclude and "__pycache__" not in p.parts:
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def tree_digest(files: dict[str, str]) -> str:
    """One digest for a whole {relative path: sha256} mapping."""
    return sha256_bytes(json.dumps(files, sort_keys=True).encode())


def dir_size_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def write_manifest(root: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    files = hash_tree(root)
    manifest = {"files": files, "digest": tree_digest(files), **(extra or {})}
    atomic_write_text(Path(root) / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(root: Path) -> dict[str, Any] | None:
    p = Path(root) / MANIFEST_NAME
    if not p.exists():
        return None
    return json.loads(p.read_text())


def is_inside_relpath(rel: str) -> bool:
    """True for a relative POSIX path that stays inside its directory: not empty, not absolute, no '..'.

    Lexical on purpose (no resolve()): a model directory may hold symlinks (a Hugging Face cache snapshot
    does), and what must be refused is a recorded name that points outside, e.g. '../secret'."""
    p = PurePosixPath(rel)
    return bool(rel) and "\x00" not in rel and not p.is_absolute() and ".." not in p.parts and bool(p.parts)


def verify_files(root: Path, expected: dict[str, str]) -> None:
    """Raise IntegrityError naming every file that is missing, extra-changed or altered, and every recorded
    name that points outside root (a tampered manifest must not make packager read or copy other files)."""
    root = Path(root)
    problems: list[str] = []
    for rel, digest in sorted(expected.items()):
        if not is_inside_relpath(rel):
            problems.append(f"path outside the directory: {rel!r}")
            continue
        p = root / rel
        if not p.is_file():
            problems.append(f"missing: {rel}")
        elif sha256_file(p) != digest:
            problems.append(f"sha256 mismatch: {rel}")
    if problems:
        raise IntegrityError(
            f"Model files under {root} do not match their recorded hashes ({len(problems)} problem(s)): "
            + "; ".join(problems[:10])
            + (". The artifact was modified or corrupted after it was recorded; "
               "rebuild it or restore the original files.")
        )


def verify_manifest_if_present(root: Path) -> dict[str, Any] | None:
    """The directory's manifest with every file it lists checked against its sha256, or None without one."""
    manifest = read_manifest(root)
    if manifest is None:
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise IntegrityError(f"{Path(root) / MANIFEST_NAME} has no 'files' map; rewrite it or remove it.")
    verify_files(root, files)
    return manifest


def verify_manifest(root: Path) -> dict[str, Any]:
    manifest = verify_manifest_if_present(root)
    if manifest is None:
        raise IntegrityError(f"{root} has no {MANIFEST_NAME}; it was not produced by packager or was damaged.")
    return manifest


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str))


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; on success it replaces `final` in one rename.

    On any exception (including KeyboardInterrupt) the temporary directory is removed and
    `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def iter_jsonl(text: str, where: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every JSON line of `text`; blank lines and `#` comments are skipped.
    A line that is not JSON raises ConfigError naming `where` and the line."""
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            yield lineno, json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}, line {lineno}: not valid JSON ({e.msg} at column {e.colno}).") from None


def iter_record_file(path: Path) -> Iterator[dict]:
    """The JSON objects of a records file that a process appends to, one per line, read as a stream. A file
    that does not exist yields nothing; blank lines, and a line cut short by a killed writer, are skipped."""
    try:
        f = open(path)
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict):
                yield r


def safe_join(root: Path, rel: str) -> Path:
    """Join a config-supplied relative path to root, refusing anything that escapes root."""
    root = Path(root).resolve()
    p = (root / rel).resolve()
    if p != root and root not in p.parents:
        raise ConfigError(f"Path {rel!r} escapes its directory {root}; use a path inside it.")
    return p


def refuse_pickled_weights(model_dir: Path, allow_pickle: bool = False) -> None:
    """Only safetensors weights are loaded; pickled weights are refused unless explicitly allowed."""
    bad = [p.name for p in Path(model_dir).glob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    if bad and not allow_pickle:
        raise IntegrityError(
            f"{model_dir} holds pickled weight files {bad}; pickles can run arbitrary code when loaded. "
            "Convert them to safetensors where you trust their origin (load them with transformers, then "
            "save_pretrained(..., safe_serialization=True)) and remove the pickles; packager loads safetensors only."
        )


def tail(path: Path, n: int = 40) -> str:
    """The last `n` lines of a log file, for an error message; "(no log)" when there is none."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(lines[-n:])
