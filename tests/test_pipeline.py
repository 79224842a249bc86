"""The main job's contract: clear one-line errors, stage config guard, finished stages skipped."""

import json
import os
import re
import subprocess
import sys

import pytest

from configs.pipeline import tiny
from monosem_jax import pipeline

ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _run(workdir, *flags):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "monosem_jax.pipeline",
            f"--workdir={workdir}",
            f"--config={os.path.dirname(tiny.__file__)}/tiny.py:smoke",
            *flags,
        ],
        capture_output=True,
        text=True,
        env=ENV,
    )


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), (b"", "empty"), (b"caf\xe9 au lait\n", "UTF-8")],
)
def test_bad_corpus_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "stories.txt"
    if content is not None:
        path.write_bytes(content)
    out = _run(tmp_path / "w", f"--config.corpus.path={path}")
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(path) in last
    assert re.search(message, last, re.IGNORECASE), last
    assert not (tmp_path / "w" / "corpus" / "summary.json").exists()


def test_bad_config_value_is_one_clear_line(tmp_path):
    out = _run(tmp_path / "w", "--config.lm.model.n_heads=3")
    assert out.returncode == 2
    assert "n_heads" in out.stderr.strip().splitlines()[-1]


def test_changed_config_on_a_finished_stage_is_refused(tmp_path):
    config = tiny.get_config("smoke")
    stage = pipeline.STAGES[0]
    pipeline.check_stage_config(config, str(tmp_path), stage)
    recorded = (tmp_path / "pipeline" / "corpus.json").read_text()
    pipeline.check_stage_config(config, str(tmp_path), stage)  # same config: fine
    config.corpus.seed = 7
    with pytest.raises(ValueError, match="corpus.seed: was 0, now 7"):
        pipeline.check_stage_config(config, str(tmp_path), stage)
    assert (tmp_path / "pipeline" / "corpus.json").read_text() == recorded


def test_stage_order_and_folders():
    names = [s.name for s in pipeline.STAGES]
    assert names == ["corpus", "lm", "acts", "sae", "eval", "browser"]
    for stage in pipeline.STAGES:
        assert set(stage.sections) <= set(json.loads(tiny.get_config().to_json()))
