"""The main job's contract: clear one-line errors, stage config guard, finished stages skipped."""

import json
import os
import re
import subprocess
import sys

import pytest

from monosem_jax import pipeline
from monosem_jax.configs.pipeline import tiny

ENV = dict(os.environ, JAX_PLATFORMS="cpu")
CONFIG = f"{os.path.dirname(tiny.__file__)}/tiny.py:smoke"


@pytest.fixture
def run(run_binary):
    """The monosem-pipeline binary, run in this process (its exit-code plumbing: the last test)."""
    return lambda workdir, *flags: run_binary(
        pipeline.run_main, f"--workdir={workdir}", f"--config={CONFIG}", *flags
    )


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), (b"", "empty"), (b"caf\xe9 au lait\n", "UTF-8")],
)
def test_bad_corpus_is_one_clear_line(tmp_path, content, message, run):
    path = tmp_path / "stories.txt"
    if content is not None:
        path.write_bytes(content)
    out = run(tmp_path / "w", f"--config.corpus.path={path}")
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(path) in last
    assert re.search(message, last, re.IGNORECASE), last
    assert not (tmp_path / "w" / "corpus" / "summary.json").exists()
    # The failed first attempt takes its record back: the corrected command is not refused as
    # "a different config".
    assert not (tmp_path / "w" / "pipeline" / "corpus.json").exists()


def test_bad_config_value_is_one_clear_line(tmp_path, run):
    out = run(tmp_path / "w", "--config.lm.model.n_heads=3")
    assert out.returncode == 2
    assert "n_heads" in out.stderr.strip().splitlines()[-1]
    # Every section is checked before the first stage (pipeline.check_config): nothing ran and
    # nothing is recorded, so the corrected command starts clean.
    assert not (tmp_path / "w" / "corpus").exists()
    assert not (tmp_path / "w" / "pipeline").exists()


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


def test_keys_added_since_a_stage_ran_are_recorded_not_refused(tmp_path):
    """A work directory from before an upgrade that added a config key stays usable."""
    import json

    config = tiny.get_config("smoke")
    stage = next(s for s in pipeline.STAGES if s.name == "sae")
    pipeline.check_stage_config(config, str(tmp_path), stage)
    path = tmp_path / "pipeline" / "sae.json"
    old = json.loads(path.read_text())
    del old["sae"]["dead_steps"]  # as recorded by a version without the key
    path.write_text(json.dumps(old))
    pipeline.check_stage_config(config, str(tmp_path), stage)
    assert "dead_steps" in json.loads(path.read_text())["sae"]  # the record is brought up to date
    old["sae"]["d_sae"] = 7  # a real difference is still refused
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="sae.d_sae: was 7"):
        pipeline.check_stage_config(config, str(tmp_path), stage)


def test_stage_order_and_folders():
    names = [s.name for s in pipeline.STAGES]
    assert names == ["corpus", "lm", "acts", "sae", "eval", "browser", "compare", "report"]
    for stage in pipeline.STAGES:
        assert set(stage.sections) <= set(json.loads(tiny.get_config().to_json()))


def test_smoke_pipeline_end_to_end_then_a_rerun_is_a_no_op(tmp_path, run, caplog):
    caplog.set_level("INFO", logger="absl")
    out = run(tmp_path / "w")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(summary) == {"corpus", "lm", "acts", "sae", "eval", "browser", "compare", "report",
                            "wall_s"}
    assert summary["acts"]["rows"] > 0 and 0 <= summary["eval"]["ce_loss_recovered"] <= 1.5
    # Before the JSON line, a table for a person: one row per stage, then where to look next.
    lines = out.stdout.strip().splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("stage "))):-1]
    rows = {line.split()[0]: line for line in table[1:9]}
    assert list(rows) == [s.name for s in pipeline.STAGES]
    ev = summary["sae"]["explained_variance"]
    assert f"EV {ev:.3f}" in rows["sae"] and "done before" not in rows["sae"]
    assert f"CE recovered {summary['eval']['ce_loss_recovered']:.4f}" in rows["eval"]
    assert any(x.startswith("browser:") and x.split()[1].endswith("index.html") for x in table)
    assert f"tensorboard --logdir {tmp_path / 'w'}" in table[-1]
    report = (tmp_path / "w" / "report.md").read_text()
    assert "## Planted concepts" in report and "![LM loss](report/lm_loss.png)" in report
    assert (tmp_path / "w" / "report" / "lm_loss.png").stat().st_size > 1000
    caplog.clear()
    again = run(tmp_path / "w")
    assert again.returncode == 0
    assert caplog.text.count("nothing to do") >= 5  # finished stages are skipped
    assert "done before in" in next(x for x in again.stdout.splitlines() if x.startswith("lm "))


def test_report_escapes_corpus_text():
    from monosem_jax import report

    text = report.md_escape("<script>alert(1)</script> **bold** [x](y)\nnext")
    assert "<script>" not in text and "**" not in text and "[x](y)" not in text
    assert "\\<script\\>" in text and "⏎" in text


def test_report_lists_loss_by_position_in_position_order():
    from monosem_jax import report

    line = report.loss_by_position_line({"0-4": 1.75, "16-32": 0.87, "4-16": 0.98, "96-128": 0.8})
    assert line == "Loss by window position: 0-4: 1.75, 4-16: 0.98, 16-32: 0.87, 96-128: 0.80."


def test_public_api_resolves_lazily():
    import monosem_jax
    from monosem_jax import pipeline
    from monosem_jax.sae import artifact

    assert monosem_jax.run_pipeline is pipeline.run_pipeline
    assert monosem_jax.load_sae_run is artifact.load_run
    assert all(callable(getattr(monosem_jax, name)) for name in monosem_jax.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        monosem_jax.nope  # noqa: B018


def test_binary_exits_2_with_one_error_line(tmp_path):
    """The exit-code plumbing of the real process (the messages are checked in-process above)."""
    path = tmp_path / "stories.txt"
    out = subprocess.run(
        [sys.executable, "-m", "monosem_jax.pipeline", f"--workdir={tmp_path / 'w'}",
         f"--config={CONFIG}", f"--config.corpus.path={path}"],
        capture_output=True, text=True, env=ENV,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [out.stderr.strip().splitlines()[-1]], out.stderr[-2000:]
    assert str(path) in errors[0] and "no such file" in errors[0].lower()
