"""Test setup: 8 simulated CPU devices and strict rank promotion, before JAX is first used."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")


import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402


def pytest_configure(config):
    """One persistent XLA compilation cache per session (a fresh folder, removed at the end), for
    this process and the binaries tests launch: a program compiles once, in the first process that
    needs it, not again in each launched binary nor when the library builds a fresh jit of the
    same program (every train_and_evaluate or train_sae call compiles its step anew).
    """
    cache = tempfile.mkdtemp(prefix="monosem-test-xla-cache-")
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
    settings = {
        "jax_compilation_cache_dir": cache,
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    for name, value in settings.items():
        jax.config.update(name, value)  # this process (nothing has compiled yet)
        os.environ[name.upper()] = str(value)  # the binaries tests launch
    # ml_collections loads a binary's --config file with a deprecated importlib call; binaries
    # run in this process (`run_binary`) would repeat its warning in every test summary.
    config.addinivalue_line(
        "filterwarnings", r"ignore:the load_module\(\) method is deprecated:DeprecationWarning"
    )


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


@pytest.fixture
def run_binary(capfd):
    """Runs a binary in this process: `run_binary(module.run_main, "--workdir=W", ...)`.

    The binary's own flags, config overrides, stage and one-line `error:` report
    (`monosem_jax.cli.run_in_process`) without a new process's imports and compiles; returns a
    CompletedProcess with the exit code the binary would exit with and what it printed. Each
    binary's exit-code plumbing keeps one test that launches the real process.
    """
    from monosem_jax import cli

    def run(run_main, *argv):
        capfd.readouterr()  # only this run's output
        code = cli.run_in_process(run_main, [str(a) for a in argv])
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess([run_main.__module__, *argv], code, out, err)

    return run
