"""SAELens SAE folders on disk: cfg.json and the safetensors files, read and written with
safetensors' NumPy API (no torch); the conversions are interop/saelens_format.py."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import safetensors.numpy

from monosem_jax import atomic_dirs
from monosem_jax.interop.saelens_format import CFG_FILENAME, SPARSITY_FILENAME, WEIGHTS_FILENAME


def read_folder(path: str) -> tuple[dict, dict[str, np.ndarray], np.ndarray | None]:
    """(cfg, tensors, log sparsity or None) of a SAELens SAE folder; a missing or unreadable
    file is one FileNotFoundError / ValueError naming it."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such folder (a SAELens SAE folder holds "
                                f"{CFG_FILENAME} and {WEIGHTS_FILENAME})")
    cfg_path, weights_path = (os.path.join(path, n) for n in (CFG_FILENAME, WEIGHTS_FILENAME))
    for file in (cfg_path, weights_path):
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file} is missing (a SAELens SAE folder holds "
                                    f"{CFG_FILENAME} and {WEIGHTS_FILENAME})")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path} is not valid JSON ({e})") from e
    tensors = _load_safetensors(weights_path)
    sparsity_path = os.path.join(path, SPARSITY_FILENAME)
    sparsity = None
    if os.path.isfile(sparsity_path):
        sparsity = _load_safetensors(sparsity_path).get("sparsity")
    return cfg, tensors, sparsity


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError (and others) on bad files
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from e


def write_folder(path: str, cfg: dict, tensors: dict[str, np.ndarray],
                 sparsity: np.ndarray | None = None) -> None:
    """Writes a SAELens SAE folder at `path` (absent or empty) atomically: a temporary sibling
    folder renamed into place, so `path` is either complete or untouched."""
    path = os.path.abspath(path)
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"{path} exists and is not an empty folder; export into a new one "
                              "(nothing was written)")
    parent = os.path.dirname(path)
    tmp = atomic_dirs.temp_dir(parent, os.path.basename(path))
    try:
        with open(os.path.join(tmp, CFG_FILENAME), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        metadata = {"format": "pt"}  # what safetensors.torch writers record
        safetensors.numpy.save_file(tensors, os.path.join(tmp, WEIGHTS_FILENAME), metadata)
        if sparsity is not None:
            safetensors.numpy.save_file({"sparsity": np.asarray(sparsity, np.float32)},
                                        os.path.join(tmp, SPARSITY_FILENAME), metadata)
        _umask_permissions(tmp)
        if os.path.isdir(path):
            os.rmdir(path)  # empty (checked above); rename cannot replace a folder on every OS
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask_permissions(folder: str) -> None:
    """Gives a mkdtemp folder (private) and its files the modes the umask would have given."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o666 & ~umask)
