#!/usr/bin/env python3
"""Do our SAEs open in SAELens, and do SAELens's open here? Checked against the real library.

  python experiments/saelens_interop.py --workdir=W [--peer_python=/tmp/peer-venv/bin/python]

W is a finished `monosem-pipeline` work directory. Runs in the project's venv and drives the
peer side (this same file, `--peer=...`) in SAELens's own venv (sae-lens + torch, set up as
../shared/bench/README.md says; never a dependency of the project):

1. Export: each of --variants (W/sae/<variant>, trained with `monosem-train-sae` if missing)
   goes through `monosem-export`; SAELens loads it with `SAE.load_from_disk`, and its `encode`
   and `decode` of --rows held-out hook activations (eval-split contexts, which neither the LM
   nor the SAE trained on) are compared with our reported activations and reconstructions:
   max |diff| relative to the largest activation (resp. the largest |x|) must be <= --tolerance.
2. Import: SAELens's own trainer (`SAETrainer`, a `standard` SAE) trains on rows of W's
   activation store, scaled by the store's norm_scale (SAELens's expected-norm convention) and
   saved with the factor folded into the weights (`fold_activation_norm_scaling_factor`,
   `save_inference_model`), as SAELens saves its own; `monosem-import` brings it into W and
   `monosem-eval` evaluates it like an SAE trained here.

Prints, last, one JSON line: per variant the diffs and a pass flag, the imported SAE's
EV / L0 / CE recovered / KL score beside our own anthropic_2024's, and "passed".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
IMPORTED = "saelens_standard"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", help="a finished monosem-pipeline work directory")
    ap.add_argument("--peer_python", default="/tmp/peer-venv/bin/python")
    ap.add_argument("--variants", default="anthropic_2024,topk,jumprelu")
    ap.add_argument("--rows", type=int, default=1000, help="held-out rows compared")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--out", default="", help="folder for exports and rows (default W/interop)")
    ap.add_argument("--train_rows", type=int, default=400_000, help="store rows SAELens trains on")
    ap.add_argument("--saelens_steps", type=int, default=1500)
    ap.add_argument("--saelens_batch", type=int, default=4096)
    ap.add_argument("--saelens_d_sae", type=int, default=0, help="0 = our anthropic_2024's")
    ap.add_argument("--saelens_l1", type=float, default=5.0)
    ap.add_argument("--saelens_lr", type=float, default=4e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer", choices=("check", "train"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ------------------------------------------------------------------------- the project's side


def binary(name: str, *args: str) -> dict:
    """Runs one of our console scripts; returns its last stdout line (the summary JSON)."""
    exe = os.path.join(os.path.dirname(sys.executable), name)
    out = subprocess.run([exe, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}


def held_out_rows(workdir: str, sae, rows: int) -> np.ndarray:
    """[rows, D] float32 hook activations of eval-split contexts (first positions excluded)."""
    from monosem_jax.analysis import features
    from monosem_jax.gpt import artifact as gpt_artifact

    model_cfg, lm_params, _ = gpt_artifact.load_trained(workdir)
    length = model_cfg.context_len
    windows_WL = features.windows(workdir, "eval", length, max_tokens=2 * rows + 4 * length)
    out = []
    for _, _, x_BLD, _ in features.iterate_features(model_cfg, lm_params, sae, windows_WL):
        out.append(x_BLD[:, 1:].reshape(-1, x_BLD.shape[-1]))
        if sum(len(a) for a in out) >= rows:
            break
    return np.concatenate(out)[:rows].astype(np.float32)


def our_side(a, workdir: str, out: str, variants: list[str]) -> dict:
    """Trains missing variants, exports each, and writes rows.npz: x and our acts/recons."""
    from monosem_jax.sae import artifact as sae_artifact

    t0 = time.time()
    arrays, info = {}, {}
    for variant in variants:
        if not os.path.exists(os.path.join(workdir, "sae", variant, "config.json")):
            print(f"training {variant} (monosem-train-sae)", flush=True)
            binary("monosem-train-sae", f"--workdir={workdir}", f"--config.variant={variant}",
                   f"--config.name={variant}")
        export_dir = os.path.join(out, f"export_{variant}")
        shutil.rmtree(export_dir, ignore_errors=True)
        binary("monosem-export", f"--workdir={workdir}", f"--config.sae_name={variant}",
               f"--out={export_dir}")
        sae = sae_artifact.load_sae(workdir, variant)
        if "x" not in arrays:
            arrays["x"] = held_out_rows(workdir, sae, a.rows)
        x_ND = arrays["x"]
        arrays[f"acts_{variant}"] = np.asarray(sae_artifact.feature_acts(sae, x_ND[None]))[0]
        arrays[f"recon_{variant}"] = np.asarray(sae_artifact.reconstruct(sae, x_ND[None]))[0]
        info[variant] = {"d_sae": sae.sae_cfg.d_sae, "step": sae.step,
                         "mean_l0": float((arrays[f"acts_{variant}"] > 0).sum(1).mean())}
    np.savez(os.path.join(out, "rows.npz"), **arrays)
    info["_wall_s"] = time.time() - t0
    return info


def store_rows(workdir: str, rows: int, out: str) -> tuple[str, float, dict]:
    """The first `rows` rows of the pipeline SAE's store (hook units) as .npy; its norm_scale
    and the LM fields SAELens's metadata records."""
    from monosem_jax import metrics_io
    from monosem_jax.gpt import artifact as gpt_artifact
    from monosem_jax.sae import artifact as sae_artifact

    sae = sae_artifact.load_sae(workdir, "")
    recorded = metrics_io.read_json(os.path.join(workdir, "sae", sae.name, "config.json"))
    store = sae_artifact.training_store(recorded["sae"]["store"], sae.hook, workdir)
    rows = min(rows, store.rows)
    path = os.path.join(out, "train_rows.npy")
    np.save(path, np.asarray(store.read_rows(0, rows), np.float32))
    model_cfg, _, _ = gpt_artifact.load_trained(workdir)
    meta = {"hook_name": sae.hook, "context_size": model_cfg.context_len,
            "model_name": f"monosem_jax:{os.path.abspath(workdir)}"}
    return path, float(store.norm_scale), meta


