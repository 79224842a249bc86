"""Test setup: 8 simulated CPU devices and strict rank promotion, before JAX is first used."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")


import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_lm_workdir(tmp_path_factory):
    """A work directory with the smoke corpus and a trained smoke LM (built once per session).

    Tests that write into a work directory copy it first (see `copy_workdir`).
    """
    from monosem_jax.configs.pipeline import tiny
    from monosem_jax.corpus import prepare
    from monosem_jax.gpt import train

    workdir = str(tmp_path_factory.mktemp("smoke_lm"))
    config = tiny.get_config("smoke")
    prepare.prepare(config, workdir)
    train.train_and_evaluate(config.lm, workdir)
    return workdir


@pytest.fixture(scope="session")
def sae_workdir(smoke_lm_workdir, tmp_path_factory):
    """The smoke LM plus a capture and a 40-step run of the default SAE (its only SAE run).

    Shared by the eval, steering, search and attribution tests; copy it before writing.
    """
    from monosem_jax.activations import capture
    from monosem_jax.configs.capture import default as capture_default
    from monosem_jax.configs.sae import default as sae_default
    from monosem_jax.sae import train as sae_train

    workdir = str(tmp_path_factory.mktemp("sae") / "w")
    shutil.copytree(smoke_lm_workdir, workdir)
    capture.capture(capture_default.get_config("smoke"), workdir)
    sae_train.train_sae(sae_default.get_config("smoke"), workdir)
    return workdir


@pytest.fixture
def copy_workdir(tmp_path):
    def copy(src):
        dst = str(tmp_path / "w")
        shutil.copytree(src, dst)
        return dst

    return copy
