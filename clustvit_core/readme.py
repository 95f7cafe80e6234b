"""Writing measured results into marked sections of a Markdown file (the README's tables come from commands)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .errors import InputError


def check_section(path: str | Path, section: str) -> str:
    """The file's text if it holds the markers of `section` (InputError naming them otherwise): call it
    before a long measurement whose result goes there."""
    path = Path(path)
    begin, end = f"<!-- BEGIN benchmark:{section} -->", f"<!-- END benchmark:{section} -->"
    content = path.read_text() if path.is_file() else ""
    if begin not in content or end not in content:
        raise InputError(f"{path}: markers {begin} / {end} not found; add them where the table belongs")
    return content


def replace_section(path: str | Path, section: str, text: str) -> None:
    """Replace what stands between `<!-- BEGIN benchmark:SECTION -->` and `<!-- END benchmark:SECTION -->`."""
    path = Path(path)
    begin, end = f"<!-- BEGIN benchmark:{section} -->", f"<!-- END benchmark:{section} -->"
    content = check_section(path, section)
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that produced a result, for printing next to it."""
    args = sys.argv[1:] if argv is None else argv
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in args)
