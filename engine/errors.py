"""The error a user can fix: scripts print it as one `error:` line and exit 2 (engine/entry.py run_cli), and
the two ways every message shows what the user gave: abbreviated (shown) and on one line (printable)."""


class UserError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""


SHOWN_CHARS = 60  # of a value quoted in a message: enough to recognise it, never a screenful
SHOWN_ITEMS = 3  # of a list or mapping


def printable(text: object) -> str:
    """text on one line: control characters (a newline in a file name, an escape sequence) written as escapes."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A user's value for a message, abbreviated: its repr if short, else its type, length and first items."""
    if isinstance(value, (list, tuple, dict)) and limit < 20:
        return f"[{len(value):,} items]" if not isinstance(value, dict) else f"{{{len(value):,} keys}}"
    if isinstance(value, (list, tuple)):
        if len(repr_limited(value, limit)) <= limit:
            return repr_limited(value, limit)
        items = ", ".join(shown(v, limit // 4) for v in value[:SHOWN_ITEMS])
        return f"a list of {len(value):,} items [{items}, ...]"
    if isinstance(value, dict):
        if len(repr_limited(value, limit)) <= limit:
            return repr_limited(value, limit)
        keys = ", ".join(shown(k, limit // 4) for k in list(value)[:SHOWN_ITEMS])
        return f"a mapping of {len(value):,} keys ({keys}, ...)"
    if isinstance(value, int) and value.bit_length() > 4 * limit:  # str() of a huge int is slow, or refused
        return f"an integer of {value.bit_length():,} bits"
    text = printable(repr(value) if isinstance(value, str) else value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value)):,} characters)"


def repr_limited(value: list | tuple | dict, limit: int) -> str:
    """repr of a container, or a string longer than limit as soon as it is known to be (no huge repr built)."""
    if len(value) > limit:
        return "x" * (limit + 1)
    limit -= 2  # each level of nesting has less room, so a deep value ends quickly
    parts = [shown(v, limit) for v in value] if not isinstance(value, dict) else [
        f"{shown(k, limit)}: {shown(v, limit)}" for k, v in value.items()]
    text = ", ".join(parts)
    return "[" + text + "]" if isinstance(value, list) else "(" + text + ")" if isinstance(value, tuple) else (
        "{" + text + "}")
