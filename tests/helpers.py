"""Small builders shared by tests: tiny suites that train in a second or two."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "genbench-example-measure"

TINY_SUITE = """
name = "tiny"
seeds = [0]
[dataset]
name = "digits"
[model]
name = "mlp"
params = { width = 16, depth = 1 }
[train]
lr = 0.1
batch_size = 128
max_epochs = 2
[regularizers.dropout]
rate = 0.0
[grid]
"regularizers.dropout.rate" = [0.0, 0.3]
"model.width" = [8, 16]
[measures]
frobenius_distance = {}
parameter_norm = {}
spectral_norm = {}
"""


def write_suite(tmp_path: Path, text: str = TINY_SUITE, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def install_dist(site: Path, dist: str, version: str, module_name: str, source: str,
                 entry_name: str) -> None:
    """Install a module with a `genbench` entry point into ``site`` the way pip lays it out
    (a module file plus a ``.dist-info`` with ``entry_points.txt``); add ``site`` to sys.path."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module_name}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[genbench]\n{entry_name} = {module_name}\n")
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
