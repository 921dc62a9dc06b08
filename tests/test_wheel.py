"""The package as users install it: ``pip wheel . -w dist`` (in pip's isolated build
environment, as a user's pip builds it), that wheel installed into a fresh virtualenv, and
tests/test_native.py run there from outside the checkout, so that the source tree cannot
shadow the installed package: the C loop compiled for plain x86-64, loaded, and equal to the
scan on every instruction set this CPU runs.

The fresh virtualenv has no pip and no packages of its own but the wheel: it sees this
environment's packages (jax, pytest, ...) through a ``.pth`` line, which adds their directory
without reading the ``.pth`` files there, so this checkout's editable install stays out.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
X86_64_LINUX = sys.platform == "linux" and os.uname().machine == "x86_64"


def run(*command, cwd=None):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(map(str, command))}:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_the_wheel_installed_in_a_fresh_virtualenv_passes_the_c_loop_tests(tmp_path):
    source = tmp_path / "source"  # the files a wheel is built from, none of the built ones
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source)
    skip = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "flaxlstm", source / "flaxlstm", ignore=skip)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("flaxlstm-*.whl")
    if X86_64_LINUX:  # the C loop is built there (setup.py)
        assert any(
            n.startswith("flaxlstm/native/_lstm_cpu") for n in zipfile.ZipFile(wheel).namelist()
        )

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel)

    tests = tmp_path / "tests"  # test_native.py alone, run from its own folder
    tests.mkdir()
    shutil.copy(ROOT / "tests" / "test_native.py", tests)
    where = run(python, "-c", "import flaxlstm; print(flaxlstm.__file__)", cwd=tests)
    assert where.startswith(site), where  # the wheel's copy, not the checkout's
    report = run(
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", tests, cwd=tests
    )
    if X86_64_LINUX:
        assert " passed" in report and " failed" not in report
    else:
        pytest.skip("the C loop is built for x86-64 Linux only")
