"""Griffe extension: render the docstrings' ``>>>`` examples as code blocks.

The library's docstrings hold doctest examples without a Markdown fence; as
plain Markdown, ``>>>`` would become nested block quotes and ``x[0][1]`` a
reference link. This wraps each run of doctest lines (prompt, continuation and
output lines, up to a blank line) in a ``pycon`` fence, and turns Sphinx roles
into inline code.
"""

import re

import griffe

# Sphinx roles left in some docstrings (:func:`x`, :class:`~a.B`) render as code.
_ROLE = re.compile(r":(?:class|func|mod|meth|attr|data|obj|exc):`~?([^`]+)`")


def fence_doctests(text: str) -> str:
    out, block, indent = [], [], ""
    for line in text.splitlines() + [""]:
        stripped = line.strip()
        if block and stripped:
            block.append(line)
            continue
        if block:  # a blank line ends the example
            out += [indent + "```pycon", *block, indent + "```"]
            block = []
        if stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = [line]
        else:
            out.append(line)
    return "\n".join(out).rstrip("\n")


class DoctestFences(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        del kwargs
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(r"`\1`", fence_doctests(obj.docstring.value))
