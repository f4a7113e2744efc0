"""The wheel: built from this checkout, installed (not editable) into a folder of its own, and
run from another directory, it must find its grammar inside the installed package.

This is the failure that a source checkout hides: grammar/ and templates/ sit beside the
package there, so only an installed copy shows whether they were shipped."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel path, install folder): the wheel built without build isolation (no network
    needed; .ci/run installs hatchling) and installed with pip --target."""
    try:
        import hatchling  # noqa: F401
    except ImportError:
        pytest.skip("hatchling is not installed (pip install hatchling; .ci/run does)")
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "--disable-pip-version-check", "-w", str(dist), str(ROOT)])
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list(dist.glob("psparse-*.whl"))
    assert len(wheels) == 1, wheels
    target = tmp / "site"
    r = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
              "--disable-pip-version-check", "--target", str(target), str(wheels[0])])
    assert r.returncode == 0, r.stdout + r.stderr
    return wheels[0], target


def _env(target: Path, cache: Path) -> dict:
    env = dict(os.environ)
    # The installed copy comes first on the path; the checkout is not on it at all (the
    # commands run from another directory), so nothing can fall back to the source tree.
    env["PYTHONPATH"] = str(target)
    env["PSPARSE_CACHE_DIR"] = str(cache)
    env.pop("PSPARSE_TRACEBACK", None)
    return env


def test_wheel_ships_grammar_and_templates(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "patterndsl/grammar/psparse.lark" in names
    assert "patterndsl/templates/README.md" in names
    assert "patterndsl/cli.py" in names and "patterndsl/show.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "psparse = patterndsl.cli:main" in text
    # Nothing from the checkout's tests or build leftovers.
    assert not any(n.startswith(("tests/", "grammar/", "templates/", ".venv")) for n in names)


def test_installed_psparse_runs_from_elsewhere(installed, tmp_path):
    _, target = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(target, tmp_path / "cache")
    script = target / "bin" / "psparse"
    assert script.exists()
    r = _run([str(script), "show", "local(2)", "-n", "4"], cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr
    rows = [line.split()[1:] for line in r.stdout.splitlines()
            if line[:3].strip().isdigit() and line.rstrip()[-1] in "■·"]
    # local(2) at n = 4: every pair but (0, 3) and (3, 0).
    assert rows == [["■", "■", "■", "·"], ["■", "■", "■", "■"],
                    ["■", "■", "■", "■"], ["·", "■", "■", "■"]]

    probe = ("import patterndsl, patterndsl.parser as p, patterndsl.resources as r\n"
             "print(patterndsl.__file__)\n"
             "print(r.resource_dir('grammar'))\n"
             "print(r.resource_dir('templates'))\n"
             "print(p.grammar_text() == (r.resource_dir('grammar') / 'psparse.lark').read_text())\n")
    r = _run([sys.executable, "-c", probe], cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr
    pkg_file, grammar_dir, templates_dir, same = r.stdout.split("\n")[:4]
    package = target / "patterndsl"
    assert Path(pkg_file).parent == package
    assert Path(grammar_dir) == package / "grammar"
    assert Path(templates_dir) == package / "templates"
    assert same == "True"


def test_installed_psparse_reports_errors(installed, tmp_path):
    _, target = installed
    env = _env(target, tmp_path / "cache")
    r = _run([str(target / "bin" / "psparse"), "show", "locl(2)", "-n", "4"],
             cwd=tmp_path, env=env)
    assert r.returncode == 1
    assert r.stderr.startswith("psparse: error: ")
    assert "Traceback" not in r.stderr
    r = _run([str(target / "bin" / "psparse"), "--version"], cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.startswith("psparse ")
