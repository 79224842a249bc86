"""The exit-code plumbing of the binaries whose test files launch no failing process of their own:
a user error in the real process exits with code 2 and one `error:` line, the last on stderr.

Each stage's messages are checked in-process next to its other tests; the other binaries' real
processes are launched in test_pipeline, test_labels (monosem-prepare), test_gpt_train,
test_sae_train, test_steer, test_search and test_attribution.
"""

import os
import subprocess
import sys

import pytest

# binary: (module run by `python -m`, what its error line says about an empty work directory)
BINARIES = {
    "monosem-capture": ("monosem_jax.activations.main", "no trained LM"),
    "monosem-sweep": ("monosem_jax.sae.sweep_main", "no activation store"),
    "monosem-eval": ("monosem_jax.analysis.eval_main", "no trained LM"),
    "monosem-browse": ("monosem_jax.browser.main", "no pipeline SAE"),
}


@pytest.mark.parametrize("binary", sorted(BINARIES))
def test_empty_workdir_exits_2_with_one_error_line(binary, tmp_path):
    module, message = BINARIES[binary]
    out = subprocess.run(
        [sys.executable, "-m", module, f"--workdir={tmp_path}"],  # the binary's default config
        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [out.stderr.strip().splitlines()[-1]], out.stderr[-2000:]
    assert message in errors[0] and str(tmp_path) in errors[0], errors[0]
    assert "Traceback" not in out.stderr


SAE_CONFIG = "monosem_jax/configs/sae/default.py"


@pytest.mark.parametrize("argv, message", [
    (["--config.profile_steps=1.5"], "flag --config.profile_steps=1.5: invalid literal for int()"),
    (["--config.nokey=1"], "bad --config override: the config has no field 'nokey'"),
    (["--config=/nonexistent/config.py"], "cannot load the --config file /nonexistent/config.py: "
                                         "no such file"),
    ([f"--config={SAE_CONFIG}:zz"], "ValueError: unknown config arg 'zz'"),
    (["--config=BAD_PY"], "cannot load the --config file: SyntaxError"),
    (["--bogus=1"], "Unknown command line flag 'bogus'"),
])
def test_bad_command_lines_are_one_error_line_and_exit_2(tmp_path, run_binary, argv, message):
    from monosem_jax.sae import main as sae_main

    bad_py = tmp_path / "bad.py"
    bad_py.write_text("def get_config(:\n")
    argv = [a.replace("BAD_PY", str(bad_py)) for a in argv]
    out = run_binary(sae_main.run_main, f"--workdir={tmp_path / 'w'}", *argv)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], lines
    assert "Traceback" not in out.stderr and not (tmp_path / "w").exists()


def test_an_unexpected_failure_is_one_line_with_its_traceback_kept(tmp_path, run_binary):
    from monosem_jax.sae import main as sae_main

    (tmp_path / "file").write_text("not a folder")
    out = run_binary(sae_main.run_main, f"--workdir={tmp_path / 'file' / 'w'}")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unexpected NotADirectoryError: ") and "MONOSEM_DEBUG=1" in last
    saved = last.split("traceback in ")[1].split(";")[0]
    assert "Traceback (most recent call last)" in open(saved).read()
    os.remove(saved)
