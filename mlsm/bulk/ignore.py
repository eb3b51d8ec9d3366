"""Which entries of a person's tree stay behind: ``.gitignore`` and ``.mlsmignore``, as git reads them.

The patterns are git's (matched by the ``pathspec`` library's ``GitIgnoreSpec``, which
follows git's own behaviour where it differs from the documentation): ``*``, ``?``,
``[...]``, ``**``, a leading ``/`` or a slash in the middle anchors a pattern to the
directory of its file, a trailing ``/`` matches directories only, ``!`` re-includes, ``#``
comments, ``\\`` escapes. Precedence is git's too:

- an ignore file applies to the paths below its directory, and a deeper file's rules
  override a shallower one's; within a file the last matching pattern decides;
- ``.gitignore`` and ``.mlsmignore`` of one directory are one list, ``.mlsmignore`` after
  (so it can re-include what git ignores, say ``!data/``, or leave out what git keeps);
- the ``patterns`` given to :class:`IgnoreRules` come under every file (as git's
  ``.git/info/exclude``);
- an ignored directory is not entered, so nothing below it can be re-included (git: "it is
  not possible to re-include a file if a parent directory of that file is excluded");
- an entry named ``.git`` is left out at every depth unless ``include_git``.

An ignore file that is a symlink or not a regular file is not read (git >= 2.32 does not
follow them either); one over :data:`MAX_IGNORE_FILE_BYTES` is refused. Rules are read
while the tree is walked, parents first (:meth:`IgnoreRules.enter` for each directory
before its entries are asked about), so a walk of any depth keeps only the rules of the
directories on its current path.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mlsm.errors import UnsafeTree

from .manifest import show_path

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

__all__ = ["GIT_DIR", "IGNORE_FILES", "MAX_IGNORE_FILE_BYTES", "IgnoreRules"]

IGNORE_FILES = (".gitignore", ".mlsmignore")  # read in this order: the later one wins
GIT_DIR = ".git"
MAX_IGNORE_FILE_BYTES = 1 << 20
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _read_rules(dir_fd: int, name: str, where: str) -> list[str]:
    """Lines of ignore file ``name`` in ``dir_fd``; none when it is absent or not a
    regular file (a link is never followed)."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO):
            return []
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return []
        if st.st_size > MAX_IGNORE_FILE_BYTES:
            raise UnsafeTree(
                f"{show_path(where)} is larger than {MAX_IGNORE_FILE_BYTES} bytes: not an "
                "ignore file mlsm reads",
                details={"entries": [where]},
            )
        data = os.pread(fd, MAX_IGNORE_FILE_BYTES + 1, 0)
    finally:
        os.close(fd)
    return data.decode("utf-8", "surrogateescape").splitlines()


def _spec(lines: list[str]) -> GitIgnoreSpec:
    """Compiled rules; pathspec is imported only by a walk that meets some (a tree without
    ignore files, as ``mlsm submit`` often ships, never loads it)."""
    from pathspec import GitIgnoreSpec

    return GitIgnoreSpec.from_lines(lines)


class IgnoreRules:
    """The ignore rules in force at one point of a depth-first walk (see the module
    docstring). Not shared between walks: make one per walk."""

    def __init__(
        self,
        patterns: Iterable[str] = (),
        *,
        include_git: bool = False,
        read_files: bool = True,
    ) -> None:
        self.include_git = include_git
        self.read_files = read_files
        lines = list(patterns)
        self._base = _spec(lines) if lines else None
        self._stack: list[tuple[str, GitIgnoreSpec]] = []  # (directory, its rules), top last

    def enter(self, rel_dir: str, dir_fd: int | None = None) -> None:
        """The walk is now in directory ``rel_dir`` ("" = the root): drop the rules of
        directories it has left, then read ``rel_dir``'s ignore files from ``dir_fd``."""
        self._leave_to(rel_dir)
        if dir_fd is None or not self.read_files:
            return
        lines: list[str] = []
        for name in IGNORE_FILES:
            lines += _read_rules(dir_fd, name, f"{rel_dir}/{name}" if rel_dir else name)
        if lines:
            self.add(rel_dir, lines)

    def add(self, rel_dir: str, lines: Iterable[str]) -> None:
        """Rules of an ignore file in ``rel_dir`` (which the walk is in), given as lines."""
        self._leave_to(rel_dir)
        spec = _spec(list(lines))
        if self._stack and self._stack[-1][0] == rel_dir:
            old = self._stack.pop()[1]
            spec = type(spec)(list(old.patterns) + list(spec.patterns))
        self._stack.append((rel_dir, spec))

    def _leave_to(self, rel_dir: str) -> None:
        stack = self._stack
        while stack:
            top = stack[-1][0]
            if not top or rel_dir == top or rel_dir.startswith(top + "/"):
                return
            stack.pop()

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether the entry at ``rel`` (below the directory last entered) stays behind."""
        name = rel.rpartition("/")[2]
        if name == GIT_DIR and not self.include_git:
            return True
        suffix = "/" if is_dir else ""
        for base, spec in reversed(self._stack):
            sub = rel[len(base) + 1 :] if base else rel
            decided = spec.check_file(sub + suffix).include
            if decided is not None:
                return decided
        if self._base is not None:
            return self._base.check_file(rel + suffix).include is True
        return False
