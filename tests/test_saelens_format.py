"""SAELens-format SAEs both ways: the exported files read by a NumPy re-implementation of SAELens's
encode/decode give our reported activations and reconstructions, export -> import gives the SAE
back, foreign SAELens folders import exactly, an imported SAE is evaluated and searched, and bad
inputs are one clear error line with nothing written. No torch, no SAELens: safetensors' NumPy API.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

from monosem_jax.analysis import eval_main
from monosem_jax.configs.eval import default as eval_default
from monosem_jax.configs.sae import default as sae_default
from monosem_jax.configs.search import default as search_default
from monosem_jax.interop import export_main, import_main, saelens_files
from monosem_jax.interop import saelens_format as fmt
from monosem_jax.intervene import search_main
from monosem_jax.sae import artifact as sae_artifact
from monosem_jax.sae import model as sae_model
from monosem_jax.sae import train as sae_train

ENV = dict(os.environ, JAX_PLATFORMS="cpu")
TRAINED = ("topk", "anthropic_2024", "jumprelu")  # topk: the fixture's run; the others 10 steps


@pytest.fixture(scope="module")
def workdir(sae_workdir, tmp_path_factory):
    """The fixture's work dir (its topk run) plus short anthropic_2024 and jumprelu runs."""
    w = str(tmp_path_factory.mktemp("saelens") / "w")
    shutil.copytree(sae_workdir, w)
    for variant in ("anthropic_2024", "jumprelu"):
        config = sae_default.get_config("smoke")
        config.variant, config.steps = variant, 10
        sae_train.train_sae(config, w)
    return w


@pytest.fixture(scope="module")
def rows(workdir):
    """[512, d] hook activations from the store: rows 0-255 tested, 256-511 set thresholds."""
    store = sae_artifact.training_store("", "blocks.0.hook_resid_post", workdir)
    return np.asarray(store.read_rows(0, 512), np.float32)


def _sae(workdir, name):
    return sae_artifact.load_sae(workdir, name)


def _host(params):
    return {k: np.array(jax.device_get(v)) for k, v in params.items()}  # writable copies


@pytest.fixture(scope="module")
def variants(workdir, rows):
    """Real trained SAEs of every variant: the three trained runs, plus the variants whose
    encoder reads the same parameters relabelled (towards_2023, batchtopk from topk; jl,
    matryoshka from anthropic_2024). JumpReLU and batchtopk thresholds are set where about
    half the positive pre-activations of other rows lie, so the threshold decides (a 10-step
    jumprelu run still has its 0.001 init)."""
    topk, l1, jump = (_sae(workdir, n) for n in TRAINED)
    x_ND = rows[256:] * topk.norm_scale

    def half_fire(sae, params):
        z_NF = np.asarray(sae_model.variant_preacts(sae.sae_cfg, params, x_ND))
        return np.median(np.where(z_NF > 0, z_NF, np.nan), axis=0)

    jump_params = dict(jump.params)
    theta_F = np.nan_to_num(half_fire(jump, jump.params), nan=1.0)
    jump_params["log_threshold_F"] = np.log(theta_F).astype(np.float32)
    bt_cfg = dataclasses.replace(topk.sae_cfg, variant="batchtopk")
    bt_params = {**topk.params, "threshold": np.float32(np.nanmedian(half_fire(
        dataclasses.replace(topk, sae_cfg=bt_cfg), topk.params)))}
    return {
        "topk": topk,
        "anthropic_2024": l1,
        "jumprelu": dataclasses.replace(jump, params=jump_params),
        "towards_2023": dataclasses.replace(
            topk, sae_cfg=dataclasses.replace(topk.sae_cfg, variant="towards_2023")),
        "batchtopk": dataclasses.replace(topk, sae_cfg=bt_cfg, params=bt_params),
        "jl": dataclasses.replace(l1, sae_cfg=dataclasses.replace(l1.sae_cfg, variant="jl")),
        "matryoshka": dataclasses.replace(
            l1, sae_cfg=dataclasses.replace(l1.sae_cfg, variant="matryoshka")),
    }