def peer(a, task: str, out: str, extra: dict) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1", WANDB_MODE="disabled")
    cmd = [a.peer_python, os.path.abspath(__file__), f"--peer={task}", f"--out={out}",
           f"--threads={a.threads}", f"--tolerance={a.tolerance}"]
    cmd += [f"--{k}={v}" for k, v in extra.items()]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"peer {task} failed: {done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(a) -> dict:
    workdir = os.path.abspath(a.workdir)
    out = os.path.abspath(a.out or os.path.join(workdir, "interop"))
    os.makedirs(out, exist_ok=True)
    variants = [v for v in a.variants.split(",") if v]
    result = {"workdir": workdir, "rows": a.rows, "tolerance": a.tolerance}

    # 1. our exports in SAELens
    result["ours"] = our_side(a, workdir, out, variants)
    checked = peer(a, "check", out, {"variants": ",".join(variants)})
    result["sae_lens_version"] = checked.pop("sae_lens_version")
    result["export"] = checked

    # 2. an SAE trained by SAELens, imported and evaluated here
    path, norm_scale, meta = store_rows(workdir, a.train_rows, out)
    d_sae = a.saelens_d_sae or result["ours"].get("anthropic_2024", {}).get("d_sae", 4096)
    trained_dir = os.path.join(out, IMPORTED)
    shutil.rmtree(trained_dir, ignore_errors=True)
    result["saelens_training"] = peer(a, "train", out, {
        "train_npy": path, "norm_scale": norm_scale, "save": trained_dir, "d_sae": d_sae,
        "steps": a.saelens_steps, "batch": a.saelens_batch, "l1": a.saelens_l1,
        "lr": a.saelens_lr, "meta": json.dumps(meta)})
    shutil.rmtree(os.path.join(workdir, "sae", IMPORTED), ignore_errors=True)
    binary("monosem-import", f"--workdir={workdir}", f"--from={trained_dir}",
           f"--config.name={IMPORTED}")
    evaluated = binary("monosem-eval", f"--workdir={workdir}", f"--config.sae_name={IMPORTED}")
    keys = ("explained_variance", "l0", "dead_fraction", "ce_loss_recovered", "kl_div_score",
            "concepts_feature_beats_unit")

    def headline(summary: dict) -> dict:
        core = summary.get("saebench_core", {}).get("model_behavior_preservation", {})
        return {k: summary.get(k, core.get(k)) for k in keys}

    result["imported_eval"] = headline(evaluated)
    ours = os.path.join(workdir, "eval", "anthropic_2024.json")
    if os.path.exists(ours):
        with open(ours) as f:
            result["our_anthropic_2024_eval"] = headline(json.load(f))
    result["passed"] = all(v["passed"] for v in result["export"].values()) and (
        result["imported_eval"]["explained_variance"] is not None)
    return result


