"""One writer per work directory part: a second writer is refused in one line, a dead holder's
lock is taken over, different parts (two SAE runs on one store) and readers never block."""

import os
import signal
import subprocess
import sys
import time

import pytest

from monosem_jax import atomic_dirs, pipeline, workdir_lock
from monosem_jax.configs.pipeline import tiny
from monosem_jax.errors import WorkdirBusy

ENV = dict(os.environ, JAX_PLATFORMS="cpu")
HOLDER = (
    "import sys, time\n"
    "from monosem_jax import workdir_lock\n"
    "with workdir_lock.hold(sys.argv[1], sys.argv[2]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


def _holder(workdir, part):
    """A real process holding `part` of `workdir` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir), part],
                            stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder_then_a_killed_holder_is_taken_over(
        tmp_path, caplog):
    proc = _holder(tmp_path, "sae-topk")
    try:
        with pytest.raises(WorkdirBusy, match=rf"'sae-topk' part .* pid {proc.pid} on "):
            with workdir_lock.hold(str(tmp_path), "sae-topk"):
                pass
        # Another part of the same work directory (a second SAE on the store) is free.
        with workdir_lock.hold(str(tmp_path), "sae-anthropic_2024"):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    caplog.set_level("WARNING", logger="absl")
    with workdir_lock.hold(str(tmp_path), "sae-topk"):  # the kernel released the dead one's lock
        pass
    assert f"taking over the 'sae-topk' lock of pid {proc.pid}" in caplog.text
    caplog.clear()
    with workdir_lock.hold(str(tmp_path), "sae-topk"):  # a clean release leaves no record
        pass
    assert "taking over" not in caplog.text


def test_a_second_pipeline_on_one_workdir_exits_2_in_one_line_and_the_first_goes_on(
        tmp_path, run_binary):
    workdir = tmp_path / "w"
    config = f"{os.path.dirname(tiny.__file__)}/tiny.py:smoke"
    first = subprocess.Popen(
        [sys.executable, "-m", "monosem_jax.pipeline", f"--workdir={workdir}",
         f"--config={config}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        record = workdir / workdir_lock.LOCK_DIR / "pipeline.lock"
        deadline = time.time() + 120
        while not (record.exists() and record.stat().st_size) and time.time() < deadline:
            assert first.poll() is None, "the first pipeline ended early"
            time.sleep(0.2)
        second = run_binary(pipeline.run_main, f"--workdir={workdir}", f"--config={config}")
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and f"pid {first.pid}" in lines[-1], lines
        assert "'pipeline' part" in lines[-1]
        assert first.poll() is None  # unaffected: still running, still the holder
        assert f'"pid": {first.pid}' in record.read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".", "x y", "/abs", "a\\b"])
def test_names_that_would_leave_their_folder_are_one_clear_error(tmp_path, run_binary, name):
    from monosem_jax.sae import main as sae_main

    (tmp_path / "w").mkdir()
    out = run_binary(sae_main.run_main, f"--workdir={tmp_path / 'w'}",
                     f"--config.name={name}")
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config.name=") and "single folder name" in last, last
    assert sorted(os.listdir(tmp_path)) == ["w"] and not os.listdir(tmp_path / "w")


def test_sweep_and_reader_names_are_checked_too(tmp_path, run_binary):
    from monosem_jax import metrics_io
    from monosem_jax.sae import sweep_main

    out = run_binary(sweep_main.run_main, f"--workdir={tmp_path}", "--config.sweep.name=../s")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: config.sweep.name='../s'")
    assert not (tmp_path.parent / "s").exists()
    with pytest.raises(ValueError, match="config.sae_name='../x' is invalid"):
        metrics_io.resolve_sae_name(str(tmp_path), "../x")


def test_a_killed_writers_temporary_folder_is_removed_by_the_next_writer(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    made = atomic_dirs.temp_dir(str(tmp_path), "data")
    host, pid, _ = os.path.basename(made)[len(".data.tmp-"):].split("-")
    assert pid == str(os.getpid())
    others = {  # name: whether the next writer of "data" removes it
        f".data.tmp-{host}-{dead.pid}-abc": True,  # a dead process of this host
        os.path.basename(made): False,  # a live one (this process)
        f".data.tmp-otherhost-{dead.pid}-abc": False,  # another host's: cannot tell
        f".data.old-{host}-{dead.pid}-abc": False,  # another kind
        f".lm.tmp-{host}-{dead.pid}-abc": False,  # another label
        "data": False,
    }
    for name in others:
        os.makedirs(tmp_path / name, exist_ok=True)
    second = atomic_dirs.temp_dir(str(tmp_path), "data")
    left = set(os.listdir(tmp_path))
    assert left == {n for n, removed in others.items() if not removed} | {
        os.path.basename(second)}