# ----------------------------------------------------------------------------- NumPy SAELens


def saelens_encode(cfg: dict, t: dict, x_ND: np.ndarray) -> np.ndarray:
    """SAELens 6.x StandardSAE / TopKSAE / JumpReLUSAE .encode, in float64."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    u_ND = x_ND - t["b_dec"] if cfg["apply_b_dec_to_input"] else x_ND
    z_NF = u_ND @ t["W_enc"] + t["b_enc"]
    if cfg["architecture"] == "standard":
        return np.maximum(z_NF, 0.0)
    if cfg["architecture"] == "jumprelu":
        return np.maximum(z_NF, 0.0) * (z_NF > t["threshold"])
    if cfg.get("rescale_acts_by_decoder_norm"):
        z_NF = z_NF * np.linalg.norm(t["W_dec"], axis=1)
    idx_NK = np.argsort(-z_NF, axis=1)[:, : cfg["k"]]
    f_NF = np.zeros_like(z_NF)
    np.put_along_axis(f_NF, idx_NK, np.maximum(np.take_along_axis(z_NF, idx_NK, 1), 0.0), 1)
    return f_NF


def saelens_decode(cfg: dict, t: dict, f_NF: np.ndarray) -> np.ndarray:
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    if cfg["architecture"] == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        f_NF = f_NF / np.linalg.norm(t["W_dec"], axis=1)
    return f_NF @ t["W_dec"] + t["b_dec"]


def _close(actual, expected, rtol=1e-5):
    expected = np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol,
                               atol=rtol * max(np.abs(expected).max(), 1e-12))


def _export(run_binary, workdir, name, out):
    return run_binary(export_main.run_main, f"--workdir={workdir}", f"--config.sae_name={name}",
                      f"--out={out}")


def _import(run_binary, workdir, src, *flags):
    return run_binary(import_main.run_main, f"--workdir={workdir}", f"--from={src}", *flags)


def _read(folder):
    cfg = json.load(open(os.path.join(folder, fmt.CFG_FILENAME)))
    return cfg, safetensors.numpy.load_file(os.path.join(folder, fmt.WEIGHTS_FILENAME))


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", TRAINED)
def test_export_writes_what_saelens_reads(workdir, name, run_binary, tmp_path):
    out = tmp_path / "out"
    proc = _export(run_binary, workdir, name, out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    sae = _sae(workdir, name)
    cfg, tensors = _read(out)
    architecture = {"topk": "topk", "anthropic_2024": "standard", "jumprelu": "jumprelu"}[name]
    assert cfg["architecture"] == summary["architecture"] == architecture
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (32, 128, "float32")
    assert cfg["apply_b_dec_to_input"] is (name == "topk")
    assert cfg["normalize_activations"] == "none"
    if name == "topk":
        assert cfg["k"] == int(sae.hparams["k"]) == 8
        assert cfg["rescale_acts_by_decoder_norm"] is False
    md = cfg["metadata"]
    assert md["hook_name"] == sae.hook == "blocks.0.hook_resid_post" and md["hook_layer"] == 0
    assert md["context_size"] == 32 and md["model_name"] == "monosem_jax_gpt_2l_32d"
    assert int(md["sae_lens_version"].split(".")[0]) >= 6 and md["hook_head_index"] is None
    assert md["monosem_jax"]["norm_scale"] == sae.norm_scale
    assert md["monosem_jax"]["variant"] == name
    shapes = {"W_enc": (32, 128), "b_enc": (128,), "W_dec": (128, 32), "b_dec": (32,)}
    if name == "jumprelu":
        shapes["threshold"] = (128,)
    assert {k: v.shape for k, v in tensors.items()} == shapes
    assert all(v.dtype == np.float32 for v in tensors.values())
    density = np.load(os.path.join(workdir, "sae", name, "feature_density.npy"))
    sparsity = safetensors.numpy.load_file(out / fmt.SPARSITY_FILENAME)["sparsity"]
    np.testing.assert_allclose(sparsity, np.log10(density + 1e-10), rtol=1e-6)
    assert summary["files"] == sorted(os.listdir(out))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("variant", ["topk", "anthropic_2024", "jumprelu", "towards_2023",
                                     "batchtopk", "jl", "matryoshka"])
def test_saelens_math_on_exported_files_matches_ours(variants, rows, variant, tmp_path):
    sae = variants[variant]
    cfg, tensors = fmt.to_saelens(variant, _host(sae.params), sae.norm_scale,
                                  int(sae.hparams["k"]))
    saelens_files.write_folder(str(tmp_path / "sae"), cfg, tensors)
    cfg, tensors = _read(tmp_path / "sae")  # through the files, as SAELens reads them
    x_ND = rows[:256].astype(np.float64)
    f_NF = saelens_encode(cfg, tensors, x_ND)
    ours_NF = np.asarray(sae_artifact.feature_acts(sae, rows[None, :256]))[0]
    _close(ours_NF, f_NF)
    assert 0 < np.mean(f_NF > 0) < 0.95  # the sparsity rule is exercised
    _close(np.asarray(sae_artifact.reconstruct(sae, rows[None, :256]))[0],
           saelens_decode(cfg, tensors, f_NF))


def test_edge_cases_zero_decoder_row_pre6_config_and_nonpositive_thresholds(variants, rows):
    x_ND = rows[:256].astype(np.float64)
    # A zero decoder row reports 0 however its latent fires; the export makes it never fire.
    l1 = variants["anthropic_2024"]
    params = _host(l1.params)
    params["w_dec_FD"][5] = 0.0
    cfg, tensors = fmt.to_saelens("anthropic_2024", params, l1.norm_scale)
    assert np.all(np.isfinite(np.concatenate([t.ravel() for t in tensors.values()])))
    sae = dataclasses.replace(l1, params=params)
    _close(np.asarray(sae_artifact.feature_acts(sae, rows[None, :256]))[0],
           saelens_encode(cfg, tensors, x_ND))
    # A pre-6 flat cfg.json (hook_point, activation_fn "topk", apply_b_dec_to_input defaulting
    # to true) reads as SAELens's handle_pre_6_0_config converts it.
    topk = variants["topk"]
    cfg, tensors = fmt.to_saelens("topk", _host(topk.params), topk.norm_scale, 8)
    flat = {"d_in": 32, "d_sae": 128, "dtype": "float32", "hook_point": topk.hook,
            "activation_fn": "topk", "activation_fn_kwargs": {"k": 8},
            "normalize_activations": False}
    back = fmt.from_saelens(flat, tensors)
    assert (back.variant, back.hook, back.sae_config["k"], back.norm_scale) == (
        "topk", topk.hook, 8, 1.0)
    # (ours reports f_i‖W_dec,i‖: these rows have norm 1/norm_scale after the export's fold)
    norms_F = np.linalg.norm(tensors["W_dec"].astype(np.float64), axis=1)
    _close(np.asarray(sae_model.feature_acts(sae_model.SAEConfig(**back.sae_config),
                                             back.params, rows[:256], {"k": 8})),
           saelens_encode(cfg, tensors, x_ND) * norms_F)
    # JumpReLU thresholds <= 0 act as ReLU in SAELens (ReLU first); ours gets the tiny θ.
    jump = variants["jumprelu"]
    cfg, tensors = fmt.to_saelens("jumprelu", _host(jump.params), jump.norm_scale)
    tensors["threshold"][:10] = 0.0
    tensors["threshold"][10:20] = -0.5
    back = fmt.from_saelens(cfg, tensors)
    assert back.variant == "jumprelu" and not back.ours and np.all(
        np.isfinite(back.params["log_threshold_F"]))
    f_NF = np.asarray(sae_model.feature_acts(sae_model.SAEConfig(**back.sae_config),
                                             back.params, rows[:256]))
    expected_NF = saelens_encode(cfg, tensors, x_ND) * norms_F
    assert np.any(expected_NF[:, :20] > 0)
    _close(f_NF, expected_NF)


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("variant", ["topk", "anthropic_2024", "jumprelu", "towards_2023",
                                     "batchtopk", "jl", "matryoshka"])
def test_to_and_from_saelens_gives_the_sae_back(variants, variant):
    sae = variants[variant]
    cfg, tensors = fmt.to_saelens(variant, _host(sae.params), sae.norm_scale,
                                  int(sae.hparams["k"]))
    cfg["metadata"] = {"hook_name": sae.hook, fmt.METADATA_KEY: {
        "variant": variant, "norm_scale": sae.norm_scale, "hparams": {"k": 8},
        "sae_config": dataclasses.asdict(sae.sae_cfg)}}
    back = fmt.from_saelens(json.loads(json.dumps(cfg)), tensors)
    assert back.ours and back.variant == variant and back.norm_scale == sae.norm_scale
    assert sae_model.SAEConfig(**back.sae_config) == sae.sae_cfg
    expected = _host(sae_model.fold_decoder_norms(sae.sae_cfg, sae.params))
    assert set(back.params) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(back.params[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("name", TRAINED)
def test_export_then_import_cli_round_trip(workdir, rows, name, run_binary, tmp_path):
    out = tmp_path / "out"
    assert _export(run_binary, workdir, name, out).returncode == 0
    proc = _import(run_binary, workdir, out, f"--config.name=rt_{name}")
    assert proc.returncode == 0, proc.stderr
    original, back = _sae(workdir, name), _sae(workdir, f"rt_{name}")
    assert (back.sae_cfg, back.hook, back.norm_scale) == (original.sae_cfg, original.hook,
                                                          original.norm_scale)
    assert int(back.hparams["k"]) == int(original.hparams["k"])
    expected = _host(sae_model.fold_decoder_norms(original.sae_cfg, original.params))
    for key, value in expected.items():
        np.testing.assert_allclose(np.asarray(back.params[key]), value, rtol=1e-6, atol=1e-7)
    x = rows[None, :256]
    _close(np.asarray(sae_artifact.feature_acts(back, x)),
           np.asarray(sae_artifact.feature_acts(original, x)))
    _close(np.asarray(sae_artifact.reconstruct(back, x)),
           np.asarray(sae_artifact.reconstruct(original, x)))
    run = os.path.join(workdir, "sae", f"rt_{name}")
    np.testing.assert_allclose(np.load(os.path.join(run, "feature_density.npy")),
                               np.load(os.path.join(workdir, "sae", name, "feature_density.npy")),
                               rtol=1e-5, atol=1e-9)


# ----------------------------------------------------------------------------- foreign SAEs


def _foreign(variants, tmp_path, name, architecture, pre_bias, rescale=False):
    """A SAELens folder as SAELens's save_model writes one, from our exported trained weights
    without our record (so nothing is unfolded): the flags change the SAE, the weights are real."""
    src = {"standard": "anthropic_2024", "topk": "topk", "jumprelu": "jumprelu"}[architecture]
    exported = tmp_path / f"export_{name}"
    # Exported with its norm_scale folded in: the SAE of hook activations our run is.
    sae = variants[src]
    cfg_core, tensors = fmt.to_saelens(src, _host(sae.params), sae.norm_scale, 8)
    if rescale:  # decoder norms SAELens's TopK rescales by (unit rows would make it a no-op)
        tensors["W_dec"] *= np.linspace(0.5, 2.0, 128, dtype=np.float32)[:, None]
    cfg = {**cfg_core, "apply_b_dec_to_input": pre_bias, "metadata": {
        "sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
        "hook_name": "blocks.0.hook_resid_post", "model_name": "elsewhere", "context_size": 32}}
    if architecture == "topk":
        cfg["rescale_acts_by_decoder_norm"] = rescale
    saelens_files.write_folder(str(exported), cfg, tensors)
    return exported


@pytest.mark.parametrize("architecture,pre_bias,rescale,variant", [
    ("standard", False, False, "anthropic_2024"),
    ("standard", True, False, "towards_2023"),
    ("topk", True, False, "topk"),
    ("topk", False, True, "topk"),
    ("jumprelu", False, False, "jumprelu"),
    ("jumprelu", True, False, "jumprelu"),
])
def test_foreign_saelens_sae_imports_exactly(workdir, variants, rows, architecture, pre_bias,
                                            rescale, variant, run_binary, tmp_path):
    name = f"f_{architecture}_{int(pre_bias)}{int(rescale)}"
    src = _foreign(variants, tmp_path, name, architecture, pre_bias, rescale)
    proc = _import(run_binary, workdir, src, f"--config.name={name}")
    assert proc.returncode == 0, proc.stderr
    sae = _sae(workdir, name)
    assert sae.sae_cfg.variant == variant and sae.norm_scale == 1.0
    cfg, tensors = _read(src)
    x_ND = rows[:256].astype(np.float64)
    f_NF = saelens_encode(cfg, tensors, x_ND)
    # Ours reports f_i‖W_dec,i‖ of its own decoder (the rescale fold made those rows unit).
    norms_F = np.linalg.norm(np.asarray(sae.params["w_dec_FD"], np.float64), axis=1)
    unit = rescale
    _close(np.asarray(sae_artifact.feature_acts(sae, rows[None, :256]))[0],
           f_NF if unit else f_NF * norms_F)
    _close(np.asarray(sae_artifact.reconstruct(sae, rows[None, :256]))[0],
           saelens_decode(cfg, tensors, f_NF))


def test_imported_sae_is_evaluated_and_searched(workdir, variants, run_binary, tmp_path):
    src = _foreign(variants, tmp_path, "evaluated", "jumprelu", True)
    assert _import(run_binary, workdir, src).returncode == 0  # name "" = the folder's
    name = "export_evaluated"
    config = os.path.join(os.path.dirname(eval_default.__file__), "default.py:smoke")
    proc = run_binary(eval_main.run_main, f"--workdir={workdir}", f"--config={config}",
                      f"--config.sae_name={name}")
    assert proc.returncode == 0, proc.stderr
    evaluated = json.load(open(os.path.join(workdir, "eval", f"{name}.json")))
    assert evaluated["sae_name"] == name and evaluated["hook"] == "blocks.0.hook_resid_post"
    assert np.isfinite(evaluated["explained_variance"]) and evaluated["l0"] > 0
    config = os.path.join(os.path.dirname(search_default.__file__), "default.py:smoke")
    proc = run_binary(search_main.run_main, f"--workdir={workdir}", f"--config={config}",
                      f"--config.sae_name={name}", "--config.prompt=The fish swam in the sea.",
                      "--config.name=imported")
    assert proc.returncode == 0, proc.stderr
    assert json.load(open(os.path.join(workdir, "search", "imported.json")))["top"]


# ----------------------------------------------------------------------------- bad inputs


def _edit_cfg(folder, **changes):
    path = os.path.join(folder, fmt.CFG_FILENAME)
    cfg = json.load(open(path))
    for key, value in changes.items():
        if key.startswith("metadata."):
            cfg["metadata"][key.split(".", 1)[1]] = value
        else:
            cfg[key] = value
    json.dump(cfg, open(path, "w"))


def _edit_tensors(folder, **changes):
    path = os.path.join(folder, fmt.WEIGHTS_FILENAME)
    tensors = safetensors.numpy.load_file(path)
    for key, value in changes.items():
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    safetensors.numpy.save_file(tensors, path)


def _nan_w_dec(folder):
    w = safetensors.numpy.load_file(os.path.join(folder, fmt.WEIGHTS_FILENAME))["W_dec"]
    w[3, 4] = np.nan
    _edit_tensors(folder, W_dec=w)


BAD_IMPORTS = {
    "missing folder": (lambda f: shutil.rmtree(f), [], "no such folder"),
    "missing cfg.json": (lambda f: os.remove(os.path.join(f, "cfg.json")), [], "cfg.json is "
                         "missing"),
    "missing weights": (lambda f: os.remove(os.path.join(f, fmt.WEIGHTS_FILENAME)), [],
                        "sae_weights.safetensors is missing"),
    "unknown architecture": (lambda f: _edit_cfg(f, architecture="gated"), [],
                             "architecture 'gated' is not supported"),
    "missing tensor": (lambda f: _edit_tensors(f, threshold=None), [], "no tensor 'threshold'"),
    "wrong shape": (lambda f: _edit_tensors(f, b_enc=np.zeros(127, np.float32)), [],
                    "tensor b_enc has shape (127,)"),
    "non-finite": (_nan_w_dec, [], "tensor W_dec has non-finite values"),
    "d_in vs hook": (lambda f: None, ["--config.hook=blocks.1.hook_mlp_post"],
                     "d_in=32 does not match hook blocks.1.hook_mlp_post"),
    "unknown hook": (lambda f: _edit_cfg(f, **{"metadata.hook_name": "blocks.9.hook_resid_post"}),
                     [], "unknown hook 'blocks.9.hook_resid_post'"),
    "no hook": (lambda f: _edit_cfg(f, metadata={}), [], "records no metadata.hook_name"),
    "normalization": (lambda f: _edit_cfg(f, normalize_activations="layer_norm"), [],
                      "normalize_activations='layer_norm' is not supported"),
    "existing run": (lambda f: None, ["--config.name=topk"], "already exists"),
    "no --from": (lambda f: None, ["--from="], "--from is required"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMPORTS))
def test_bad_import_is_one_error_line_and_writes_nothing(workdir, variants, case, run_binary,
                                                        tmp_path):
    edit, flags, message = BAD_IMPORTS[case]
    src = _foreign(variants, tmp_path, "bad", "jumprelu", False)
    edit(str(src))
    before = sorted(os.listdir(workdir)), sorted(os.listdir(os.path.join(workdir, "sae")))
    topk_config = open(os.path.join(workdir, "sae", "topk", "config.json")).read()
    proc = _import(run_binary, workdir, src, "--config.name=bad", *flags)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert (sorted(os.listdir(workdir)), sorted(os.listdir(os.path.join(workdir, "sae")))) == before
    assert open(os.path.join(workdir, "sae", "topk", "config.json")).read() == topk_config


def test_bad_export_is_one_error_line_and_overwrites_nothing(workdir, run_binary, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _export(run_binary, workdir, "topk", out)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "exists and is not an empty folder" in errors[0], proc.stderr
    assert os.listdir(out) == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["taken"]
    proc = run_binary(export_main.run_main, f"--workdir={workdir}", "--config.sae_name=topk")
    assert proc.returncode == 2 and "--out is required" in proc.stderr
    proc = _export(run_binary, workdir, "nope", tmp_path / "new")
    assert proc.returncode == 2 and "no SAE run 'nope'" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_import_binary_exits_2_with_one_error_line(workdir, tmp_path):
    """The exit-code plumbing of the real process (the messages are checked in-process above)."""
    out = subprocess.run(
        [sys.executable, "-m", "monosem_jax.interop.import_main", f"--workdir={workdir}",
         f"--from={tmp_path / 'absent'}", "--config.name=x"],
        capture_output=True, text=True, env=ENV,
    )
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [out.stderr.strip().splitlines()[-1]] and "no such folder" in errors[0]
    assert not os.path.exists(os.path.join(workdir, "sae", "x"))
