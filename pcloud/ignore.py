"""Ignore rules for watched folders: `.pcloudignore`, a gitignore-style subset.

Syntax (documented for users in docs/folders.md):

* One pattern per line. Blank lines and lines starting with ``#`` are
  skipped; ``\\#`` and ``\\!`` start a pattern with a literal ``#`` / ``!``.
  Trailing spaces are stripped.
* ``*`` matches any run of characters except ``/``, ``?`` one character
  except ``/``, ``[abc]`` / ``[a-z]`` / ``[!a-z]`` a character class.
* ``**`` matches across directories: ``**/build``, ``logs/**``, ``a/**/b``.
* A pattern ending in ``/`` matches directories only (and so everything below them).
* A pattern with a ``/`` at its start or in its middle is anchored at the folder
  root (``/build`` or ``docs/*.tmp``); otherwise it matches a name at any depth.
* ``!pattern`` re-includes what an earlier pattern excluded. The last matching
  line wins. As in git, a file cannot be re-included if a directory above it is
  excluded (the scanner never enters an excluded directory).

Invariants:
* Matching is on folder-relative paths with ``/`` separators, never absolute paths.
* Built-in rules (`BUILTIN`) come first, so a user may re-include one with ``!``
  except our own temp files (``*.pcloud-tmp``), which are always ignored: the
  syncer must never commit a half-written file of its own.
* `.pcloudignore` itself is never ignored: it syncs like any other file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

IGNORE_FILE = ".pcloudignore"
TEMP_SUFFIX = ".pcloud-tmp"

BUILTIN: tuple[str, ...] = (
    ".*.swp", ".*.swo", ".*.swx",  # vim swap files
    "4913",                        # vim's "can I write here" probe file
    "*~",                          # editor backups
    ".#*",                         # emacs lock files
    ".~lock.*#",                   # LibreOffice lock files
)
"""Editor temp files ignored in every folder (a `.pcloudignore` may re-include them with ``!``)."""

MAX_IGNORE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Rule:
    """One parsed pattern line."""

    pattern: str
    """The line as written (without ``!``), for error messages and docs."""
    regex: re.Pattern[str]
    """Matches a whole folder-relative path."""
    negate: bool
    dir_only: bool
    name_regex: re.Pattern[str] | None = None
    """For an unanchored pattern without '**': the same test on the last name alone (cheaper)."""


def _glob_to_regex(glob: str) -> str:
    """Translate a gitignore glob (already stripped of ``/`` anchoring) to a regex body."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                # '**/' = zero or more directories; a trailing '**' = everything below
                if glob.startswith("**/", i):
                    out.append("(?:.*/)?")
                    i += 3
                    continue
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = glob.find("]", i + 2 if glob.startswith("[!", i) or glob.startswith("[]", i) else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = glob[i + 1:j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j + 1
                continue
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(glob[i + 1]))
            i += 2
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def parse_line(line: str) -> Rule | None:
    """One line of an ignore file as a Rule, or None for blanks and comments."""
    line = line.rstrip("\n").rstrip("\r")
    stripped = line.rstrip(" ")
    if not stripped or stripped.startswith("#"):
        return None
    negate = stripped.startswith("!")
    if negate:
        stripped = stripped[1:]
    elif stripped.startswith("\\#") or stripped.startswith("\\!"):
        stripped = stripped[1:]
    dir_only = stripped.endswith("/")
    body = stripped.rstrip("/")
    if not body:
        return None
    anchored = "/" in body
    body = body.lstrip("/")
    prefix = "" if anchored else "(?:.*/)?"
    try:
        regex = re.compile(prefix + _glob_to_regex(body) + r"\Z")
    except re.error:
        return None  # an unusable class like '[z-a]' matches nothing, as in git
    name_regex = None if anchored or "**" in body else re.compile(_glob_to_regex(body) + r"\Z")
    return Rule(body, regex, negate, dir_only, name_regex)


class IgnoreRules:
    """Compiled rules; `ignored(path, is_dir)` says whether the scanner and applier skip a path.

        >>> rules = IgnoreRules.parse("build/\\n*.log\\n!keep.log\\n")
        >>> rules.ignored("a/b.log"), rules.ignored("keep.log"), rules.ignored("build", is_dir=True)
        (True, False, True)
    """

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @property
    def rules(self) -> list[Rule]:
        return self._rules

    @rules.setter
    def rules(self, rules: list[Rule]) -> None:
        # One alternation per kind of path: most paths match no rule, and one regex
        # search says so (the per-rule, last-match-wins walk runs only on a hit).
        self._rules = rules

        def alternation(rs: list[Rule], name: bool) -> re.Pattern[str]:
            parts = [f"(?:{(r.name_regex if name else r.regex).pattern})" for r in rs  # type: ignore[union-attr]
                     if (r.name_regex is not None) == name]
            return re.compile("|".join(parts) or "(?!)")

        file_rules = [r for r in rules if not r.dir_only]
        # (names, paths) prefilters: a path matching neither matches no rule
        self._any_file = (alternation(file_rules, True), alternation(file_rules, False))
        self._any_dir = (alternation(rules, True), alternation(rules, False))

    @classmethod
    def parse(cls, text: str, *, builtin: bool = True) -> "IgnoreRules":
        lines = list(BUILTIN) if builtin else []
        lines.extend(text.splitlines())
        return cls([r for r in map(parse_line, lines) if r is not None])

    def _match(self, path: str, is_dir: bool) -> bool:
        names, whole = self._any_dir if is_dir else self._any_file
        if not names.match(path.rpartition("/")[2]) and not whole.match(path):
            return False
        result = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(path):
                result = not rule.negate
        return result

    def ignored(self, path: str, is_dir: bool = False) -> bool:
        """True if folder-relative ``path`` (``/``-separated) or a directory above it is excluded."""
        if path == IGNORE_FILE:
            return False
        if path.endswith(TEMP_SUFFIX):
            return True
        parts = path.split("/")
        for k in range(1, len(parts)):
            if self._match("/".join(parts[:k]), True):
                return True
        return self._match(path, is_dir)

    def ignored_here(self, path: str, is_dir: bool = False) -> bool:
        """Like `ignored` but for a path whose parent directories are already known not to be ignored."""
        if path == IGNORE_FILE:
            return False
        if path.endswith(TEMP_SUFFIX):
            return True
        return self._match(path, is_dir)


__all__ = ["IgnoreRules", "Rule", "parse_line", "BUILTIN", "IGNORE_FILE", "TEMP_SUFFIX", "MAX_IGNORE_BYTES"]
