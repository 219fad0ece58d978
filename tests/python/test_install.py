"""A user's install, end to end: a wheel built from this tree's build directory (`make build`'s,
so nothing compiles twice) installed into a fresh `python3 -m venv --system-site-packages`,
imported from another folder, C programs built against the installed C library through
`python -m manifold_mixup --cmakedir` and through pkg-config, a C++ host against the installed
core library; the C-only CMake install too.

The installed libraries find libtorch beside them in site-packages (a relative RUNPATH). In
this venv torch lives elsewhere (the system's site-packages, which the venv sees), so its C and
C++ programs name torch's lib folder in LD_LIBRARY_PATH, as the README tells users to; a copy of
site-packages that holds torch beside the package needs nothing, wherever it is moved."""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("MM_CMAKE_BUILD_DIR", ROOT / "build")).resolve()
HOST = ROOT / "tests" / "install"
TORCH_LIB = Path(torch.__file__).resolve().parent / "lib"
# What a program needs when torch lives elsewhere than beside the package.
TORCH_ELSEWHERE = dict(os.environ, LD_LIBRARY_PATH=str(TORCH_LIB))
VERSION = re.search(r'^__version__ = "(.+)"$', (ROOT / "python" / "manifold_mixup" / "_version.py")
                    .read_text(), re.M)[1]
TORCH_SERIES = ".".join(torch.__version__.split("+")[0].split(".")[:2])
# One venv for the whole file: the tests share it, so xdist keeps them on one worker.
pytestmark = [pytest.mark.xdist_group("install"), pytest.mark.source_tree]


def user_env(**extra):
    """This process's environment as a user's shell has it: without the source tree that
    conftest.py puts on PYTHONPATH for the other tests' subprocesses."""
    source = str(ROOT / "python")
    env = dict(os.environ, **extra)
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != source]
    env["PYTHONPATH"] = os.pathsep.join(kept)
    if not kept:
        del env["PYTHONPATH"]
    return env


