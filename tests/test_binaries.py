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
