"""The error a user can fix: scripts print it as one `error:` line and exit 2 (engine/entry.py run_cli), and
the two ways every message shows what the user gave: abbreviated (shown) and on one line (escape.printable)."""
import errno

from engine.escape import printable


class UserError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""


SHOWN_CHARS = 60  # of a value quoted in a message: enough to recognise it, never a screenful
SHOWN_ITEMS = 3  # of a list or mapping


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A user's value for a message, abbreviated: its repr if short, else its type, length and first items."""
    if isinstance(value, (list, tuple, dict)) and limit < 20:
        return f"[{len(value):,} items]" if not isinstance(value, dict) else f"{{{len(value):,} keys}}"
    if isinstance(value, (list, tuple, dict)):
        whole = repr_limited(value, limit)
        if whole is not None:
            return whole
        first = ", ".join(shown(v, limit // 4) for v in list(value)[:SHOWN_ITEMS])
        return (f"a mapping of {len(value):,} keys ({first}, ...)" if isinstance(value, dict)
                else f"a list of {len(value):,} items [{first}, ...]")
    if isinstance(value, int) and value.bit_length() > 4 * limit:  # str() of a huge int is slow, or refused
        return f"an integer of {value.bit_length():,} bits"
    text = printable(repr(value) if isinstance(value, str) else value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value)):,} characters)"


def repr_limited(value: list | tuple | dict, limit: int) -> str | None:
    """The repr of a container if it fits in limit characters, else None, known as soon as the parts overflow
    (so a value that an alias repeats a million times is never written out)."""
    parts, used = [], 2
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    for key, item in items:
        part = shown(item, limit - 2) if key is None else f"{shown(key, limit - 2)}: {shown(item, limit - 2)}"
        used += len(part) + 2
        if used > limit + 2 or "..." in part or " items" in part or " keys" in part:
            return None
        parts.append(part)
    text = ", ".join(parts)
    return "[" + text + "]" if isinstance(value, list) else "(" + text + ")" if isinstance(value, tuple) else (
        "{" + text + "}")


REFUSALS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT, errno.EISDIR, errno.ENXIO, errno.ESTALE}


def refusal(err: OSError) -> str | None:
    """The system's reason when it refused to read a file (permissions, an I/O error); None for the OSError a
    reader raises over a damaged file (Pillow's, or EINVAL from a truncated checkpoint's zip)."""
    return err.strerror if err.errno in REFUSALS else None
