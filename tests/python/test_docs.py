"""The documentation is tested like code: every ```python block of README.md and docs/*.md runs
here on CPU, every relative link and anchor resolves, and the files, `make` targets and C names
the pages mention exist.

A block runs in the namespace its marker names, an HTML comment on the line just above it that
a reader of the rendered page does not see: none (the block is complete), `digits`
(digits_namespace) or `skip (reason)`. docs/README.md tells writers the same.
"""
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")


def blocks(page):
    "(language, first line number of the code, code, marker or None) for each fenced block."
    lines = page.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2), i
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            i += 1
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        marker = MARKER.fullmatch(prev.strip())
        out.append((lang, start + 2, "\n".join(lines[start + 1:i]), marker and marker.group(1)))
        i += 1
    return out


def prose(page):
    "The page's text outside fenced blocks."
    text, keep, fence = [], True, None
    for ln in page.read_text().splitlines():
        m = FENCE.match(ln)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and ln.strip() == fence:
            fence = None
        elif fence is None:
            text.append(ln)
    return "\n".join(text)


def python_blocks():
    for page in PAGES:
        for lang, line, code, marker in blocks(page):
            if lang == "python":
                yield pytest.param(page, line, code, marker, id=f"{page.relative_to(ROOT)}:{line}")


def digits_namespace():
    "A real model, fastai DataLoaders (whose loss fastai infers) and a torch loader on the digits."
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from _digits import digits, residual_cnn
    finally:
        sys.path.remove(str(ROOT / "examples"))
    import torch
    from fastai.data.core import Datasets
    from fastai.data.transforms import Categorize

    torch.manual_seed(0)
    (x, y), (xv, yv) = digits()
    # A fifth of the digits: the blocks train as written (learn.fit(8)) in a few seconds.
    x, y, xv, yv = x[:256], y[:256], xv[:64], yv[:64]
    xs, ys = torch.cat([x, xv]), torch.cat([y, yv]).tolist()
    def get_x(i): return xs[i]
    def get_y(i): return ys[i]
    # Categorize gives the targets fastai's loss inference (CrossEntropyLossFlat); its vocabulary
    # given up front spares a pass over the data.
    dsets = Datasets(range(len(ys)), tfms=[[get_x], [get_y, Categorize(vocab=list(range(10)))]],
                     splits=[list(range(len(x))), list(range(len(x), len(ys)))])
    dls = dsets.dataloaders(bs=64)
    model = residual_cnn()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64,
                                         shuffle=True)
    return {"model": model, "dls": dls, "data": dls, "loader": loader,
            "opt": torch.optim.Adam(model.parameters(), lr=3e-3)}


NAMESPACES = {None: dict, "digits": digits_namespace}


@pytest.mark.parametrize("page,line,code,marker", python_blocks())
def test_python_block_runs(page, line, code, marker):
    if marker and marker.startswith("skip"):
        reason = re.fullmatch(r"skip\s*\((.+)\)", marker)
        assert reason, f"{page.name}:{line}: a skipped block must say why: <!-- docs-test: skip (reason) -->"
        pytest.skip(reason.group(1))
    assert marker in NAMESPACES, f"{page.name}:{line}: unknown docs-test marker {marker!r}"
    namespace = NAMESPACES[marker]()
    # Compiled under the page's name and line, so a traceback points into the page.
    exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)


def slug(heading):
    "The anchor GitHub gives a heading."
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    seen, out = {}, set()
    for m in re.finditer(r"^#{1,6}\s+(.*)$", prose(page), re.M):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif frag and dest.is_file() and frag not in anchors(dest):
            bad.append(f"{target}: no heading #{frag} in {dest.relative_to(ROOT)}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def test_every_page_is_linked_from_the_index():
    index = (ROOT / "docs" / "README.md").read_text()
    missing = [p.name for p in PAGES[1:] if p.name != "README.md" and f"({p.name})" not in index]
    assert not missing, f"docs/README.md does not link {missing}"


def make_targets():
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


# Top-level folders of the source tree (not build outputs), so that `examples/x.py` is checked
# while `build/pip` or `demo_out/results.md` are not.
TREE_DIRS = ("bench", "capi", "cmake", "csrc", "demo", "docs", "examples", "python",
             "requirements", "scripts", "tests")
TREE_PATH = re.compile(r"(?<![\w/.-])((?:%s)/[\w./*-]*)" % "|".join(TREE_DIRS))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_files_and_make_targets_exist(page):
    text = page.read_text()
    named = [p.rstrip(".") for p in TREE_PATH.findall(text)]  # a path may end a sentence
    missing = [p for p in named if not (any(ROOT.glob(p)) if "*" in p else (ROOT / p).exists())]
    targets = make_targets()
    missing += [f"make {t}" for t in re.findall(r"(?:`|^)make ([a-z][\w-]*)", text, re.M) if t not in targets]
    assert not missing, f"{page.relative_to(ROOT)} names what does not exist: {missing}"


# A file named alone (`export_model.py`) must be somewhere in the source tree; these names are
# examples in the text, not files of ours.
NOT_FILES = {"blocks.py"}  # reference-differences.md: "a file such as `blocks.py`"


def source_file_names():
    names = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "build", "demo_out", "__pycache__"))]
        names.update(files)
    return names


def test_files_named_alone_exist():
    names = source_file_names()
    missing = {f"{p.relative_to(ROOT)}: {n}" for p in PAGES
               for n in re.findall(r"`([\w.-]+\.(?:py|c|h|cpp|cu|sh|txt|cmake|md))`", p.read_text())
               if n not in names and n not in NOT_FILES}
    assert not missing, f"files named in the docs that are not in the tree: {sorted(missing)}"


def test_c_names_exist():
    "Every mm_ name the pages use is declared in the C header (or is a CMake target)."
    known = set(re.findall(r"\bmm_\w+", (ROOT / "capi" / "manifold_mixup.h").read_text()))
    for cmake in [ROOT / "CMakeLists.txt", *ROOT.glob("*/CMakeLists.txt")]:
        known |= set(re.findall(r"\bmm_\w+", cmake.read_text()))
    # `mm_batch_*` names a family: some name must start with it.
    unknown = {f"{p.name}: {n}" for p in PAGES for n in re.findall(r"\bmm_\w+", p.read_text())
               if n not in known and not (n.endswith("_") and any(k.startswith(n) for k in known))}
    assert not unknown, f"C names not in capi/manifold_mixup.h: {sorted(unknown)}"


def test_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "README.md is the front page: keep it short, move depth to docs/"
    for command in ("make demo", "make test"):
        assert command in readme
