"""Outputs that a crash cannot half-write, folders that prove they are whole, and the one error boundary.

Everything a user keeps (key folders, prediction and embedding tables) is written under a temporary sibling name and
renamed into place when complete, so a reader finds either the previous output or the new one, never a mixture.
A folder written this way carries a checksum manifest (every file's size and sha256), and readers verify it before
trusting any part, so a folder that was truncated, bit-flipped or assembled from two builds is refused by name.
A reader that verifies a folder and then opens its parts holds :func:`folder_lock` meanwhile, and :func:`swap_in`
renames only under it, so a rebuild swapped in while a reader loads gives the reader the old build or the new one.

:func:`error_boundary` is what the entry points (``bioscan-clip``, the training script) wrap around their work: the
errors a user can cause become one line and exit code 2.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

try:
    import fcntl
except ImportError:  # no flock (Windows): folders are swapped and read unlocked
    fcntl = None

logger = logging.getLogger(__name__)

# Test hook: the reliability tests set this to a stage name so that the process SIGKILLs itself exactly there
# (deterministic "crash at every stage" tests). Unset, it costs one dictionary lookup per stage.
KILL_AT_ENV = "BIOSCAN_CLIP_TEST_KILL_AT"
EXIT_INPUT_ERROR = 2
# Where an entry point has no --debug option of its own (the training script's options are TrainConfig's fields).
DEBUG_ENV = "BIOSCAN_CLIP_DEBUG"
# The errors a user's input or environment causes; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (BioscanInputError, OSError, UnicodeDecodeError, csv.Error, ValueError)


def kill_point(stage: str) -> None:
    """Dies with SIGKILL when the test hook names ``stage`` (nothing runs after: no ``finally``, no cleanup)."""
    if os.environ.get(KILL_AT_ENV) == stage:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def format_bytes(count: float) -> str:
    """A size as a person reads it: ``812 bytes``, ``1.4 MiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(folder: Path, *, exclude: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    """``relative/path -> [size, sha256]`` for every file under ``folder`` (sorted; ``exclude`` are top-level names)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative not in exclude:
            found[relative] = [path.stat().st_size, sha256_file(path)]
    return found


def verify_checksums(folder: Path, expected: dict[str, list[Any]], what: str) -> None:
    """Raises one line naming ``folder`` when a listed file is missing, resized or changed."""
    for relative, (size, digest) in expected.items():
        path = folder / relative
        if not path.is_file():
            raise BioscanInputError(f"{folder}: {what} is incomplete: {relative} is missing; rebuild it")
        if path.stat().st_size != size:
            raise BioscanInputError(
                f"{folder}: {what} is corrupted or mixed: {relative} has {path.stat().st_size} bytes, "
                f"the manifest says {size}; rebuild it"
            )
        if sha256_file(path) != digest:
            raise BioscanInputError(f"{folder}: {what} is corrupted or mixed: {relative} fails its sha256; rebuild it")


SEAL_KEY = "manifest_sha256"


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != SEAL_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sealed_json(manifest: dict[str, Any]) -> str:
    """The manifest as JSON text with the sha256 of its own content, so that a change to the manifest itself (not
    only to the files it lists) is detected."""
    return json.dumps({**manifest, SEAL_KEY: hashlib.sha256(_canonical(manifest)).hexdigest()}, indent=2,
                      sort_keys=True) + "\n"  # fmt: skip


def check_seal(manifest: dict[str, Any], path: Path, what: str) -> None:
    if manifest.get(SEAL_KEY) != hashlib.sha256(_canonical(manifest)).hexdigest():
        raise BioscanInputError(f"{path}: {what} is corrupted (its own sha256 does not match); rebuild it")


def read_json(path: Path, what: str) -> Any:
    """JSON from ``path``; a truncated or non-UTF-8 file is one line naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BioscanInputError(f"{path}: {what} is not valid JSON ({error}); rebuild it") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _left_by_dead_processes(parent: Path, prefix: str) -> list[Path]:
    """The entries of ``parent`` named ``PREFIX-PID-...`` whose process is gone (a live one may still use its own)."""
    found = []
    for entry in parent.iterdir() if parent.is_dir() else ():
        if entry.name.startswith(f"{prefix}-"):
            pid = entry.name[len(prefix) + 1 :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                found.append(entry)
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: Path, *, exclusive: bool = False) -> Iterator[None]:
    """Orders the readers of ``folder`` and the swap that replaces it: a reader holds it shared while it verifies
    the folder and opens its parts, :func:`swap_in` exclusive for its two renames. A reader thus sees one build
    whole (never parts of two, never the instant between the renames), and writers of one folder swap in turn.

    It is a ``flock`` on the parent directory itself, so there is no lock file to create (readers of a read-only
    folder, such as the Hub cache, take it too) nor to leave behind; siblings share it, which makes a writer wait
    at most for a reader's verification. What stays open after the block (memory maps, open files) keeps the build
    it was opened from, whatever is swapped in later. Nothing may be written beside ``folder`` inside a shared
    block (that swap would wait for the block). Where the parent cannot be opened or the file system has no flock
    (some network mounts), nothing is locked.
    """
    descriptor = None
    if fcntl is not None:
        try:
            parent = os.path.dirname(os.path.abspath(folder))  # also for "." or a trailing slash
            descriptor = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            fcntl.flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError as error:
            logger.debug("%s: not locked (%s)", folder, error)
            if descriptor is not None:
                os.close(descriptor)
                descriptor = None
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)  # releases the lock


