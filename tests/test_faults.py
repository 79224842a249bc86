"""The short version of experiments/faults.py: its comparison catches what it must, one SIGKILL
of an SAE run, an LM that diverges after a resume, a killed export, a full disk (as root)."""

import errno
import importlib.util
import json
import os
import shutil
import subprocess

import pytest

from monosem_jax import cli
from monosem_jax.configs.sae import default as sae_default
from monosem_jax.corpus import main as corpus_main
from monosem_jax.gpt import main as gpt_main
from monosem_jax.interop import export_main
from monosem_jax.sae import sweep as sae_sweep

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "experiments", "faults.py")
_spec = importlib.util.spec_from_file_location("faults", _PATH)
faults = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(faults)

SAE_SMOKE = f"--config={cli.default_config('sae/default.py')}:smoke"


@pytest.fixture
def workspace(tmp_path):
    """A faults.Workspace: every run of a test uses the one path W (paths are recorded)."""
    return faults.Workspace(str(tmp_path / "faults"),
                            xla_cache=False)  # the session's cache (conftest) is in the env


def test_comparison_catches_changes_and_ignores_timings(sae_workdir, copy_workdir):
    ref = faults.manifest(sae_workdir)
    assert {"params:lm", "params:sae/topk"} <= ref.keys()
    assert any(k.startswith("acts/") and k.endswith("COMPLETE") for k in ref)
    workdir = copy_workdir(sae_workdir)
    assert faults.compare(ref, faults.manifest(workdir)) == ([], 0.0)
    before = faults.finished_files(workdir)
    assert any(p.startswith("sae/topk/checkpoints/") for p in before)

    # Timings and resume bookkeeping differ between any two runs: not compared.
    summary_path = os.path.join(workdir, "sae", "topk", "summary.json")
    summary = json.load(open(summary_path))
    summary.update(wall_s=summary["wall_s"] + 1, resumed_from_step=20)
    json.dump(summary, open(summary_path, "w"))
    assert faults.compare(ref, faults.manifest(workdir))[0] == []
    # A number, a store chunk, a file gone, a visible extra file: each is an artifact differing;
    # a hidden temporary folder is a leftover.
    summary["l0"] += 1e-6
    json.dump(summary, open(summary_path, "w"))
    chunk = os.path.join(workdir, "acts", "blocks.0.hook_resid_post", "acts", "c", "0", "0")
    with open(chunk, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    os.remove(os.path.join(workdir, "sae", "topk", "feature_density.npy"))
    os.makedirs(os.path.join(workdir, "browser.tmp123"))
    open(os.path.join(workdir, "browser.tmp123", "x.js"), "w").close()
    os.makedirs(os.path.join(workdir, ".data.tmp-x"))
    open(os.path.join(workdir, ".data.tmp-x", "y.npy"), "w").close()
    differing, _ = faults.compare(ref, faults.manifest(workdir))
    assert {d["artifact"] for d in differing} == {
        "sae/topk/summary.json", "acts/blocks.0.hook_resid_post/acts/c/0/0",
        "sae/topk/feature_density.npy", "browser.tmp123/x.js"}
    assert faults.leftovers(ref, workdir) == [".data.tmp-x/y.npy"]
    nbytes, paths = faults.lost(before, workdir)
    assert nbytes > 0 and "sae/topk/feature_density.npy (gone)" in paths
    assert "sae/topk/summary.json" in paths and "acts/summary.json" not in paths


def test_sae_run_killed_and_rerun_equals_uninterrupted(sae_workdir, workspace):
    ws = workspace
    cmd = [faults.binary("monosem-train-sae"), f"--workdir={ws.workdir}", SAE_SMOKE,
           "--config.name=faults"]
    ws.reset(sae_workdir)
    ref_proc = faults.run(cmd, ws.env, timeout=300)
    assert ref_proc.popen.returncode == 0, faults.tail(ref_proc.stderr)
    ref = faults.manifest(ws.keep("reference"), ("sae/faults",))

    ws.reset(sae_workdir)
    proc = faults.Proc(cmd, ws.env)
    first_checkpoint = os.path.join(ws.workdir, "sae", "faults", "checkpoints", "10",
                                    "sha256.json")  # written once the step is final
    assert faults.wait_until(proc, lambda: os.path.exists(first_checkpoint), 300) is not None
    assert proc.kill(), "the run finished before it could be killed"
    proc.finish(10)
    record = faults._rerun_and_compare(ws, cmd, ref, 0.0, ("sae/faults",))
    assert record["recovered"] and record["reruns"] == 1, record
    assert record["artifacts_differing"] == [] and record["params_max_rel_diff"] == 0.0
    assert record["bytes_lost"] == 0  # the finished LM, store and default SAE untouched
    summary = json.load(open(os.path.join(ws.workdir, "sae", "faults", "summary.json")))
    assert 10 <= summary["resumed_from_step"] < 40  # it did resume, not start again


def test_sweep_killed_while_writing_members_resumes_without_rewriting(sae_workdir,
                                                                      copy_workdir):
    workdir = copy_workdir(sae_workdir)
    sae_sweep.sweep(sae_default.get_config("smoke"), workdir)
    parts = ("sweep/sweep", "sae/sweep_0", "sae/sweep_1", "sae/sweep_2", "sae/sweep_3")
    ref = faults.manifest(workdir, parts)
    # What a kill while the members are written leaves: members 0 and 1 finished, 2 saved
    # without its summary, 3 not saved, no table (the rerun once failed here: "Checkpoint for
    # step 40 already exists").
    for rel in ("sweep/sweep/summary.json", "sweep/sweep/table.csv", "sweep/sweep/frontier.png",
                "sae/sweep_2/summary.json", "sae/sweep_2/feature_density.npy",
                "sae/sweep_3/summary.json", "sae/sweep_3/feature_density.npy"):
        os.remove(os.path.join(workdir, rel))
    shutil.rmtree(os.path.join(workdir, "sae", "sweep_3", "checkpoints"))
    before = faults.finished_files(workdir)
    assert "sae/sweep_1/summary.json" in before and "sae/sweep_2/summary.json" not in before
    sae_sweep.sweep(sae_default.get_config("smoke"), workdir)
    assert faults.lost(before, workdir) == (0, [])  # finished members not rewritten
    assert faults.compare(ref, faults.manifest(workdir, parts)) == ([], 0.0)


def test_lm_killed_after_its_last_checkpoint_resumes_to_the_same_files(smoke_lm_workdir,
                                                                       copy_workdir):
    from monosem_jax.configs.pipeline import tiny
    from monosem_jax.gpt import train

    ref = faults.manifest(smoke_lm_workdir, ("lm",))
    workdir = copy_workdir(smoke_lm_workdir)
    # Killed after the last checkpoint and the final eval row, before the summary: the rerun
    # runs no step (it once wrote train_loss null and the eval_loss row twice).
    os.remove(os.path.join(workdir, "lm", "summary.json"))
    train.train_and_evaluate(tiny.get_config("smoke").lm, workdir)
    assert faults.compare(ref, faults.manifest(workdir, ("lm",))) == ([], 0.0)


def test_lm_diverging_after_resume_keeps_last_good_checkpoint(smoke_lm_workdir, copy_workdir,
                                                              run_binary):
    # The state a kill after checkpoint 16 leaves: no summary, no later step.
    workdir = copy_workdir(smoke_lm_workdir)
    ckpts = os.path.join(workdir, "lm", "checkpoints")
    os.remove(os.path.join(workdir, "lm", "summary.json"))
    for step in os.listdir(ckpts):
        if int(step) > 16:
            shutil.rmtree(os.path.join(ckpts, step))
    out = run_binary(gpt_main.run_main, f"--workdir={workdir}",
                     f"--config={cli.default_config('gpt/tiny.py')}:smoke",
                     "--config.train.learning_rate=1e30")  # the loss overflows at once
    verdict = faults.nan_verdict(out.returncode, out.stderr, ckpts,
                                 os.path.join(workdir, "lm", "summary.json"), None)
    assert verdict["ok"], verdict
    assert verdict["latest_checkpoint"] == 16 and verdict["step_named"] > 16


def test_killed_export_is_complete_or_absent(sae_workdir, workspace, run_binary):
    ws = workspace
    out_dir = ws.path("export", "out")
    ws.reset(sae_workdir)
    assert run_binary(export_main.run_main, f"--workdir={ws.workdir}",
                      f"--out={out_dir}").returncode == 0
    ref = faults.manifest(out_dir, params=False)
    shutil.rmtree(os.path.dirname(out_dir))
    cmd = [faults.binary("monosem-export"), f"--workdir={ws.workdir}", f"--out={out_dir}"]
    proc = faults.Proc(cmd, ws.env)
    parent = os.path.dirname(out_dir)
    # Killed as soon as its temporary folder shows: before or after the rename.
    faults.wait_until(proc, lambda: bool(faults._temp_siblings(parent, ".out.tmp-")), 300)
    proc.kill()
    proc.finish(10)
    if not os.path.exists(out_dir):  # absent: the same command makes it
        assert run_binary(export_main.run_main, f"--workdir={ws.workdir}",
                          f"--out={out_dir}").returncode == 0
    assert faults.compare(ref, faults.manifest(out_dir, params=False))[0] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")
def test_full_disk_is_one_error_line_and_the_rerun_finishes(tmp_path, run_binary):
    workdir = str(tmp_path / "w")
    os.makedirs(workdir)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", workdir],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        args = (f"--workdir={workdir}",
                f"--config={cli.default_config('pipeline/tiny.py')}:smoke")
        out = run_binary(corpus_main.run_main, *args)
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert out.returncode == 2 and len(errors) == 1, out.stderr[-2000:]
        assert "no space left on the device" in errors[0]
        subprocess.run(["mount", "-o", "remount,size=64m", "tmpfs", workdir], check=True)
        assert run_binary(corpus_main.run_main, *args).returncode == 0
        assert os.path.exists(os.path.join(workdir, "corpus", "summary.json"))
    finally:
        subprocess.run(["umount", workdir], check=False)


def test_out_of_space_errors_are_recognised():
    assert cli._out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert cli._out_of_space(OSError("76589 requested and 26560 written"))  # np.save
    assert not cli._out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not cli._out_of_space(ValueError("28"))


def test_a_stage_duration_comes_from_the_run_s_stage_lines():
    lines = [(0.5, "corpus"), (2.0, "lm"), (9.5, "acts")]
    assert faults.stage_duration(lines, "corpus") == 1.5
    assert faults.stage_duration(lines, "lm") == 7.5
    assert faults.stage_duration(lines, "acts") is None  # killed in it: no later line
    assert faults.stage_duration(lines, "sae") is None
