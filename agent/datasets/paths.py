"""Dataset names and paths: what is a valid name, and confining paths to a dataset root.

A dataset is one entry directly under a configured dataset root, so a dataset *name* is
exactly one path component. The rules are strict on purpose: names travel to the master,
are shown in terminals, and become paths on disk, so anything that could change meaning
on the way (a separator, a control or bidi character, a look-alike of ``/`` or ``.``, a
form that Unicode normalisation rewrites, a leading ``-`` read as an option) is refused
rather than cleaned up. Names starting with ``.`` are refused too: hidden entries are not
datasets (the scanner skips them) and ``.mlsm-*`` is where the agent keeps its temporary
import and trash directories.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from .errors import DatasetPathError

MAX_NAME_CHARS = 128  # matches the wire's Name bound
MAX_NAME_BYTES = 255  # NAME_MAX of Linux file systems
RESERVED_PREFIX = ".mlsm-"  # temp dirs of imports/receives, trash of deletes

# Characters that look like a path separator or a dot but are not, and that NFKC leaves
# alone (those NFKC rewrites, e.g. U+FF0F FULLWIDTH SOLIDUS, are caught by that check).
_LOOKALIKES = frozenset(
    "\u2044"  # FRACTION SLASH
    "\u2215"  # DIVISION SLASH
    "\u2216"  # SET MINUS
    "\u2571"  # BOX DRAWINGS LIGHT DIAGONAL UPPER RIGHT TO LOWER LEFT
    "\u2572"  # BOX DRAWINGS LIGHT DIAGONAL UPPER LEFT TO LOWER RIGHT
    "\u27cb"  # MATHEMATICAL RISING DIAGONAL
    "\u27cd"  # MATHEMATICAL FALLING DIAGONAL
    "\u29f5"  # REVERSE SOLIDUS OPERATOR
    "\u29f8"  # BIG SOLIDUS
    "\u29f9"  # BIG REVERSE SOLIDUS
    "\u1735"  # PHILIPPINE SINGLE PUNCTUATION
    "\u0337"  # COMBINING SHORT SOLIDUS OVERLAY
    "\u0338"  # COMBINING LONG SOLIDUS OVERLAY
    "\u2024"  # ONE DOT LEADER (NFKC also catches it; listed for a clearer message)
    "\u2027"  # HYPHENATION POINT
    "\u3002"  # IDEOGRAPHIC FULL STOP
)
# Default-ignorable code points that are not in category Cf (invisible in a terminal).
_INVISIBLE_RANGES = (
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x115F, 0x1160),  # HANGUL CHOSEONG/JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ/AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTORS
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xE0100, 0xE01EF),  # VARIATION SELECTORS SUPPLEMENT
)
# Cc control, Cf format (bidi overrides, zero-width), Cs surrogate, Co private use,
# Cn unassigned, Zl/Zp line/paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _describe(ch: str) -> str:
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed character')}"


def validate_dataset_name(name: object) -> str:
    """Return ``name`` unchanged when it is a safe dataset name, else raise.

    Raises :class:`DatasetPathError` whose message names the offending character.
    """
    if not isinstance(name, str):
        raise DatasetPathError(f"dataset name must be a string, not {type(name).__name__}")
    if not name:
        raise DatasetPathError("dataset name is empty")
    shown = repr(name[:40] + ("..." if len(name) > 40 else ""))
    if name in (".", ".."):
        raise DatasetPathError(f"dataset name {shown} is not allowed")
    if len(name) > MAX_NAME_CHARS:
        raise DatasetPathError(
            f"dataset name {shown} is {len(name)} characters long (at most {MAX_NAME_CHARS})"
        )
    try:
        n_bytes = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise DatasetPathError(f"dataset name {shown} is not valid Unicode text") from None
    if n_bytes > MAX_NAME_BYTES:
        raise DatasetPathError(
            f"dataset name {shown} is {n_bytes} bytes in UTF-8 (at most {MAX_NAME_BYTES})"
        )
    for ch in name:
        if ch in "/\\":
            raise DatasetPathError(f"dataset name {shown} contains a path separator {ch!r}")
        if ch == "\0":
            raise DatasetPathError(f"dataset name {shown} contains a NUL character")
        cat = unicodedata.category(ch)
        if cat in _REFUSED_CATEGORIES:
            raise DatasetPathError(
                f"dataset name {shown} contains a control or invisible character ({_describe(ch)})"
            )
        if cat == "Zs" and ch != " ":
            raise DatasetPathError(f"dataset name {shown} contains unusual space {_describe(ch)}")
        if ch in _LOOKALIKES:
            raise DatasetPathError(
                f"dataset name {shown} contains {_describe(ch)}, which looks like '/' or '.'"
            )
        code = ord(ch)
        if any(lo <= code <= hi for lo, hi in _INVISIBLE_RANGES):
            raise DatasetPathError(
                f"dataset name {shown} contains an invisible character ({_describe(ch)})"
            )
    if unicodedata.normalize("NFKC", name) != name:
        raise DatasetPathError(
            f"dataset name {shown} changes under Unicode NFKC normalisation "
            f"(to {unicodedata.normalize('NFKC', name)!r}); use the normalised form"
        )
    if name.startswith("-"):
        raise DatasetPathError(f"dataset name {shown} starts with '-'")
    if name.startswith("."):
        raise DatasetPathError(
            f"dataset name {shown} starts with '.' (hidden names are not datasets)"
        )
    if name != name.strip():
        raise DatasetPathError(f"dataset name {shown} starts or ends with a space")
    return name


def is_dataset_name(name: str) -> bool:
    try:
        validate_dataset_name(name)
    except DatasetPathError:
        return False
    return True


def _resolved_root(root: Path) -> Path:
    try:
        real = Path(root).resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise DatasetPathError(f"dataset root {str(root)!r} is not usable: {e}") from None
    if not real.is_dir():
        raise DatasetPathError(f"dataset root {str(root)!r} is not a directory")
    return real


def confine(root: Path, name: str) -> Path:
    """The path of dataset ``name`` under ``root``, guaranteed to lie inside ``root``.

    ``root`` is resolved (it may itself be a symlink, e.g. ``/data -> /mnt/data``). Where
    the entry exists it is resolved strictly (a symlink must lead to an existing place
    inside the root; a dangling or escaping one is refused); where it does not, the result
    is ``<resolved root>/<name>``.
    """
    validate_dataset_name(name)
    real_root = _resolved_root(root)
    candidate = real_root / name
    if not os.path.lexists(candidate):
        return candidate
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise DatasetPathError(
            f"dataset {name!r} is a symlink that leads nowhere (refused)"
        ) from None
    if real == real_root or not real.is_relative_to(real_root):
        raise DatasetPathError(f"dataset {name!r} leads outside its root {str(root)!r}")
    return real


def confine_path(root: Path, path: str | os.PathLike[str]) -> Path:
    """Check a full dataset path given by the master; return it resolved.

    The path must be absolute, free of ``.``/``..`` components, name a direct child of
    ``root`` (as configured or as resolved) with a valid dataset name, and resolve inside
    the root. The root itself is never accepted.
    """
    raw = os.fspath(path)
    if "\0" in raw:
        raise DatasetPathError("dataset path contains a NUL character")
    pure = PurePosixPath(raw)
    if not pure.is_absolute():
        raise DatasetPathError(f"dataset path {raw!r} is not absolute")
    if any(part in (".", "..") for part in raw.split("/")):
        raise DatasetPathError(f"dataset path {raw!r} contains '.' or '..'")
    real_root = _resolved_root(root)
    if pure == PurePosixPath("/") or pure.parent == pure:
        raise DatasetPathError(f"dataset path {raw!r} is a file-system root")
    try:
        parent = Path(pure.parent).resolve(strict=True)
    except (OSError, RuntimeError):
        raise DatasetPathError(f"dataset path {raw!r} is not inside {str(root)!r}") from None
    if parent != real_root:
        if Path(raw).resolve() == real_root:
            raise DatasetPathError(f"dataset path {raw!r} is the dataset root itself")
        raise DatasetPathError(f"dataset path {raw!r} is not directly inside {str(root)!r}")
    real = confine(real_root, pure.name)
    if real.parent != real_root:
        raise DatasetPathError(f"dataset path {raw!r} does not lead to a direct child of the root")
    return real


def pick_root(roots: Sequence[Path], requested: str = "") -> Path:
    """The configured root a command names (``""`` = the first), refusing any other."""
    if not roots:
        raise DatasetPathError("this agent has no dataset root configured")
    if not requested:
        return Path(roots[0])
    want = Path(requested)
    for root in roots:
        if Path(root) == want:
            return Path(root)
        try:
            if Path(root).resolve(strict=True) == want.resolve(strict=True):
                return Path(root)
        except (OSError, RuntimeError):
            continue
    raise DatasetPathError(f"{requested!r} is not one of this agent's dataset roots")
