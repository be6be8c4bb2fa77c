"""The lock is current: every distribution requirements.lock names is installed at the locked version,
and the lock covers what pyproject.toml asks for. `make lock` refreshes it."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[1]
LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, str]:
    """{canonical name: version} from the lock's `name==version` lines."""
    out = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"requirements.lock: {line!r} is not name==version; regenerate it with `make lock`"
        out[canonicalize_name(m[1])] = m[2]
    return out


def _public(v: str) -> Version:
    """The version without a local tag: a CUDA build of torch 2.13.0 (2.13.0+cu126) satisfies 2.13.0."""
    return Version(Version(v).public)


def test_venv_holds_the_locked_versions():
    wrong, missing = [], []
    for name, want in sorted(locked().items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        if _public(have) != _public(want):
            wrong.append(f"{name} {have} (lock: {want})")
    assert not wrong and not missing, (
        "the venv differs from requirements.lock: "
        + "; ".join(wrong + [f"{m} not installed" for m in missing])
        + ". Run `make clean-venv test` to rebuild it from the lock, or `make lock` if pyproject.toml changed."
    )


def test_lock_satisfies_pyproject():
    """Every requirement of steerkit and its extras is pinned in the lock, inside pyproject's range."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    lock = locked()
    bad = []
    for r in reqs:
        v = lock.get(canonicalize_name(r.name))
        if v is None:
            bad.append(f"{r.name} is not in the lock")
        elif not r.specifier.contains(_public(v), prereleases=True):
            bad.append(f"{r.name}=={v} is outside pyproject's {r.specifier}")
    assert not bad, "; ".join(bad) + ": run `make lock`"


def test_lock_has_no_local_build_tags():
    """torch is locked as 2.13.0 (not 2.13.0+cpu) so that GPU users' CUDA builds satisfy it."""
    assert not [v for v in locked().values() if "+" in v]
