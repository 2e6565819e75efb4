"""The one exception type a user can cause; the CLI prints it as a single line and exits non-zero."""

from __future__ import annotations

from collections.abc import Iterable


class MopError(Exception):
    """A problem with the user's input (path, column, config, export...), stated with what was expected."""


def did_you_mean(names: Iterable[str], known: Iterable[str]) -> str:
    """`` (did you mean 'a' for 'b'?)`` for the misspelt ``names`` close to a ``known`` one (`` (did you mean
    'a'?)`` for one name), else ''."""
    import difflib

    names, known = list(names), list(known)
    pairs = [(n, m[0]) for n in names
             for m in [difflib.get_close_matches(str(n), known, n=1, cutoff=0.6)] if m]
    if not pairs:
        return ""
    if len(names) == 1:
        return f" (did you mean {pairs[0][1]!r}?)"
    return " (did you mean " + ", ".join(f"{m!r} for {n!r}" for n, m in pairs) + "?)"


def refuse_unknown_keys(given: Iterable[str], known: Iterable[str], where: str) -> None:
    """Raise one line naming the keys of a config section that its schema does not have, with a hint."""
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise MopError(f"{where}: unknown key(s) {', '.join(unknown)}{did_you_mean(unknown, known)}; "
                       f"expected some of {', '.join(known)}")
