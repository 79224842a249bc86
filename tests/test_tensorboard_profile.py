"""TensorBoard event files (read back with a protobuf parser of our own framing code, not the
writer's) hold exactly metrics.jsonl's numbers for the LM, an SAE and each sweep member, once per
step after a resume; profile_steps leaves a jax.profiler trace; bad values are one clear error."""

import glob
import json
import os
import shutil
import struct
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from monosem_jax import metrics_io, pipeline
from monosem_jax.configs.pipeline import tiny
from monosem_jax.configs.sae import default as sae_default
from monosem_jax.gpt import main as gpt_main
from monosem_jax.gpt import train as gpt_train
from monosem_jax.sae import main as sae_main
from monosem_jax.sae import run as sae_run
from monosem_jax.sae import sweep as sae_sweep
from monosem_jax.sae import train as sae_train

INVALID = "config.profile_steps={} is invalid; valid: an integer >= 0"


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C (Castagnoli), rotated and offset."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path) -> list:
    """The Event protos of one file: TFRecord framing (length, its CRC, data, its CRC)."""
    data = open(path, "rb").read()
    events, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        body = data[pos + 12:pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert header_crc == _masked_crc32c(header) and body_crc == _masked_crc32c(body), path
        events.append(event_pb2.Event.FromString(body))
        pos += 16 + length
    assert pos == len(data), f"{path}: a truncated record"
    return events


def event_files(run_dir) -> list[str]:
    return sorted(glob.glob(os.path.join(run_dir, "*.tfevents.*")))


def scalars(run_dir) -> dict:
    """{tag: [(step, value), ...]} of one run folder's event files, in file order."""
    out = {}
    for path in event_files(run_dir):
        events = read_events(path)
        assert events[0].file_version == "brain.Event:2"
        for event in events:
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def jsonl_scalars(path, member=None) -> dict:
    """The same view of metrics.jsonl: its numbers as float32, the rows of `member`."""
    out = {}
    for line in open(path):
        row = json.loads(line)
        if row.get("member") != member:
            continue
        for key, value in row.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key not in ("step", "time") and numeric:
                out.setdefault(key, []).append((row["step"], float(np.float32(value))))
    return out


def assert_events_match_metrics(stage_dir, member=None):
    run_dir = os.path.join(stage_dir, "tensorboard", *([member] if member else []))
    got = scalars(run_dir)
    want = jsonl_scalars(os.path.join(stage_dir, "metrics.jsonl"), member)
    assert got == want and want
    for tag, points in got.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: a step twice or out of order: {steps}"
    return got


def xplanes(profile_dir) -> list[str]:
    return glob.glob(os.path.join(profile_dir, "plugins", "profile", "*", "*.xplane.pb"))


def _sae_config(sae_workdir, **overrides):
    config = sae_default.get_config("smoke")
    config.store = os.path.join(sae_workdir, "acts")  # read only: runs go to their own folder
    config.k_start = 0  # one compiled step (no anneal)
    config.update(overrides)
    return config


def test_lm_and_sae_event_files_hold_metrics_jsonl(sae_workdir):
    lm = assert_events_match_metrics(os.path.join(sae_workdir, "lm"))
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "eval_loss"} <= set(lm)
    assert [s for s, _ in lm["loss"]] == [4, 8, 12, 16, 20, 24]
    assert [s for s, _ in lm["eval_loss"]] == [12, 24]
    sae = assert_events_match_metrics(os.path.join(sae_workdir, "sae", "topk"))
    assert {"loss", "mse", "explained_variance", "l0", "dead_fraction"} <= set(sae)
    assert [s for s, _ in sae["l0"]] == [10, 20, 30, 40]


def test_rows_are_flushed_and_a_resume_rebuilds_the_events_from_the_rows_kept(tmp_path):
    path, tb = tmp_path / "metrics.jsonl", tmp_path / "tensorboard"
    writer = metrics_io.MetricsWriter(path, tensorboard=tb)
    for step in (1, 2, 3):
        writer.write(step, loss=1.0 / step, name="text", flag=True, bad=float("nan"))
    # Not closed (as a killed run): the rows are on disk, only their finite numbers.
    assert scalars(tb) == {"loss": [(1, 1.0), (2, 0.5), (3, float(np.float32(1 / 3)))]}
    resumed = metrics_io.MetricsWriter(path, resume_step=2, tensorboard=tb)
    assert scalars(tb) == {"loss": [(1, 1.0), (2, 0.5)]}
    resumed.write(3, loss=0.25)
    resumed.close()
    writer.close()
    assert scalars(tb) == {"loss": [(1, 1.0), (2, 0.5), (3, 0.25)]}
    (rebuilt,) = event_files(tb)
    # A TensorBoard that read the old file drops what it holds (a START at step 0 purges).
    starts = [e for e in read_events(rebuilt) if e.HasField("session_log")]
    assert [(e.step, e.session_log.status) for e in starts] == [(0, event_pb2.SessionLog.START)]


