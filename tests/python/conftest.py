"""Which manifold_mixup the tests exercise: this tree's (the default: `make build` builds it in
place), or with `--installed` whatever `import manifold_mixup` finds, as packagers test an
installed package:

    pip install --no-build-isolation .      # or the sdist, or a wheel
    python -m pytest --installed tests/python

Subprocesses the tests start see the same package: in the default mode PYTHONPATH names this
tree's python/ folder, so the tests pass their environment on unchanged. Under --installed the
tests that build from this tree's build folder (marked `source_tree`) are skipped.
"""
import os
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "python"


def pytest_addoption(parser):
    parser.addoption("--installed", action="store_true",
                     help="test the installed manifold_mixup, not this source tree's")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "source_tree: builds from this source tree's build folder (skipped with --installed)")
    if config.getoption("installed"):
        return
    sys.path.insert(0, str(SOURCE))
    paths = [str(SOURCE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)


def pytest_report_header(config):
    import importlib.util
    spec = importlib.util.find_spec("manifold_mixup")
    where = Path(spec.origin).parent if spec and spec.origin else None
    mode = "--installed" if config.getoption("installed") else "this source tree"
    return f"manifold_mixup under test ({mode}): {where or 'not found'}"


def pytest_collection_modifyitems(config, items):
    if not config.getoption("installed"):
        return
    skip = pytest.mark.skip(reason="builds from this source tree's build folder; not with --installed")
    for item in items:
        if item.get_closest_marker("source_tree"):
            item.add_marker(skip)
