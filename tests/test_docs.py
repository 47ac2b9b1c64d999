"""The documentation: every ```python block of README.md and docs/*.md runs, the
API reference lists every public name, and the site builds with warnings as errors.

A page's blocks run in order in one namespace, with the working directory in a
temporary folder of its own. The pages share one interpreter (one JAX import and
one compilation cache), except a page that sets ``os.environ`` (e.g. ``XLA_FLAGS``
before it imports JAX) and the slow pages: those get a fresh interpreter each.
A block preceded by ``<!-- skip: reason -->`` is not run.
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
# argv: a JSON file of [page, working directory, [[line, code], ...]] and a file for the
# results (page -> None or the traceback); each page in a namespace of its own
_RUNNER = """
import json, os, sys, traceback
results = {}
for page, folder, blocks in json.load(open(sys.argv[1])):
    os.chdir(folder)
    ns = {"__name__": "__main__"}
    try:
        for line, code in blocks:
            exec(compile("\\n" * (line - 1) + code, page, "exec"), ns)
        results[page] = None
    except BaseException:
        results[page] = traceback.format_exc()
json.dump(results, open(sys.argv[2], "w"))
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


def _blocks(page: str) -> list[tuple[int, str]]:
    with open(os.path.join(ROOT, page)) as f:
        return python_blocks(f.read())


def _own_process(page: str) -> bool:
    """Whether ``page`` runs in a fresh interpreter of its own (see the module docstring)."""
    return page in SLOW_PAGES or any("os.environ" in code for _, code in _blocks(page))


def _page_params():
    params = []
    for page in PAGES:
        if not _blocks(page):
            continue
        marks = [pytest.mark.slow] if page in SLOW_PAGES else []
        params.append(pytest.param(page, marks=marks, id=page))
    return params


def _run_pages(pages: list[str], folder) -> dict:
    """Run ``pages`` in one fresh interpreter, each in a subfolder of ``folder``:
    page -> None, or what went wrong."""
    jobs = []
    for k, page in enumerate(pages):
        (folder / str(k)).mkdir()
        jobs.append((page, str(folder / str(k)), _blocks(page)))
    (folder / "pages.json").write_text(json.dumps(jobs))
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(folder / "pages.json"), str(folder / "out.json")],
        cwd=folder, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if proc.returncode != 0 or not (folder / "out.json").exists():  # the interpreter died
        return {page: f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}" for page in pages}
    results = json.loads((folder / "out.json").read_text())
    return {page: error and f"{error}\n{proc.stderr[-3000:]}" for page, error in results.items()}


@pytest.fixture(scope="module")
def shared_pages(tmp_path_factory):
    """The outcome of every page that shares one interpreter, run once."""
    pages = [p for p in PAGES if _blocks(p) and not _own_process(p)]
    return _run_pages(pages, tmp_path_factory.mktemp("pages"))


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
def test_page_code_runs(page, tmp_path, request):
    if _own_process(page):
        error = _run_pages([page], tmp_path)[page]
    else:
        error = request.getfixturevalue("shared_pages")[page]
    assert error is None, f"{page}:\n{error}"


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
