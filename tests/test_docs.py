"""The documentation: every ```python block of README.md and docs/*.md runs, the
API reference lists every public name, and the site builds with warnings as errors.

A page's blocks run in order in one namespace, in a fresh interpreter (so a page
may set ``XLA_FLAGS`` before it imports JAX), with the working directory in a
temporary folder. A block preceded by ``<!-- skip: reason -->`` is not run.
"""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

import lstm_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
SLOW_PAGES = {"docs/tutorial.md"}

_FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)")
_SKIP = re.compile(r"^\s*<!--\s*skip:\s*\S.*-->\s*$")
_RUNNER = """
import json, sys
ns = {"__name__": "__main__"}
for name, line, code in json.load(open(sys.argv[1])):
    exec(compile("\\n" * (line - 1) + code, name, "exec"), ns)
"""


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line of the first code line, code)`` of each ```python block to run, in order.

    Blocks in other languages are not run; a ```python block right after a
    ``<!-- skip: reason -->`` line (blank lines between allowed) is not run.
    """
    blocks, lines, k = [], text.splitlines(), 0
    while k < len(lines):
        match = _FENCE.match(lines[k])
        if not match:
            k += 1
            continue
        indent, fence, lang = match.groups()
        end = k + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        before = [line for line in lines[:k] if line.strip()]
        skipped = bool(before) and _SKIP.match(before[-1]) is not None
        if lang in ("python", "py") and not skipped:
            code = "\n".join(line[len(indent):] for line in lines[k + 1 : end])
            blocks.append((k + 2, code))
        k = end + 1
    return blocks


def _page_params():
    params = []
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as f:
            if not python_blocks(f.read()):
                continue
        marks = [pytest.mark.slow] if page in SLOW_PAGES else []
        params.append(pytest.param(page, marks=marks, id=page))
    return params


def test_python_blocks_extraction():
    text = "\n".join([
        "```bash", "echo no", "```",
        "```python", "a = 1", "```",
        "<!-- skip: needs a GPU -->", "", "```python", "b = 2", "```",
        "- item", "  ```python", "  c = 3", "  ```",
        "```pycon", ">>> d = 4", "```",
    ])  # fmt: skip
    assert python_blocks(text) == [(5, "a = 1"), (14, "c = 3")]


@pytest.mark.parametrize("page", _page_params())
def test_page_code_runs(page, tmp_path):
    with open(os.path.join(ROOT, page)) as f:
        blocks = [(page, line, code) for line, code in python_blocks(f.read())]
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps(blocks))
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"{page}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def test_api_reference_lists_every_public_name():
    with open(os.path.join(ROOT, "docs", "api.md")) as f:
        documented = set(re.findall(r"^::: (\S+)", f.read(), flags=re.M))
    names = {f"lstm_jax.{name}" for name in lstm_jax.__all__}
    # framework modules are imported by name, not re-exported
    names |= {f"lstm_jax.{m}" for m in ("nnx", "linen", "equinox", "checkpoint", "data")
              if os.path.exists(os.path.join(ROOT, "lstm_jax", f"{m}.py"))}  # fmt: skip
    missing = sorted(names - documented)
    assert not missing, f"add these to docs/api.md as '::: name' entries: {missing}"


def test_docs_build_strict(tmp_path):
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material",
                   "latex2mathml"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()
    # the math is MathML in the HTML itself (docs/hooks.py): no raw TeX, no script to fetch
    tutorial = (tmp_path / "site" / "tutorial" / "index.html").read_text()
    assert tutorial.count("<math ") >= 4 and 'display="block"' in tutorial
    assert "\\[" not in tutorial and "$$" not in tutorial and "mathjax" not in tutorial.lower()
    assert "<mtable" in tutorial  # the aligned LSTM and GRU equations


def test_math_hook_renders_or_fails_loudly():
    pytest.importorskip("latex2mathml")
    sys.path.insert(0, os.path.join(ROOT, "docs"))
    import hooks

    page = '<p>a</p><div class="arithmatex">\\[h_t = \\tanh(x) &lt; 1\\]</div>'
    page += ' and <span class="arithmatex">\\(c_t\\)</span>'
    out = hooks.on_page_content(page, None, None, None)
    assert out.count("<math ") == 2 and 'display="block"' in out and 'display="inline"' in out
    assert "arithmatex" not in out and "&#x0003C;" in out  # the escaped < reached TeX as <
    with pytest.raises(ValueError, match="latex2mathml could not convert"):
        hooks.tex_to_mathml("a &= b", display=True)  # & outside an environment