# ----------------------------------------------------------------------------- the peer's side


def peer_check(a) -> dict:
    """SAELens loads each export; its encode/decode against our acts/recons on the same rows."""
    import sae_lens
    import torch
    from sae_lens import SAE

    torch.set_num_threads(a.threads)
    rows = np.load(os.path.join(a.out, "rows.npz"))
    x = torch.from_numpy(rows["x"])
    result = {"sae_lens_version": sae_lens.__version__}
    for variant in a.variants.split(","):
        sae = SAE.load_from_disk(os.path.join(a.out, f"export_{variant}"), device="cpu")
        with torch.no_grad():
            f = sae.encode(x)
            f = f.to_dense() if f.is_sparse else f
            xhat = sae.decode(f)
        ours_f, ours_xhat = rows[f"acts_{variant}"], rows[f"recon_{variant}"]
        act_scale = float(np.abs(ours_f).max())
        x_scale = float(np.abs(rows["x"]).max())
        enc = float(np.abs(f.numpy() - ours_f).max())
        dec = float(np.abs(xhat.numpy() - ours_xhat).max())
        result[variant] = {
            "architecture": sae.cfg.architecture(),
            "max_abs_diff_encode": enc, "max_activation": act_scale,
            "rel_diff_encode": enc / act_scale,
            "max_abs_diff_decode": dec, "max_abs_x": x_scale, "rel_diff_decode": dec / x_scale,
            "same_active_set": float(((f.numpy() > 0) == (ours_f > 0)).mean()),
            "passed": enc / act_scale <= a.tolerance and dec / x_scale <= a.tolerance,
        }
    return result


def peer_train(a) -> dict:
    """SAELens's SAETrainer (standard SAE) on the store's rows x norm_scale, saved as SAELens
    saves its own (norm factor folded in, inference model)."""
    import types

    import torch
    from sae_lens import SAETrainer

    sys.path.insert(0, HERE)
    import saelens_peer  # the benchmarks' peer side: its array provider and trainer settings

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    arr = np.load(a.train_npy) * np.float32(a.norm_scale)
    spec = types.SimpleNamespace(arch="standard", d_sae=a.d_sae, l1=a.l1, l0=1.0, k=32)
    sae = saelens_peer.make_sae(spec, arr.shape[1])
    for key, value in json.loads(a.meta).items():
        sae.cfg.metadata[key] = value
    provider = saelens_peer.ArrayProvider(torch.from_numpy(arr), a.batch, 0)
    t0 = time.time()
    SAETrainer(cfg=saelens_peer.trainer_config(a.steps, a.batch, a.lr), sae=sae,
               data_provider=provider).fit()
    fit_s = time.time() - t0
    sae.fold_activation_norm_scaling_factor(a.norm_scale)
    sae.save_inference_model(a.save)
    return {"d_in": arr.shape[1], "d_sae": a.d_sae, "steps": a.steps, "batch": a.batch,
            "l1_coefficient": a.l1, "lr": a.lr, "train_rows": arr.shape[0], "fit_s": fit_s}


def parse_peer():
    ap = argparse.ArgumentParser()
    for name, kind in (("peer", str), ("out", str), ("threads", int), ("tolerance", float),
                       ("variants", str), ("train_npy", str), ("norm_scale", float),
                       ("save", str), ("d_sae", int), ("steps", int), ("batch", int),
                       ("l1", float), ("lr", float), ("meta", str)):
        ap.add_argument(f"--{name}", type=kind)
    return ap.parse_args()


if __name__ == "__main__":
    if any(arg.startswith("--peer=") for arg in sys.argv[1:]):
        peer_args = parse_peer()
        done = (peer_check if peer_args.peer == "check" else peer_train)(peer_args)
    else:
        args = parse()
        if not args.workdir:
            raise SystemExit("error: --workdir is required (a finished monosem-pipeline run)")
        done = main(args)
    print(json.dumps(done), flush=True)
