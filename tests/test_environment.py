"""pyproject.toml, requirements/lock.txt and environment.yml agree on the runtime deps."""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement

from dla_repro.paths import repo_root

ROOT = repo_root()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_deps() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_norm(Requirement(d).name): Requirement(d) for d in project["dependencies"]}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements/lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert "==" in line, f"lock line is not an exact pin: {line!r}"
            name, version = line.split("==", 1)
            pins[_norm(name)] = version
    return pins


def _conda_pip_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for entry in pip_section:
        if entry.startswith("-e"):
            continue
        name, version = entry.split("==", 1)
        pins[_norm(name)] = version
    return pins


def test_lock_pins_every_runtime_dependency_within_its_range():
    lock = _lock()
    for name, req in _runtime_deps().items():
        assert name in lock, f"{name} is a runtime dependency but not in requirements/lock.txt"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"lock pins {name}=={lock[name]}, outside pyproject's {req.specifier}"
        )


def test_environment_yml_matches_pyproject_and_lock():
    conda = _conda_pip_pins()
    deps = _runtime_deps()
    lock = _lock()
    assert set(conda) == set(deps), f"environment.yml vs pyproject: {set(conda) ^ set(deps)}"
    for name, version in conda.items():
        assert lock[name] == version, f"environment.yml pins {name}=={version}, lock has {lock[name]}"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python.split("=", 1)[1] in requires or requires.startswith(">=" + python.split("=", 1)[1])


def test_dev_extra_is_locked_too():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = _lock()
    for dep in project["optional-dependencies"]["dev"]:
        assert _norm(Requirement(dep).name) in lock


def test_scale_extra_is_locked_within_its_range_so_ci_installs_ray():
    """The Ray executor's extra is in the lock (``make setup`` installs it, so CI runs its tests)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = _lock()
    for dep in project["optional-dependencies"]["scale"]:
        req = Requirement(dep)
        assert _norm(req.name) in lock, f"{req.name} is in the scale extra but not in requirements/lock.txt"
        assert req.specifier.contains(lock[_norm(req.name)], prereleases=True)


def test_team_extra_is_locked_within_its_range_with_its_own_extras():
    """`make setup` installs the lock, so the team server's PostgreSQL driver (and psycopg's `binary` part)
    is there for tests/test_team_server.py in CI."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = _lock()
    for dep in project["optional-dependencies"]["team"]:
        req = Requirement(dep)
        name = _norm(req.name)
        assert name in lock and req.specifier.contains(lock[name], prereleases=True), f"lock lacks {dep}"
        if name == "psycopg" and "binary" in req.extras:  # psycopg[binary] is psycopg-binary, same version
            assert lock.get("psycopg-binary") == lock[name], f"lock lacks psycopg-binary=={lock[name]}"
