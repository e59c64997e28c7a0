"""sslkit.profiles: the selection rule (SSLKIT_PROFILE, else NBGRADER_EXECUTION -> ci, else gpu
with CUDA, else laptop) and the profiles' consistency with the rest of the package."""

from __future__ import annotations

import pytest
import torch

from sslkit import profiles
from sslkit.data import DATASETS
from sslkit.errors import SSLKitError
from sslkit.models import ARCHS
from sslkit.profiles import PROFILES, get_profile, profile_name


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("SSLKIT_PROFILE", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    return monkeypatch


def set_cuda(monkeypatch, available: bool):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)


@pytest.mark.parametrize("cuda,expected", [(True, "gpu"), (False, "laptop")])
def test_default_follows_cuda(env, cuda, expected):
    set_cuda(env, cuda)
    assert profile_name() == expected
    assert get_profile().name == expected


@pytest.mark.parametrize("cuda", [True, False])
def test_nbgrader_execution_selects_ci(env, cuda):
    set_cuda(env, cuda)
    env.setenv("NBGRADER_EXECUTION", "autograde")
    assert profile_name() == "ci"


@pytest.mark.parametrize("cuda", [True, False])
def test_sslkit_profile_wins(env, cuda):
    set_cuda(env, cuda)
    env.setenv("NBGRADER_EXECUTION", "autograde")
    env.setenv("SSLKIT_PROFILE", "laptop")
    assert profile_name() == "laptop"
    assert get_profile() is PROFILES["laptop"]


def test_explicit_name_wins_over_environment(env):
    env.setenv("SSLKIT_PROFILE", "laptop")
    assert get_profile("gpu").name == "gpu"


def test_unknown_profile_is_a_one_line_error(env):
    env.setenv("SSLKIT_PROFILE", "supercomputer")
    with pytest.raises(SSLKitError) as err:
        get_profile()
    msg = str(err.value)
    assert "\n" not in msg and "supercomputer" in msg
    assert all(name in msg for name in PROFILES)
    with pytest.raises(SSLKitError):
        get_profile("huge")


def test_profiles_name_real_datasets_and_archs():
    for name, p in PROFILES.items():
        assert p.name == name
        assert p.dataset in DATASETS and p.arch in ARCHS
        assert p.batch_size >= 2 and p.epochs >= 1 and 0 <= p.warmup_epochs < p.epochs
    # ci is the smallest: every size no larger than the laptop's
    ci, laptop = PROFILES["ci"], PROFILES["laptop"]
    assert ci.epochs <= laptop.epochs and ci.batch_size <= laptop.batch_size
    assert ci.n_train is not None and ci.n_train >= ci.batch_size


def test_module_reads_environment_at_call_time(env):
    # The profile is not frozen at import: changing the variable changes the answer.
    env.setenv("SSLKIT_PROFILE", "ci")
    assert profiles.profile_name() == "ci"
    env.setenv("SSLKIT_PROFILE", "gpu")
    assert profiles.profile_name() == "gpu"


def test_unknown_profile_message_names_its_source(env):
    """--profile ci2 was told to "set SSLKIT_PROFILE", which the user had not touched."""
    with pytest.raises(SSLKitError) as err:
        get_profile("ci2")
    assert "SSLKIT_PROFILE" not in str(err.value) and "--profile ci" in str(err.value)
    env.setenv("SSLKIT_PROFILE", "ci2")
    with pytest.raises(SSLKitError) as err:
        get_profile()
    assert "SSLKIT_PROFILE" in str(err.value) and "'ci2'" in str(err.value)
