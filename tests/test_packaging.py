"""environment.yml and pyproject.toml name the same packages with the same version ranges."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parents[1]


def requirement_name(spec: str) -> str:
    """'scikit-learn>=1.3' -> 'scikit-learn' (normalised as pip does: case, - _ .)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def split_env():
    deps = environment()["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip_lists = [d["pip"] for d in deps if isinstance(d, dict)]
    assert len(pip_lists) == 1, "one pip: section"
    return conda, pip_lists[0]


def spec_key(spec: str) -> tuple[str, str]:
    """(normalised name, version specifier without spaces)."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*?)\s*", spec)
    return requirement_name(m.group(1)), re.sub(r"\s+", "", m.group(2))


def test_pip_section_matches_pyproject_dependencies_and_dev_extra():
    project = pyproject()["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    _, pip = split_env()
    assert "-e ." in pip, "the environment installs sslkit itself"
    env_specs = [spec_key(s) for s in pip if s != "-e ."]
    assert len(env_specs) == len(set(env_specs)), "a package listed twice"
    assert sorted(env_specs) == sorted(spec_key(s) for s in wanted)


def test_python_bound_matches_requires_python():
    conda, _ = split_env()
    pythons = [d for d in conda if requirement_name(d) == "python"]
    assert len(pythons) == 1
    requires = pyproject()["project"]["requires-python"]
    assert spec_key(pythons[0])[1] == re.sub(r"\s+", "", requires)
    assert "pip" in conda


def test_console_script_and_module_entry_point():
    scripts = pyproject()["project"]["scripts"]
    assert scripts == {"sslkit": "sslkit.cli:main"}
    from sslkit import cli

    assert callable(cli.main)
    assert (ROOT / "sslkit" / "__main__.py").is_file()


def test_every_dependency_has_a_lower_bound():
    project = pyproject()["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert ">=" in spec_key(spec)[1], spec


def test_spec_key_normalises():
    assert spec_key("Scikit_Learn >= 1.3") == ("scikit-learn", ">=1.3")
    assert spec_key("torch>=2.1,<3") == ("torch", ">=2.1,<3")