def run(*cmd, ok=True, **kwargs):
    kwargs.setdefault("env", user_env())
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kwargs)
    if ok:
        assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if not (BUILD / "CMakeCache.txt").exists():
        pytest.fail(f"{BUILD} is not a configured build directory: run `make build` first "
                    "(or set MM_CMAKE_BUILD_DIR)")
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-build-isolation",
        "--no-deps", "-w", out, ROOT, env=user_env(MM_CMAKE_BUILD_DIR=str(BUILD)))
    (found,) = out.glob("manifold_mixup-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel):
    """A new user's virtualenv that sees the installed torch, with the wheel installed in it."""
    home = tmp_path_factory.mktemp("venv") / "env"
    run(sys._base_executable, "-m", "venv", "--system-site-packages", home)
    python = home / "bin" / "python"
    # --no-deps and no index: torch comes from what the venv sees (test_torch_pin checks the pin
    # admits it). With deps, pip would fetch a setuptools: torch 2.13 asks for >= 77.0.3, and a
    # new venv's own setuptools (65 on Python 3.11) hides the machine's.
    run(python, "-m", "pip", "install", "--disable-pip-version-check", "--no-index", "--no-deps", wheel)
    return python


@pytest.fixture(scope="module")
def where(venv):
    """What `python -m manifold_mixup --cmakedir` prints, what its --includedir, --libdir,
    --pkgconfig and --version print, the package's folder and its metadata's version (one
    process for all but the first: each loads torch)."""
    found = {"cmakedir": run(venv, "-m", "manifold_mixup", "--cmakedir", cwd=venv.parent).stdout.strip()}
    code = ("import contextlib, importlib.metadata, io, json, manifold_mixup\n"
            "from manifold_mixup.__main__ import main\n"
            "said = {}\n"
            "for what in ('includedir', 'libdir', 'pkgconfig', 'version'):\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        assert main([f'--{what}']) == 0\n"
            "    said[what] = out.getvalue().strip()\n"
            "said['package'] = manifold_mixup.__file__.rsplit('/', 1)[0]\n"
            "said['metadata'] = importlib.metadata.version('manifold-mixup')\n"
            "print(json.dumps(said))\n")
    found.update(json.loads(run(venv, "-c", code, cwd=venv.parent).stdout))
    return {k: v if k in ("version", "metadata") else Path(v) for k, v in found.items()}


def check_host(host, cwd, env=TORCH_ELSEWHERE):
    """Runs a built C host on random numbers; its loss must be torch's. Returns what it ran."""
    prediction, target = torch.randn(2, 3), torch.randn(2, 3)
    args = [f"{v:.9g}" for v in prediction.flatten().tolist() + target.flatten().tolist()]
    done = run(host, *args, cwd=cwd, env=env)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["version"] == VERSION
    # The host parsed the same printed numbers back: compare against torch on those.
    values = torch.tensor([float(a) for a in args]).view(2, 2, 3)
    expected = torch.nn.functional.mse_loss(values[0], values[1]).item()
    assert float(lines["mse"]) == pytest.approx(expected, rel=1e-6)
    return done


def test_wheel_metadata_names_its_torch_and_version(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(meta).decode()
    assert re.search(rf"^Version: {re.escape(VERSION)}$", metadata, re.M)
    requires = re.findall(r"^Requires-Dist: (torch\b.*)$", metadata, re.M)
    assert requires == [f"torch=={TORCH_SERIES}.*"]
    # The pin admits the torch it was built with, local label and all.
    from packaging.specifiers import SpecifierSet
    assert torch.__version__ in SpecifierSet(requires[0][len("torch"):])


def test_torch_pin_admits_the_torch_the_venv_sees(venv):
    code = ("import importlib.metadata as m, torch\n"
            "from packaging.requirements import Requirement\n"
            "(pin,) = [Requirement(r) for r in m.requires('manifold-mixup') if r.startswith('torch')]\n"
            "assert pin.specifier.contains(torch.__version__), (pin, torch.__version__)\n"
            "print(pin)")
    assert run(venv, "-c", code).stdout.strip() == f"torch=={TORCH_SERIES}.*"


def test_wheel_ships_the_c_and_cpp_package(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for path in ("_build_info.py", "include/manifold_mixup.h", "include/dlpack/dlpack.h",
                 "include/manifold_mixup/manifold_mixup.hpp", "include/manifold_mixup/ops/mix.h",
                 "lib/cmake/ManifoldMixup/ManifoldMixupConfig.cmake",
                 "lib/cmake/ManifoldMixup/ManifoldMixupTargets.cmake",
                 "lib/pkgconfig/manifold_mixup.pc"):
        assert f"manifold_mixup/{path}" in names
    # One file per library (a wheel has no symbolic links: a linker name or a full version
    # beside the SONAME would be a second and third copy).
    libraries = {n for n in names if ".so" in n and "/_C" not in n}
    assert libraries == {"manifold_mixup/lib/libmanifold_mixup.so.0", "manifold_mixup/lib/libmanifold_mixup_core.so"}
    assert not any(n.startswith("manifold_mixup/") and n.endswith(".cpp") for n in names)


def test_imports_from_another_folder_and_mixes(venv, tmp_path):
    code = ("import torch, manifold_mixup\n"
            "x = torch.randn(4, 3); perm = torch.tensor([1, 0, 3, 2]); lam = torch.rand(4)\n"
            "out = manifold_mixup.mix(x, perm, lam)\n"
            "ref = lam[:, None] * x + (1 - lam[:, None]) * x[perm]\n"
            "torch.testing.assert_close(out, ref)\n"
            "print(manifold_mixup.__file__)\n"
            "print(manifold_mixup.__version__)\n")
    path, version = run(venv, "-c", code, cwd=tmp_path).stdout.split()
    assert Path(path).is_relative_to(venv.parents[1]), path
    assert version == VERSION


def test_c_host_through_cmakedir(where, tmp_path):
    cmakedir = where["cmakedir"]
    assert (cmakedir / "ManifoldMixupConfig.cmake").is_file()
    run("cmake", "-S", HOST, "-B", tmp_path, f"-DCMAKE_PREFIX_PATH={cmakedir}")
    run("cmake", "--build", tmp_path, env=TORCH_ELSEWHERE)
    check_host(tmp_path / "host", tmp_path)


def pkg_config_host(pkgconfig, tmp_path, env=None):
    """Builds and checks the C host with pkg-config's flags; the version pkg-config says."""
    env = dict(env or user_env(LD_LIBRARY_PATH=str(TORCH_LIB)), PKG_CONFIG_PATH=str(pkgconfig))
    flags = run("pkg-config", "--cflags", "--libs", "manifold_mixup", env=env).stdout.split()
    # The linker reads the libraries' own dependencies, libtorch's included, as the loader does.
    run("cc", "-std=c11", "-Wall", "-Werror", HOST / "host.c", *flags, "-o", tmp_path / "host", env=env)
    check_host(tmp_path / "host", tmp_path, env)
    return run("pkg-config", "--modversion", "manifold_mixup", env=env).stdout.strip()


def test_c_host_through_pkg_config(where, tmp_path):
    assert pkg_config_host(where["pkgconfig"], tmp_path) == VERSION


def test_locations_and_versions_agree(venv, where):
    package = where["package"]
    assert package.is_relative_to(venv.parents[1])
    assert where["includedir"] == package / "include"
    assert where["libdir"] == package / "lib"
    header = (package / "include" / "manifold_mixup.h").read_text()
    macros = [re.search(rf"^#define MM_VERSION_{p} (\d+)$", header, re.M)[1]
              for p in ("MAJOR", "MINOR", "PATCH")]
    assert ".".join(macros) == VERSION
    config = (where["cmakedir"] / "ManifoldMixupConfigVersion.cmake").read_text()
    assert re.search(r'set\(PACKAGE_VERSION "(.+)"\)', config)[1] == VERSION
    assert where["metadata"] == VERSION
    assert where["version"].startswith(f"manifold_mixup {VERSION} (compiled against torch {torch.__version__}")


def runpath(binary):
    dynamic = run("readelf", "-d", binary).stdout
    found = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", dynamic)
    return None if found is None else found[1].split(":")


def test_runpaths_are_relative(where):
    """Each library finds what it needs beside it, nothing at a path of the build machine."""
    package = where["package"]
    (module,) = package.glob("_C*.so")
    # The module finds the core in lib/; `import torch` has loaded libtorch already.
    assert runpath(module) == ["$ORIGIN/lib"]
    assert runpath(package / "lib" / "libmanifold_mixup_core.so") == ["$ORIGIN/../../torch/lib"]
    assert runpath(package / "lib" / "libmanifold_mixup.so.0") == ["$ORIGIN", "$ORIGIN/../../torch/lib"]


def loaded_libraries(done):
    """The files the loader mapped, from a run under LD_DEBUG=libs."""
    return [Path(os.path.normpath(p)) for p in re.findall(r"calling init: (\S+)", done.stderr)]


def test_c_host_keeps_its_torch_when_site_packages_moves(where, tmp_path):
    """site-packages with torch beside the package, as a venv that installed both has it: a C
    program built there runs with no LD_LIBRARY_PATH and loads that torch, no other. Once the
    folder moves, the program is told where the C library went (its RUNPATH names the old
    place), and the library finds the torch that moved with it."""
    site = tmp_path / "site-packages"
    shutil.copytree(where["package"], site / "manifold_mixup", symlinks=True)
    (site / "torch" / "lib").mkdir(parents=True)
    for library in TORCH_LIB.glob("*.so*"):  # torch's libraries, hard links where possible
        try:
            os.link(library, site / "torch" / "lib" / library.name)
        except OSError:
            shutil.copy2(library, site / "torch" / "lib" / library.name)
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    build = tmp_path / "build"
    build.mkdir()
    pkg_config_host(site / "manifold_mixup" / "lib" / "pkgconfig", build, env)
    for place in (site, tmp_path / "moved" / "site-packages"):
        run_env = dict(env, LD_DEBUG="libs")
        if place != site:
            place.parent.mkdir()
            site.rename(place)
            run_env["LD_LIBRARY_PATH"] = str(place / "manifold_mixup" / "lib")
        done = check_host(build / "host", tmp_path, run_env)
        loaded = loaded_libraries(done)
        torch_libraries = [p for p in loaded if p.name.startswith(("libc10", "libtorch"))]
        assert torch_libraries and all(p.parent == place / "torch" / "lib" for p in torch_libraries), loaded
        ours = [p for p in loaded if "manifold_mixup" in p.name]
        assert sorted(p.name for p in ours) == ["libmanifold_mixup.so.0", "libmanifold_mixup_core.so"]
        assert all(p.parent == place / "manifold_mixup" / "lib" for p in ours), loaded


def test_cpp_host_links_the_installed_core(where, tmp_path):
    """A C++ host through find_package(ManifoldMixup COMPONENTS core): it trains a torch::nn
    model with a MixupPoint, on the installed core (headers and library)."""
    run("cmake", "-S", HOST, "-B", tmp_path, "-DMM_CXX_HOST=ON",
        f"-DCMAKE_PREFIX_PATH={where['cmakedir']};{torch.utils.cmake_prefix_path}")
    run("cmake", "--build", tmp_path, env=TORCH_ELSEWHERE)
    done = run(tmp_path / "host_cpp", env=TORCH_ELSEWHERE)
    said = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert int(said["mixes"]) == 30  # one point, input mixup off: every batch mixed there
    first, last = map(float, said["loss"].split())
    assert last < first
    assert Path(said["core"]) == where["package"] / "lib" / "libmanifold_mixup_core.so"


def test_import_refuses_another_torch(venv, where, tmp_path):
    """A copy of the installed package told it was compiled against other torches."""
    copy = tmp_path / "manifold_mixup"
    shutil.copytree(where["package"], copy)
    info = copy / "_build_info.py"
    text = info.read_text()
    for version, cuda, words in (("1.13.1+cpu", None, ["torch 1.13.1+cpu", "no CUDA"]),
                                 (torch.__version__, '"12.4"', ["CUDA 12.4"])):
        if cuda == '"12.4"' and torch.version.cuda:
            cuda = None  # on a CUDA torch, "no CUDA" is the mismatch
            words = ["no CUDA"]
        patched = re.sub(r'^TORCH_VERSION = .*$', f'TORCH_VERSION = "{version}"', text, flags=re.M)
        info.write_text(re.sub(r"^TORCH_CUDA = .*$", f"TORCH_CUDA = {cuda}", patched, flags=re.M))
        done = run(venv, "-c", "import manifold_mixup", ok=False, cwd=tmp_path)
        assert done.returncode != 0
        message = done.stderr.strip().splitlines()[-1]
        assert message.startswith("ImportError: manifold_mixup"), done.stderr[-2000:]
        for word in words + [f"torch {torch.__version__}"]:
            assert word in message


def test_pip_install_names_the_setuptools_upgrade(venv, tmp_path):
    """The README's install line in a venv whose own setuptools is older than 77.0.3 (which
    reads pyproject.toml's licence and builds wheels): it stops before compiling anything and
    names the fix."""
    probe = ("import importlib.metadata as m, re\n"
             "try: v = tuple(int(n) for n in re.findall(r'\\d+', m.version('setuptools'))[:3])\n"
             "except m.PackageNotFoundError: v = None\n"
             "print(v is not None and v < (77, 0, 3))")
    if run(venv, "-c", probe).stdout.strip() != "True":
        pytest.skip("this Python's venv has a recent setuptools (or none)")
    done = run(venv, "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
               "--no-build-isolation", "--no-deps", ROOT, ok=False, cwd=tmp_path,
               env=user_env(MM_CMAKE_BUILD_DIR=str(tmp_path / "never-built")))
    assert done.returncode != 0
    assert "pip install --upgrade setuptools" in done.stdout + done.stderr
    assert "invalid command 'bdist_wheel'" not in done.stdout + done.stderr
    assert not (tmp_path / "never-built").exists()


def test_isolated_build_says_so_and_gives_the_flag(tmp_path):
    """pip's default, an isolated build environment, has no torch though the Python running it
    has: the message says so and names --no-build-isolation. The environment is made as pip makes
    it: PYTHONPATH names a folder under pip-build-env-* whose sitecustomize leaves sys.path with
    only that folder's packages (here: this setuptools)."""
    import importlib.metadata
    env_dir = tmp_path / "pip-build-env-test"
    site = env_dir / "site"
    overlay = env_dir / "overlay"
    site.mkdir(parents=True)
    overlay.mkdir()
    setuptools = importlib.metadata.distribution("setuptools")
    for top in {Path(f).parts[0] for f in setuptools.files}:
        found = Path(setuptools.locate_file(top))
        if found.exists() and not found.name.endswith(".pth"):
            (overlay / top).symlink_to(found)
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.path[:] = [p for p in sys.path if 'site-packages' not in p and 'dist-packages' not in p]\n"
        f"sys.path.append({str(overlay)!r})\n")
    out = tmp_path / "metadata"
    out.mkdir()
    done = run(sys.executable, "-c", f"import setuptools.build_meta as b; b.prepare_metadata_for_build_wheel({str(out)!r})",
               ok=False, cwd=ROOT, env=user_env(PYTHONPATH=str(site), PYTHONNOUSERSITE="1",
                                            MM_CMAKE_BUILD_DIR=str(tmp_path / "never-built")))
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert "isolated build environment" in said, said[-3000:]
    assert "pip install --no-build-isolation" in said
    assert f"has torch {torch.__version__}" in said
    assert not (tmp_path / "never-built").exists()


def test_a_failed_configure_does_not_block_the_next_try(tmp_path, request):
    """A first try with a C++ compiler that does not exist fails in CMake's configure, which
    leaves a cache (holding that compiler) and no build files; the next try, with the compiler
    fixed, configures afresh and builds (instead of "ninja: error: loading 'build.ninja'"). The
    folder sits beside `make`'s build/, one level below the source, so that the compile lines
    are make's and ccache has the objects."""
    build = ROOT / f".test-build-{os.getpid()}"
    request.addfinalizer(lambda: shutil.rmtree(build, ignore_errors=True))
    wheel_args = (sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-build-isolation",
                  "--no-deps", "-w", tmp_path / "wheel", ROOT)
    first = run(*wheel_args, ok=False, env=user_env(MM_CMAKE_BUILD_DIR=str(build), CXX="/nonexistent/c++"))
    assert first.returncode != 0
    assert (build / "CMakeCache.txt").exists() and not (build / "build.ninja").exists()
    run(*wheel_args, env=user_env(MM_CMAKE_BUILD_DIR=str(build)))
    assert list((tmp_path / "wheel").glob("manifold_mixup-*.whl"))


def test_sdist_holds_the_build_and_configures_without_torch_in_its_making(tmp_path):
    """The sdist, made by the PEP 517 hook python -m build calls, holds every tracked file the
    build and the tests need, no build output, and metadata that pins no torch; CMake
    configures from it (CMake refuses a target whose source file is missing)."""
    import tarfile
    out = tmp_path / "dist"
    out.mkdir()
    name = run(sys.executable, "-c", f"import setuptools.build_meta as b; print(b.build_sdist({str(out)!r}))",
               cwd=ROOT).stdout.strip().splitlines()[-1]
    with tarfile.open(out / name) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
        tar.extractall(tmp_path / "src", filter="data")
        pkg_info = tar.extractfile(f"{name[:-len('.tar.gz')]}/PKG-INFO").read().decode()
    tracked = run("git", "ls-files", cwd=ROOT, ok=False).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout: the list of tracked files is git's")
    for path in tracked:
        if not path.startswith((".ci/", ".gitignore")):
            assert path in members, f"{path} is not in the sdist"
    assert "LICENSE" in members
    assert not [m for m in members if m.endswith((".so", "_build_info.py")) or "/lib/" in m]
    assert re.findall(r"^Requires-Dist: (torch.*)$", pkg_info, re.M) == ["torch"]
    assert re.search(r"^License-Expression: BSD-3-Clause$", pkg_info, re.M)
    (src,) = (tmp_path / "src").iterdir()
    done = run("cmake", "-S", src, "-B", tmp_path / "configured", f"-DPython3_EXECUTABLE={sys.executable}")
    assert "Generating done" in done.stdout


def test_cmake_install_serves_c_hosts(tmp_path):
    """The README's C install: `cmake --install` of the build, then pkg-config and CMake. The
    prefix is not site-packages: its programs name torch's lib folder (LD_LIBRARY_PATH)."""
    prefix = tmp_path / "opt"
    run("cmake", "--install", BUILD, "--prefix", prefix)
    assert (prefix / "include" / "dlpack" / "dlpack.h").is_file()
    assert pkg_config_host(prefix / "lib" / "pkgconfig", tmp_path) == VERSION
    run("cmake", "-S", HOST, "-B", tmp_path / "cmake", f"-DCMAKE_PREFIX_PATH={prefix}")
    run("cmake", "--build", tmp_path / "cmake", env=TORCH_ELSEWHERE)
    check_host(tmp_path / "cmake" / "host", tmp_path)


def test_c_only_configure_needs_no_googletest_nor_python_headers(tmp_path):
    """`cmake -S . -B build -DMM_BUILD_PYTHON=OFF`, as the README writes it, on a machine with
    neither GoogleTest nor Python's headers (both made unfindable here)."""
    done = run("cmake", "-S", ROOT, "-B", tmp_path, "-G", "Unix Makefiles", "-DMM_BUILD_PYTHON=OFF",
               f"-DPython3_EXECUTABLE={sys.executable}", "-DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON",
               "-DPython3_INCLUDE_DIR=/nonexistent/include")
    assert "Build files have been written" in done.stdout
    targets = run("cmake", "--build", tmp_path, "--target", "help").stdout
    assert "manifold_mixup" in targets
    for test_target in ("test_mix", "test_capi", "mm_python"):
        assert test_target not in targets
