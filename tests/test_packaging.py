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
    needed; the test extra installs hatchling) and installed with pip --target."""
    try:
        import hatchling  # noqa: F401
    except ImportError:
        pytest.skip("hatchling is not installed (pip install -e '.[test]' installs it)")
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


def test_installed_psparse_every_command_from_elsewhere(installed, tmp_path):
    """What a user of the installed wheel types first, in a folder of their own: --help with its
    examples, dump of a .psp file and of standard input at every front-end stage, show --png
    with and without Pillow, and compile (which reads the shipped templates)."""
    _, target = installed
    env = _env(target, tmp_path / "cache")
    script = str(target / "bin" / "psparse")
    work = tmp_path / "work"
    work.mkdir()
    (work / "w.psp").write_text("# a window and two sinks\nlet w = local(3)\n"
                                "pattern = causal & (w | sink(2))\n")

    r = _run([script, "--help"], cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    assert "usage: psparse" in r.stdout and "examples:" in r.stdout
    assert "psparse show" in r.stdout.split("examples:")[1]

    # The file and standard input read alike; each front-end stage prints from the installed copy.
    text = (work / "w.psp").read_text()
    a = _run([script, "dump", "w.psp", "--stage", "canonical"], cwd=work, env=env)
    b = _run([script, "dump", "-", "--stage", "canonical"], cwd=work, env=env, input=text)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout == "causal & (local(3) | sink(2))\n"
    r = _run([script, "dump", "-", "--stage", "tree"], cwd=work, env=env, input=text)
    assert r.returncode == 0, r.stderr
    assert "let" in r.stdout and "sink" in r.stdout and "3" in r.stdout
    r = _run([script, "dump", "w.psp", "--stage", "ir"], cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    assert "Local(left=3, right=3)" in r.stdout and "Sink(count=2)" in r.stdout

    r = _run([script, "show", "w.psp", "-n", "8", "--png", "m.png"], cwd=work, env=env)
    if _has_pillow():
        assert r.returncode == 0, r.stderr
        assert (work / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Without Pillow (hidden by a package that fails to import, as a missing one does): one
    # line naming what to install, exit status 1, no file, no traceback.
    shim = tmp_path / "shim" / "PIL"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'PIL'\")\n")
    no_pil = dict(env, PYTHONPATH=os.pathsep.join([str(shim.parent), str(target)]))
    r = _run([script, "show", "w.psp", "-n", "8", "--png", "n.png"], cwd=work, env=no_pil)
    assert r.returncode == 1
    assert r.stderr == "psparse: error: writing PNG needs Pillow: pip install 'psparse[image]'\n"
    assert not (work / "n.png").exists()

    r = _run([script, "compile", "causal & local(4)", "-o", "k.py"], cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    module = (work / "k.py").read_text()
    assert module.startswith("# Generated by psparse") and "import triton" in module


def _has_pillow() -> bool:
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True
