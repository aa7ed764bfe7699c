"""The set-up scripts on a Python that refuses system installs (PEP 668), and the built wheel in a
clean virtual environment (not editable: missing package data shows up here).

Both run offline: the stand-in interpreter and the wheel's environment see the packages of the
environment running the tests (torch and the dependencies, as CI's machine has them), pip is told
``--no-index``, and the wheel is built without build isolation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def copy_checkout(target: Path) -> Path:
    """The project's files as a fresh clone has them (tracked and new, not ignored; no .venv)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell the project's files from build outputs")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def site_directories() -> list[str]:
    """This interpreter's site-packages folders (those of its virtual environment included): where
    torch, numpy and the other dependencies were installed, whichever Python made the environment."""
    return [
        p for p in dict.fromkeys(sys.path) if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()
    ]


def see_these_packages(site_dir: Path) -> None:
    """Make ``site_dir``'s interpreter see this interpreter's installed packages, through a .pth file
    of plain path entries: the .pth files inside them (this checkout's editable install) are not run."""
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "zz-test-packages.pth").write_text("".join(f"{p}\n" for p in site_directories()))


def externally_managed_python(folder: Path) -> Path:
    """A stand-in for Debian's /usr/bin/python3 as CI's machine might have it: this interpreter's base
    binary with a prefix of its own whose stdlib holds an EXTERNALLY-MANAGED marker (so pip refuses to
    install into it), and whose site-packages see the packages of the environment running the tests
    (torch and pip included). Not a virtual environment. Built from what is installed, so it works on a
    test environment made from any Python (Debian's own has neither pip nor torch of its own)."""
    real = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    stdlib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix, "installed_base": sys.base_prefix})["stdlib"])
    (folder / "bin").mkdir(parents=True)
    shutil.copy2(real, folder / "bin" / "python3")
    lib = folder / "lib" / stdlib.name
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name not in ("site-packages", "dist-packages"):  # never the real ones: they must not change
            (lib / entry.name).symlink_to(entry)
    (lib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=a stand-in for a distribution's Python\n")
    python = folder / "bin" / "python3"
    # its own site-packages folder, wherever this build of Python looks for it (Debian: dist-packages)
    listed = subprocess.run(
        [str(python), "-c", "import site; print('\\n'.join(site.getsitepackages()))"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    ).stdout.split()
    own = [Path(p) for p in listed if Path(p).is_relative_to(folder)]
    assert own, f"the stand-in {python} looks for site-packages only outside its prefix: {listed}"
    see_these_packages(own[0])
    return python


def tree_listing(folder: Path) -> list[str]:
    """Every path under ``folder``, symlinks listed but not followed."""
    return sorted(
        str(Path(root, name).relative_to(folder)) for root, dirs, files in os.walk(folder) for name in dirs + files
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHON")}
    env.update(PIP_NO_INDEX="1", **extra)  # nothing may come from the network
    return env


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_demo_script_sets_up_a_venv_on_an_externally_managed_python(tmp_path):
    stock = externally_managed_python(tmp_path / "stock")
    if subprocess.run([str(stock), "-m", "pip", "--version"], capture_output=True, env=clean_env()).returncode:
        pytest.skip(f"no pip among this environment's packages ({site_directories()}): the stand-in needs one")
    before = tree_listing(tmp_path / "stock")
    refused = subprocess.run(
        [str(stock), "-m", "pip", "install", "--dry-run", "tqdm"], capture_output=True, text=True, env=clean_env()
    )
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr  # the stand-in is real
    checkout = copy_checkout(tmp_path / "clone")
    env = clean_env(PATH=f"{stock.parent}:/usr/bin:/bin")
    first = subprocess.run(
        ["bash", "scripts/demo.sh", "--help"], cwd=checkout, capture_output=True, text=True, env=env, timeout=900
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "usage: minimaxad demo" in first.stdout
    assert f"creating {checkout / '.venv'}" in first.stdout and "reusing its torch" in first.stdout
    venv_python = checkout / ".venv" / "bin" / "python"
    where = subprocess.run(
        [str(venv_python), "-c", "import minimaxad, sys; print(minimaxad.__file__, sys.prefix)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    package, prefix = where.stdout.split()
    assert package.startswith(str(checkout / "src")) and prefix == str(checkout / ".venv")
    assert tree_listing(tmp_path / "stock") == before  # nothing was installed into the system's Python
    # the second run finds everything in place: no pip at all
    second = subprocess.run(
        ["bash", "scripts/demo.sh", "--help"], cwd=checkout, capture_output=True, text=True, env=env, timeout=300
    )
    assert second.returncode == 0 and "is up to date" in second.stdout and "installing" not in second.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_setup_says_what_to_install_without_venv(tmp_path):
    """An interpreter whose venv module cannot create environments (Debian without python3-venv)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    python = fake_bin / "python3"
    python.write_text(
        f"#!/bin/sh\ncase \"$*\" in *'-m venv'*) echo 'ensurepip is not available' >&2; exit 1;; esac\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    checkout = copy_checkout(tmp_path / "clone")
    done = subprocess.run(
        ["bash", "scripts/setup.sh"],
        cwd=checkout,
        capture_output=True,
        text=True,
        env=clean_env(PATH=f"{fake_bin}:/usr/bin:/bin"),
        timeout=300,
    )
    assert done.returncode == 1
    assert "apt-get install python3-venv" in done.stderr and "ensurepip is not available" in done.stderr
    assert not (checkout / ".venv").exists()


def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path, trained_checkpoint):
    checkout = copy_checkout(tmp_path / "src")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(checkout),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("minimaxad-*.whl")
    venv = tmp_path / "venv"
    # torch and the other dependencies (and pip) come from this environment's packages; the package
    # itself only from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    (own_site,) = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    see_these_packages(Path(own_site))
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stderr
    run = tmp_path / "elsewhere"
    run.mkdir()
    env = clean_env(PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import minimaxad, importlib.resources as r; print(minimaxad.__file__); "
            "print(r.files('minimaxad.inference').joinpath('static/index.html').is_file())",
        ],
        capture_output=True,
        text=True,
        cwd=run,
        env=env,
    )
    location, has_page = probe.stdout.split()
    assert location.startswith(str(venv)) and "site-packages" in location, location  # not the source tree
    assert has_page == "True"  # package data is in the wheel
    helped = subprocess.run(
        [str(venv / "bin" / "minimaxad"), "demo", "--help"], capture_output=True, text=True, cwd=run, env=env
    )
    assert helped.returncode == 0 and "usage: minimaxad demo" in helped.stdout
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 110, 100)).save(run / "photo.png")
    predicted = subprocess.run(
        [
            str(venv / "bin" / "minimaxad"),
            "predict",
            "--checkpoint",
            str(trained_checkpoint),
            str(run / "photo.png"),
            "--output",
            str(run / "out"),
            "--report",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=run,
        env=env,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    scores = json.loads((run / "out" / "scores.json").read_text())
    assert (run / "out" / "report.html").is_file() and (run / "out" / "heatmaps" / "photo.png").is_file()
    assert len(json.dumps(scores)) > 0 and "photo.png" in json.dumps(scores)