def _retired_prefix(target: Path) -> str:
    return f".{target.name}.old"


def _recover_retired(target: Path) -> None:
    """Under the exclusive lock: the old folders that dead writers renamed aside are removed; where such a writer
    was killed between the two renames of its swap (``target`` absent), its old folder is put back first."""
    for aside in _left_by_dead_processes(target.parent, _retired_prefix(target)):
        if not os.path.lexists(target) and (aside / target.name).is_dir():
            os.replace(aside / target.name, target)
            logger.warning("%s: restored from %s (a rebuild was killed while swapping it in)", target, aside)
        _remove(aside)


def staging_dir(target: Path) -> Path:
    """A fresh sibling folder ``.NAME.tmp-PID-XXXX`` to build ``target`` in; what dead processes left beside it goes
    first (their staging folders; their old folders, one put back where a swap was killed half-way)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in _left_by_dead_processes(target.parent, f".{target.name}.tmp"):
        _remove(stale)
    if _left_by_dead_processes(target.parent, _retired_prefix(target)):
        with folder_lock(target, exclusive=True):
            _recover_retired(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))


def swap_in(staging: Path, target: Path, stage_prefix: str = "") -> None:
    """Moves the complete ``staging`` folder to ``target``, replacing it.

    A directory cannot be renamed over a non-empty one, so an existing ``target`` is first renamed aside (one rename)
    and then ``staging`` into its place (one rename): at every instant ``target`` is the whole old folder, absent, or
    the whole new one, and readers holding :func:`folder_lock` never see it absent. Both renames are made under the
    exclusive lock, so concurrent writers of one ``target`` swap in turn (the last one's folder stays) instead of
    renaming each other's folders away. A kill between the two leaves the old folder as ``.NAME.old-PID-*`` beside
    it, which the next write of ``target`` puts back (see :func:`staging_dir`); otherwise it is removed here.
    """
    retired = None
    with folder_lock(target, exclusive=True):
        _recover_retired(target)
        if os.path.lexists(target):
            retired = Path(tempfile.mkdtemp(prefix=f"{_retired_prefix(target)}-{os.getpid()}-", dir=target.parent))
            os.replace(target, retired / target.name)
            kill_point(f"{stage_prefix}retired")
        try:
            os.replace(staging, target)
        except BaseException:
            if retired is not None:  # the old folder goes back: nothing is left aside
                os.replace(retired / target.name, target)
                _remove(retired)
            raise
    if retired is not None:  # after the lock: readers that opened the old folder keep it open (and mapped)
        _remove(retired)


@contextlib.contextmanager
def atomic_output_file(out: Path, stage_prefix: str = "write") -> Iterator[Path]:
    """Yields a temporary sibling path to write; on success it is fsynced and renamed to ``out``.

    On any error (or a kill) ``out`` is untouched: whatever the user had there stays, and the temporary file is
    removed (or, after a kill, left as an obvious ``.NAME.tmp-PID-*`` that no reader opens, removed by the next
    write of ``out``).
    """
    if out.is_dir():
        raise BioscanInputError(f"--out {out}: is a folder; give a file name (.parquet, .csv or .json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in _left_by_dead_processes(out.parent, f".{out.name}.tmp"):  # left by a killed run
        _remove(stale)
    handle, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        kill_point(f"{stage_prefix}:written")
        with temporary.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def describe_error(error: BaseException) -> str:
    """One line for an error a user caused: the message, with the file where Python knows it."""
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text ({error.reason} at byte {error.start})"
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in str(error):
        return f"{error.filename}: {error.strerror or error}"
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def error_boundary(prog: str, work: Callable[[], int | None], *, debug: bool = False) -> int:
    """Runs ``work``; a user error becomes ``PROG: error: ...`` on stderr and exit code 2 (with ``debug``, the
    traceback as well). Interrupts exit 130 without a traceback."""
    try:
        return int(work() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {describe_error(error)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
