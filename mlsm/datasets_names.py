"""Which dataset names are safe: one pure check shared by the master and the agent.

A dataset is one entry directly under a configured dataset root, so a dataset *name* is
exactly one path component. The rules are strict on purpose: names travel to the master,
are shown in terminals, and become paths on disk, so anything that could change meaning
on the way (a separator, a control or bidi character, a look-alike of ``/`` or ``.``, a
form that Unicode normalisation rewrites, a leading ``-`` read as an option) is refused
rather than cleaned up. Names starting with ``.`` are refused too: hidden entries are not
datasets (the scanner skips them) and ``.mlsm-*`` is where the agent keeps its temporary
import and trash directories.

The master checks names at its edge with :func:`check_dataset_name` (it never imports
``agent``); the agent's ``agent.datasets.paths.validate_dataset_name`` is the same check
raising the agent's ``DatasetPathError``.
"""

from __future__ import annotations

import unicodedata


class DatasetNameError(ValueError):
    """A refused dataset name; ``message`` is one line naming what is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


def check_dataset_name(name: object) -> str:
    """Return ``name`` unchanged when it is a safe dataset name, else raise.

    Raises :class:`DatasetNameError` whose message names the offending character.
    """
    if not isinstance(name, str):
        raise DatasetNameError(f"dataset name must be a string, not {type(name).__name__}")
    if not name:
        raise DatasetNameError("dataset name is empty")
    shown = repr(name[:40] + ("..." if len(name) > 40 else ""))
    if name in (".", ".."):
        raise DatasetNameError(f"dataset name {shown} is not allowed")
    if len(name) > MAX_NAME_CHARS:
        raise DatasetNameError(
            f"dataset name {shown} is {len(name)} characters long (at most {MAX_NAME_CHARS})"
        )
    try:
        n_bytes = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise DatasetNameError(f"dataset name {shown} is not valid Unicode text") from None
    if n_bytes > MAX_NAME_BYTES:
        raise DatasetNameError(
            f"dataset name {shown} is {n_bytes} bytes in UTF-8 (at most {MAX_NAME_BYTES})"
        )
    for ch in name:
        if ch in "/\\":
            raise DatasetNameError(f"dataset name {shown} contains a path separator {ch!r}")
        if ch == "\0":
            raise DatasetNameError(f"dataset name {shown} contains a NUL character")
        cat = unicodedata.category(ch)
        if cat in _REFUSED_CATEGORIES:
            raise DatasetNameError(
                f"dataset name {shown} contains a control or invisible character ({_describe(ch)})"
            )
        if cat == "Zs" and ch != " ":
            raise DatasetNameError(f"dataset name {shown} contains unusual space {_describe(ch)}")
        if ch in _LOOKALIKES:
            raise DatasetNameError(
                f"dataset name {shown} contains {_describe(ch)}, which looks like '/' or '.'"
            )
        code = ord(ch)
        if any(lo <= code <= hi for lo, hi in _INVISIBLE_RANGES):
            raise DatasetNameError(
                f"dataset name {shown} contains an invisible character ({_describe(ch)})"
            )
    if unicodedata.normalize("NFKC", name) != name:
        raise DatasetNameError(
            f"dataset name {shown} changes under Unicode NFKC normalisation "
            f"(to {unicodedata.normalize('NFKC', name)!r}); use the normalised form"
        )
    if name.startswith("-"):
        raise DatasetNameError(f"dataset name {shown} starts with '-'")
    if name.startswith("."):
        raise DatasetNameError(
            f"dataset name {shown} starts with '.' (hidden names are not datasets)"
        )
    if name != name.strip():
        raise DatasetNameError(f"dataset name {shown} starts or ends with a space")
    return name


def dataset_name_problem(name: object) -> str | None:
    """Why ``name`` is refused, or ``None`` when it is a safe dataset name."""
    try:
        check_dataset_name(name)
    except DatasetNameError as exc:
        return exc.message
    return None


MAX_IMPORT_PATH_CHARS = 4096


def import_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a tree to import from a node (None: it can): it must be
    absolute and plain, with no ``.``, ``..`` or empty component and no control
    character (it is shown in transfers and audit rows), so "below an import root" can
    be decided from its text before anything is opened. Shared by the master (at its
    edge) and the agent (``agent.bulk.sources.path_resolver``, which also opens it
    without following links)."""
    if len(path) > MAX_IMPORT_PATH_CHARS:
        return f"the path is longer than {MAX_IMPORT_PATH_CHARS} characters"
    if not path.startswith("/"):
        return f"{path!r} is not an absolute path"
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in path):
        return f"{path!r} holds a control or format character"
    parts = path.rstrip("/").split("/")[1:]
    if not parts:
        return "the path is the file system's root"
    if any(p in ("", ".", "..") for p in parts):
        return f"{path!r} is not a plain path (no '.', '..' or empty parts)"
    return None


def is_below(path: str, roots: list[str]) -> str | None:
    """The root of ``roots`` that ``path`` (plain, see :func:`import_path_problem`) is at
    or below, by its text; None when it is below none."""
    from pathlib import PurePosixPath

    pure = PurePosixPath(path)
    for root in roots:
        r = PurePosixPath(root)
        if pure == r or r in pure.parents:
            return root
    return None
