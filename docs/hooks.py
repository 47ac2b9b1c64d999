"""mkdocs hook: publish the committed benchmark and example plots without copying them.

The pages link them by their repository paths (e.g.
``benchmarks/results/cpu-amd-epyc-2c/speedup.png``); this adds those PNG files
to the site so that one copy lives in the repository.
"""

import os

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