def test_sae_resume_and_profile(sae_workdir, tmp_path, caplog):
    caplog.set_level("INFO", logger="absl")
    workdir = str(tmp_path)
    run_dir = tmp_path / "sae" / "tb"
    config = _sae_config(sae_workdir, name="tb", steps=20, checkpoint_every=10, log_every=5,
                         profile_steps=5)
    sae_train.train_sae(config, workdir)
    (trace,) = xplanes(run_dir / "profile")
    assert os.path.getsize(trace) > 0
    assert f"profile of steps 2..6 written to {run_dir / 'profile'}" in caplog.text
    first = assert_events_match_metrics(run_dir)
    # Restart from the checkpoint at step 10 (as after a kill past it): rows 15 and 20 redone.
    shutil.rmtree(run_dir / "checkpoints" / "20")
    os.remove(run_dir / "summary.json")
    config.profile_steps = 0  # watching a run differently is no different config
    summary = sae_train.train_sae(config, workdir)
    assert summary["resumed_from_step"] == 10
    again = assert_events_match_metrics(run_dir)
    assert [s for s, _ in again["loss"]] == [5, 10, 15, 20]
    np.testing.assert_allclose([v for _, v in again["loss"]], [v for _, v in first["loss"]],
                               rtol=1e-5)
    assert len(event_files(run_dir / "tensorboard")) == 1
    assert len(xplanes(run_dir / "profile")) == 1  # the rerun traced nothing


def test_sweep_writes_one_run_per_member_and_its_profile(sae_workdir, tmp_path):
    config = _sae_config(sae_workdir, steps=4, log_every=2, checkpoint_every=4, profile_steps=2)
    config.sweep.name = "tbs"
    config.sweep.grid = ("k=4,8",)
    sae_sweep.sweep(config, str(tmp_path))
    sweep_dir = tmp_path / "sweep" / "tbs"
    assert sorted(os.listdir(sweep_dir / "tensorboard")) == ["tbs_0", "tbs_1"]
    assert not event_files(sweep_dir / "tensorboard")  # every row names its member
    members = [assert_events_match_metrics(sweep_dir, f"tbs_{i}") for i in (0, 1)]
    assert all([s for s, _ in m["l0"]] == [2, 4] for m in members)
    assert members[0]["l0"] != members[1]["l0"]  # k 4 and 8: each member its own numbers
    assert len(xplanes(sweep_dir / "profile")) == 1


def test_lm_resume_rebuilds_events_and_profiles(smoke_lm_workdir, copy_workdir):
    workdir = copy_workdir(smoke_lm_workdir)
    lm_dir = os.path.join(workdir, "lm")
    shutil.rmtree(os.path.join(lm_dir, "checkpoints", "24"))  # resume from step 16
    os.remove(os.path.join(lm_dir, "summary.json"))
    config = tiny.get_config("smoke").lm
    config.profile_steps = 3
    summary = gpt_train.train_and_evaluate(config, workdir)
    assert summary["resumed_from_step"] == 16
    lm = assert_events_match_metrics(lm_dir)
    assert [s for s, _ in lm["loss"]] == [4, 8, 12, 16, 20, 24]
    assert [s for s, _ in lm["eval_loss"]] == [12, 24]
    assert len(event_files(os.path.join(lm_dir, "tensorboard"))) == 1
    assert len(xplanes(os.path.join(lm_dir, "profile"))) == 1


def test_bad_profile_steps_are_one_clear_error(tmp_path, run_binary):
    for binary in (sae_main, gpt_main):
        workdir = tmp_path / binary.__name__
        out = run_binary(binary.run_main, f"--workdir={workdir}", "--config.profile_steps=-1")
        assert out.returncode == 2
        assert out.stderr.strip().splitlines()[-1].startswith("error: " + INVALID.format(-1))
        assert not workdir.exists() or not any(workdir.iterdir())  # nothing written
    # A non-integer reaches the stages only from Python (the flag parser refuses it first).
    sae_config = ml_collections.ConfigDict(dict(sae_default.get_config().to_dict(),
                                                profile_steps=1.5))
    with pytest.raises(ValueError, match=INVALID.format(1.5).replace(".", r"\.")):
        sae_run.TrainConfig.from_config(sae_config)
    lm_config = ml_collections.ConfigDict(dict(tiny.get_config("smoke").lm.to_dict(),
                                               profile_steps=1.5))
    with pytest.raises(ValueError, match=INVALID.format(1.5).replace(".", r"\.")):
        gpt_train.train_and_evaluate(lm_config, str(tmp_path / "lm15"))
    out = subprocess.run(
        [sys.executable, "-m", "monosem_jax.sae.main", f"--workdir={tmp_path / 'w'}",
         "--config.profile_steps=1.5"], capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode != 0
    assert "--config.profile_steps=1.5" in out.stderr.strip().splitlines()[0]


def test_pipeline_takes_profile_steps_without_calling_it_another_config(tmp_path):
    config = tiny.get_config("smoke")
    stages = [s for s in pipeline.STAGES if s.name in ("lm", "sae")]
    for stage in stages:
        pipeline.check_stage_config(config, str(tmp_path), stage)
    config.lm.profile_steps, config.sae.profile_steps = 3, 5  # --config.sae.profile_steps=5
    for stage in stages:
        pipeline.check_stage_config(config, str(tmp_path), stage)  # not refused
    assert sae_run.TrainConfig.from_config(config.sae).profile_steps == 5
    # A record from before the key is fine too, and a real difference is still refused.
    path = tmp_path / "pipeline" / "sae.json"
    old = json.loads(path.read_text())
    del old["sae"]["profile_steps"]
    old["sae"]["d_sae"] = 7
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="sae.d_sae: was 7"):
        pipeline.check_stage_config(config, str(tmp_path), stages[1])
