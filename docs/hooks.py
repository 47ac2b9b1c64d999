"""mkdocs hooks: the committed plots, and the pages' math rendered to MathML at build time.

``on_files``: the pages link the benchmark and example plots by their
repository paths (e.g. ``benchmarks/results/cpu-amd-epyc-2c/speedup.png``);
this adds those PNG files to the site so that one copy lives in the repository.

``on_page_content``: ``pymdownx.arithmatex`` (generic mode) marks every
``$$...$$``, ``\\[...\\]`` and ``\\(...\\)`` in the pages; this replaces each
with MathML made by ``latex2mathml`` (pure Python). Browsers draw MathML
natively, so the site needs no MathJax or KaTeX, no fonts and no network, to
build or to read. A formula latex2mathml cannot convert fails the build.
"""

import html
import os
import re

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOT_DIRS = ("benchmarks/results/cpu-amd-epyc-2c", "examples/results")


def on_files(files, config):
    for top in PLOT_DIRS:
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in sorted(names):
                if name.endswith(".png"):
                    rel = os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")
                    files.append(File(rel, src_dir=ROOT, dest_dir=config["site_dir"],
                                      use_directory_urls=config["use_directory_urls"]))
    return files


_MATH = re.compile(
    r'<(div|span) class="arithmatex">\s*(?:\\\[(.*?)\\\]|\\\((.*?)\\\))\s*</\1>', re.S
)


def tex_to_mathml(tex: str, *, display: bool) -> str:
    """MathML for one formula; ``aligned`` becomes ``align*`` (latex2mathml knows that one)."""
    from latex2mathml.converter import convert

    tex = tex.replace("{aligned}", "{align*}")
    out = convert(tex.strip(), display="block" if display else "inline")
    if "<mi>&</mi>" in out or "<merror" in out:
        raise ValueError(f"latex2mathml could not convert: {tex!r}")
    return out


def on_page_content(content, page, config, files):
    def render(match):
        block = match.group(1) == "div"
        tex = html.unescape(match.group(2) if match.group(2) is not None else match.group(3))
        return tex_to_mathml(tex, display=block)

    return _MATH.sub(render, content)
