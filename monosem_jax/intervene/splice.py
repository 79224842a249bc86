"""The LM with one SAE at its hook, ready for interventions: the shared core of steering,
feature search and attribution.

Units. The SAE reads hook activations scaled by the store's `norm_scale` c (E||x|| = sqrt(d)).
Feature values here are the *reported* activations a_i = f_i ||W_dec,i|| that the eval and the
browser show (decoder norms folded in), so "clamp at 2x the max activation" means the same
number everywhere. Feature i's direction in hook units is d_i = W_dec,i / (||W_dec,i|| c):
a_i d_i is exactly what feature i adds to the hook's reconstruction.

Clamping keeps the SAE's error, as Scaling Monosemanticity does:
  x_steered = SAE_clamp(x) + (x - SAE(x)) = x + sum_k (v_k - a_k(x)) d_k,
and this module computes the right-hand side, which is the same number mathematically but is
exactly x when every v_k equals the feature's own activation (no decode/encode round-off).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from monosem_jax.corpus import dataset, tokenizer
from monosem_jax.gpt import artifact as gpt_artifact
from monosem_jax.gpt import model as gpt_model
from monosem_jax.sae import artifact as sae_artifact


@dataclasses.dataclass(frozen=True)
class SplicedModel:
    """A trained LM, one of its SAE runs and the corpus tokenizer."""

    model_cfg: gpt_model.GPTConfig
    lm_params: dict
    sae: sae_artifact.TrainedSAE
    tok: tokenizers.Tokenizer
    eot: int  # the document separator every prompt starts with, as in training

    @property
    def num_features(self) -> int:
        return self.sae.sae_cfg.d_sae

    @property
    def hook(self) -> str:
        return self.sae.hook


def load(workdir: str, sae_name: str) -> SplicedModel:
    """The LM of `workdir` with its SAE run `W/sae/<sae_name>` ("" = the pipeline's SAE; clear
    errors when missing)."""
    model_cfg, lm_params, _ = gpt_artifact.load_trained(workdir)
    sae = sae_artifact.load_sae(workdir, sae_name)
    tok = dataset.load_dataset_tokenizer(os.path.join(workdir, "data"))
    return SplicedModel(model_cfg, lm_params, sae, tok, tokenizer.eot_id(tok))


# ------------------------------------------------------------------------------ user input


def tokenize_prompts(
    model: SplicedModel, prompts: Sequence[str], room: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [P, L] int32, lengths [P]) of EOT-prefixed prompts, right-padded with EOT.

    `room` positions must stay free after the longest prompt (tokens to generate). A prompt that
    is blank or tokenizes to nothing, or one too long for the context, is a ValueError.
    """
    if not prompts:
        raise ValueError("no prompts given")
    ids = []
    for i, prompt in enumerate(prompts):
        encoded = model.tok.encode(prompt).ids if prompt.strip() else []
        if not encoded:
            raise ValueError(f"prompt {i} ({prompt!r}) tokenizes to nothing; give some text")
        ids.append([model.eot, *encoded])
    longest = max(map(len, ids))
    if longest + room > model.model_cfg.context_len:
        raise ValueError(
            f"the longest prompt is {longest - 1} tokens; with {room} more it exceeds the "
            f"context of {model.model_cfg.context_len}"
        )
    tokens_PL = np.full((len(ids), longest), model.eot, np.int32)
    for row, seq in enumerate(ids):
        tokens_PL[row, : len(seq)] = seq
    return tokens_PL, np.array([len(seq) for seq in ids], np.int32)


def check_feature_ids(model: SplicedModel, ids: Sequence[int]) -> np.ndarray:
    """The ids as int32 [K]; out-of-range or repeated ids are a ValueError."""
    ids = [int(i) for i in ids]  # checked as Python ints: an id past int64 is out of range too
    if not ids:
        raise ValueError("no feature ids given")
    bad = [i for i in ids if not 0 <= i < model.num_features]
    if bad:
        raise ValueError(
            f"feature ids {bad} out of range: {model.sae.name} has features "
            f"0..{model.num_features - 1}"
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"feature ids repeat: {ids}")
    return np.asarray(ids, np.int32)


# -------------------------------------------------------------------------- pure functions




def clamp(
    sae: sae_artifact.TrainedSAE,
    x_BLD: jax.Array,
    ids_K: jax.Array,
    values_K: jax.Array,
    active: jax.Array | bool = True,
) -> jax.Array:
    """x with features ids_K clamped to values_K at every position, the SAE error kept.

    values_K: one value per feature, or per position ([B, L, K]). `active` False returns x
    unchanged (a traced switch: the unsteered member of a vmapped batch of clamps).
    """
    a_BLK = sae_artifact.feature_acts(sae, x_BLD)[..., ids_K]
    values_BLK = jnp.broadcast_to(jnp.asarray(values_K, jnp.float32), a_BLK.shape)
    delta_BLK = jnp.where(active, values_BLK - a_BLK, 0.0)
    shift_BLD = jnp.einsum("blk,kd->bld", delta_BLK, sae_artifact.feature_directions(sae, ids_K))
    return (x_BLD.astype(jnp.float32) + shift_BLD).astype(x_BLD.dtype)


def clamped_logits(
    model: SplicedModel, tokens_BL: jax.Array, ids_K: jax.Array, values_K: jax.Array
) -> jax.Array:
    """Logits [B, L, V] of the LM with the features clamped at its SAE's hook."""
    sae = model.sae
    logits_BLV, _ = gpt_model.forward(
        model.model_cfg, model.lm_params, tokens_BL,
        intervene={sae.hook: lambda x: clamp(sae, x, ids_K, values_K)},
    )
    return logits_BLV
