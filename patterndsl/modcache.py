"""The compiled-module cache: ``module_text(spec, **options) -> str``.

A self-contained module (:func:`patterndsl.codegen.module.render_module`) is a pure function
of the canonical spec, the options and the compiler itself, so it is cached under a key that
covers all of them: the psparse version, the canonical spec text, the options, the grammar,
every template, every source file of the compiler and the installed triton's version.  An
edit to any of them gives a new key; stale entries are simply never looked up again.

Entries live in ``<cache dir>/modules/<key>.py`` (``PSPARSE_CACHE_DIR``, else the user's cache
directory, as the kernel cache).  Each entry starts with a line holding the sha256 and
length of the text below it, so a truncated, corrupted or half-copied entry is detected and
rebuilt: it is read as text and compared, never imported or executed.  Writers take a lock
file (``fcntl.flock``, or an exclusive-create lock where there is no ``fcntl``) and replace
the entry atomically (a temporary file in the same folder, fsync, ``os.replace``), so a
reader without the lock sees either no entry or a whole one.

Nothing here imports torch or triton: a cache hit costs hashing the compiler's sources once
per process and reading one file.
"""
from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from . import __version__
from .errors import PsparseUsageError
from .fileio import write_atomic
from .resources import resource_dir

_PACKAGE = Path(__file__).resolve().parent
_HEADER = "# psparse-module-cache sha256="
# An exclusive-create lock older than this is taken to be left by a process that died.
_STALE_LOCK_S = 120.0

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
               "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def normalize_options(head_dim=None, dtype=None, block_m=None, block_n=None) -> dict:
    """The options as a plain dict of validated values (``None`` left out), so equal
    requests give equal keys however they were spelled (``"bf16"``, ``torch.bfloat16``)."""
    out = {}
    if head_dim is not None:
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or not 16 <= head_dim <= 256:
            raise PsparseUsageError(f"head_dim={head_dim!r}: expected an integer from 16 to 256")
        out["head_dim"] = head_dim
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        if name not in DTYPE_NAMES:
            raise PsparseUsageError(f"dtype={dtype!r}: expected bf16, fp16 or fp32")
        out["dtype"] = DTYPE_NAMES[name]
    for key, value in (("block_m", block_m), ("block_n", block_n)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value & (value - 1):
            raise PsparseUsageError(f"{key}={value!r}: expected a power of two >= 16")
        out[key] = value
    return out


def cache_root() -> Path:
    """Where entries go: the same root as the kernel cache."""
    from .codegen.triton_backend import cache_dir
    return cache_dir() / "modules"


@lru_cache(maxsize=1)
def compiler_digest() -> str:
    """sha256 over the grammar, the templates and the compiler's own sources (names and
    bytes, in a fixed order), computed once per process."""
    h = hashlib.sha256()
    files = sorted(p for p in _PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    for folder in ("grammar", "templates"):
        files += sorted(p for p in resource_dir(folder).rglob("*") if p.is_file()
                        and "__pycache__" not in p.parts)
    for p in files:
        try:
            rel = p.relative_to(_PACKAGE.parent).as_posix()
        except ValueError:
            rel = p.as_posix()
        data = p.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


@lru_cache(maxsize=1)
def triton_version() -> str:
    # The distribution's metadata, not `import triton` (seconds, and not needed for a hit).
    from importlib import metadata
    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return "none"


def cache_key(canonical: str, options: dict) -> str:
    parts = ("psparse-module-v1", __version__, canonical,
             repr(sorted(options.items())), compiler_digest(), triton_version())
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def _render(spec, options: dict) -> str:
    # Looked up on the module at call time, so tests can count renders.
    from .codegen import module
    text = module.render_module(spec, **options)
    # A module that does not even compile must not be cached or handed out.
    compile(text, "<psparse module>", "exec")
    return text


def _encode(text: str) -> bytes:
    body = text.encode("utf-8")
    return f"{_HEADER}{hashlib.sha256(body).hexdigest()} bytes={len(body)}\n".encode() + body


def _decode(data: bytes) -> str | None:
    """The text of a whole, intact entry; None for anything else."""
    head, sep, body = data.partition(b"\n")
    if not sep or not head.startswith(_HEADER.encode()):
        return None
    try:
        digest, size = head[len(_HEADER):].decode("ascii").split(" bytes=")
        size = int(size)
    except (UnicodeDecodeError, ValueError):
        return None
    if len(body) != size or hashlib.sha256(body).hexdigest() != digest:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_entry(path: Path) -> str | None:
    try:
        return _decode(path.read_bytes())
    except OSError:
        return None


@contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes, held for the ``with`` block."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is not None:
        with open(path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return
    # No flock (Windows): the lock is the existence of a file created exclusively.
    excl = path.with_name(path.name + ".excl")
    while True:
        try:
            fd = os.open(str(excl), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                if time.time() - excl.stat().st_mtime > _STALE_LOCK_S:
                    excl.unlink()
                    continue
            except OSError:
                continue
            time.sleep(0.05)
    try:
        yield
    finally:
        os.close(fd)
        try:
            excl.unlink()
        except OSError:
            pass


def module_text(spec, *, use_cache: bool = True, **options) -> str:
    """The self-contained module of ``spec`` (text or a Spec) for ``options`` (head_dim,
    dtype, block_m, block_n), from the cache when an intact entry is there.

    A cache that cannot be written (a read-only folder, say) does not stop compilation: the
    module is rendered and returned without being stored."""
    from .spec import Spec, parse
    if not isinstance(spec, Spec):
        spec = parse(spec)
    options = normalize_options(**options)
    text = _cached(spec, options) if use_cache else _render(spec, options)
    _dump(spec, text)
    return text


def entry_path(spec, **options) -> Path:
    """Where ``spec``'s entry for ``options`` lives (whether or not it exists yet)."""
    from .spec import Spec, parse
    if not isinstance(spec, Spec):
        spec = parse(spec)
    return cache_root() / f"{cache_key(spec.canonical(), normalize_options(**options))}.py"


def _cached(spec, options: dict) -> str:
    path = cache_root() / f"{cache_key(spec.canonical(), options)}.py"
    text = read_entry(path)
    if text is not None:
        return text
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = file_lock(path.with_suffix(".lock"))
        lock.__enter__()
    except OSError:
        return _render(spec, options)
    try:
        # Another process may have written it while this one waited for the lock.
        text = read_entry(path)
        if text is None:
            text = _render(spec, options)
            try:
                write_atomic(path, _encode(text))
            except OSError:
                pass
        return text
    finally:
        lock.__exit__(None, None, None)


def _dump(spec, text: str) -> None:
    """``PSPARSE_DUMP_DIR``: keep a copy of every module compiled, named by its content."""
    folder = os.environ.get("PSPARSE_DUMP_DIR")
    if not folder:
        return
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = Path(folder) / f"psparse_module_{digest}.py"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if read_bytes_or_none(path) != text.encode("utf-8"):
            write_atomic(path, text.encode("utf-8"))
    except OSError:
        pass  # a dump is a debugging aid: failing to write it must not fail compilation


def read_bytes_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
