"""An output directory claimed by one run: two runs never write into the same ``--out``.

The claim is ``OUT/.fedmeta-claim``, created with O_EXCL and holding the run's pid. The run writes
into OUT directly (``results.json``, written last, marks completion); the claim is dropped when it
succeeds. When it fails or is cancelled everything it wrote is removed except its privacy ledgers
(``ledgers/`` folders holding a file: privacy already spent is never forgotten). A run killed
outright leaves OUT with its stale claim; ``resume=True`` takes such a directory over.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedmeta.errors import FedMetaError

__all__ = ["CLAIM", "FAILED", "claimed_output_dir", "claim_holder", "pid_alive"]

CLAIM = ".fedmeta-claim"
FAILED = "FAILED.txt"
LEDGERS = "ledgers"


def pid_alive(pid: int) -> bool:
    """Signal 0 asks whether the process exists without disturbing it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def claim_holder(out: Path) -> int | None:
    """The pid in ``out``'s claim (None: no claim); waits briefly for a claim being written."""
    path = out / CLAIM
    for _ in range(20):
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError:
            text = ""
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    return 0  # unreadable claim: held by an unknown run


def _in_use(flag: str, shown: str, pid: int, resume: bool = False) -> FedMetaError:
    who = f"pid {pid}" if pid else "an unknown process"
    if resume:
        return FedMetaError(f"{flag} {shown}: the run is still going on ({who}); stop it before resuming "
                            f"(if no such run is going on, remove {shown}/{CLAIM})")
    if pid == 0 or pid_alive(pid):
        return FedMetaError(f"{flag} {shown}: in use by another fedmeta run ({who}); choose another {flag}")
    return FedMetaError(f"{flag} {shown}: left unfinished by a run that is no longer running ({who}); "
                        f"choose another {flag} (`fedmeta simulate --resume` continues a killed simulation)")


def _make_dir(out: Path, flag: str, shown: str) -> list[Path]:
    """Create ``out`` and its missing parents; return those created (outermost first)."""
    created = [p for p in reversed((out, *out.parents)) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in out.parents if p.exists()), None)
        reason = f"{blocker} is not a directory" if blocker and not blocker.is_dir() else err.strerror or str(err)
        raise FedMetaError(f"{flag} {shown}: cannot create the directory: {reason}") from None
    return created


def _take_claim(out: Path, flag: str, shown: str, resume: bool) -> None:
    """O_EXCL: of two runs racing for one directory exactly one gets it."""
    try:
        fd = os.open(out / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise _in_use(flag, shown, claim_holder(out) or 0, resume) from None
    except OSError as err:
        raise FedMetaError(f"{flag} {shown}: cannot write there: {err.strerror or err}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()}\n")


def _kept_ledgers(out: Path) -> set[Path]:
    """Each ``ledgers`` folder under ``out`` that holds a file (symlinks are not followed)."""
    kept = set()
    for root, _, files in os.walk(out):
        rel = Path(root).relative_to(out).parts
        if files and LEDGERS in rel:
            kept.add(out.joinpath(*rel[: rel.index(LEDGERS) + 1]))
    return kept


def _prune(directory: Path, keep: set[Path]) -> None:
    """Remove everything under ``directory`` but the ``keep`` folders (and the folders holding them)."""
    for child in list(directory.iterdir()):
        if child in keep:
            continue
        if any(child in k.parents for k in keep):
            _prune(child, keep)
        elif child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _clean_failed(out: Path, created: list[Path], err: BaseException) -> None:
    keep = _kept_ledgers(out)
    _prune(out, keep)
    if not keep:
        for d in dict.fromkeys([out, *reversed(created)]):  # out, then the parents this run created
            try:
                d.rmdir()
            except OSError:
                pass
        return
    why = "cancelled" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}".splitlines()[0]
    where = ", ".join(sorted(str(k.relative_to(out)) for k in keep))
    line = f"this run failed ({why}); its privacy ledgers are kept in {where}: they record privacy already spent"
    (out / FAILED).write_text(line + "\n", encoding="utf-8")
    print(f"fedmeta: {out}: {line}", file=sys.stderr)


@contextmanager
def claimed_output_dir(out: Path, *, resume: bool = False, flag: str = "--out",
                       resumable: str = "") -> Iterator[Path]:
    """Claim ``out`` for this run and yield it (resolved); see the module docstring.

    ``resume``: ``out`` is the directory of a killed run; take its claim over unless the run that
    holds it is still alive. A resumed run that fails keeps everything (it stays resumable), and so
    does a run that fails once its ``resumable`` file exists (a tune's study).
    """
    shown, out = str(out), out.resolve()
    created: list[Path] = []
    if resume:
        holder = claim_holder(out)
        if holder is not None and holder != os.getpid() and (holder == 0 or pid_alive(holder)):
            raise _in_use(flag, shown, holder, resume=True)
        (out / CLAIM).unlink(missing_ok=True)
    else:
        if out.is_dir() and (out / CLAIM).exists():
            raise _in_use(flag, shown, claim_holder(out) or 0)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FedMetaError(f"{flag} {shown}: already exists and is not an empty directory; "
                               f"choose another {flag}")
        created = _make_dir(out, flag, shown)
    _take_claim(out, flag, shown, resume)
    try:
        yield out
    except BaseException as err:
        try:
            if resume or (resumable and (out / resumable).is_file()):
                (out / CLAIM).unlink(missing_ok=True)
            else:
                _clean_failed(out, created, err)
        except OSError:
            pass  # the run's own error matters more than an incomplete clean-up
        raise
    (out / CLAIM).unlink(missing_ok=True)
