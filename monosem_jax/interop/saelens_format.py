"""SAELens's on-disk SAE format (6.x) and our SAE parameters, converted both ways (pure NumPy).

A SAELens SAE folder holds `cfg.json` (architecture, d_in, d_sae, dtype, apply_b_dec_to_input,
normalize_activations, and the LM fields in a nested `metadata`), `sae_weights.safetensors`
(W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], and threshold [d_sae] for
JumpReLU) and optionally `sparsity.safetensors` ("sparsity": log10 of each feature's firing
frequency + 1e-10, as SAELens's trainer writes it). `SAE.load_from_disk(DIR)` reads it.

SAELens's inference encoders (sae_lens/saes/{standard,topk,jumprelu}_sae.py), u = x − b_dec when
apply_b_dec_to_input else x, z = u W_enc + b_enc:
  standard  ReLU(z)
  topk      ReLU of the k largest z per row (z · ‖W_dec,i‖ first when rescale_acts_by_decoder_norm,
            and the acts divided by ‖W_dec,i‖ again before decoding)
  jumprelu  ReLU(z) · (z > threshold)
and decode(f) = f W_dec + b_dec. Our SAE sees hook activations times `norm_scale` s and reports
f_i ‖W_dec,i‖, so the export folds the decoder norms (sae/model.py fold_decoder_norms), then s:
W_enc·s, W_dec/s, b_dec/s (b_enc and thresholds act on pre-activations, which do not change).
SAELens's encode(x_hook) is then our reported activations and its decode our reconstruction in
hook units. The import undoes s when the metadata records it (an export of ours) and maps a
foreign SAE onto the variant whose encoder is the same function, folding exactly what differs.

Everything here is NumPy in, NumPy out (no JAX, no files: interop/saelens_files.py reads and
writes the folders), so an experiment can reuse it. The folds run in float64 and the tensors are
stored as float32.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

CFG_FILENAME = "cfg.json"  # sae_lens/constants.py SAE_CFG_FILENAME
WEIGHTS_FILENAME = "sae_weights.safetensors"  # SAE_WEIGHTS_FILENAME
SPARSITY_FILENAME = "sparsity.safetensors"  # SPARSITY_FILENAME
# The cfg.json layout followed: 6.x nests the LM fields in "metadata" (a version below 6.0 makes
# SAELens convert a flat pre-6 config instead, loading/pretrained_sae_loaders.py).
SAELENS_FORMAT_VERSION = "6.0.0"
SPARSITY_EPS = 1e-10  # sae_lens/training/sae_trainer.py _log_feature_sparsity: log10(p + 1e-10)
METADATA_KEY = "monosem_jax"  # our own record inside cfg.json's metadata

# Our variant -> (SAELens architecture, apply_b_dec_to_input): the same inference encoder.
ARCHITECTURE_OF = {
    "anthropic_2024": ("standard", False),
    "jl": ("standard", False),
    "matryoshka": ("standard", False),
    "towards_2023": ("standard", True),
    "topk": ("topk", True),
    "jumprelu": ("jumprelu", False),
    # BatchTopK's per-row inference rule z · (z > θ) is a JumpReLU with one θ for every feature
    # (SAELens saves its own BatchTopK SAEs the same way: batchtopk_sae.py).
    "batchtopk": ("jumprelu", True),
    "matryoshka_batchtopk": ("jumprelu", True),
}
ARCHITECTURES = ("standard", "topk", "jumprelu")
TENSORS = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
}
# JumpReLU thresholds <= 0 act as 0 (SAELens takes ReLU first); our log-threshold needs θ > 0, so
# they become the smallest normal float32 (only activations in (0, 1.2e-38] differ).
TINY_THRESHOLD = float(np.finfo(np.float32).tiny)


# ----------------------------------------------------------------------------- export


def fold_decoder_norms(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NumPy float64 twin of sae/model.py fold_decoder_norms: unit decoder rows, same outputs."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    n_F = np.sqrt(np.sum(np.square(p["w_dec_FD"]), axis=1))
    folded = dict(p)
    # A zero decoder row (reported activation always 0) keeps its zero row and gets a zero
    # encoder column, bias and threshold, so it never fires (ours divides by 0 there).
    folded["w_dec_FD"] = p["w_dec_FD"] / np.where(n_F > 0, n_F, 1.0)[:, None]
    folded["w_enc_DF"] = p["w_enc_DF"] * n_F[None]
    folded["b_enc_F"] = p["b_enc_F"] * n_F
    if "log_threshold_F" in p:
        with np.errstate(divide="ignore"):
            folded["log_threshold_F"] = p["log_threshold_F"] + np.log(n_F)
    return folded


def to_saelens(variant: str, params: dict[str, np.ndarray], norm_scale: float,
               k: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(cfg.json's fields but metadata, float32 tensors) of one of our SAEs.

    `params` as sae/model.py names them; `k` the final k of a topk SAE.
    """
    if variant not in ARCHITECTURE_OF:
        raise ValueError(f"variant {variant!r} has no SAELens form; known: "
                         f"{sorted(ARCHITECTURE_OF)}")
    architecture, pre_bias = ARCHITECTURE_OF[variant]
    p = fold_decoder_norms(params)
    s = float(norm_scale)
    tensors = {
        "W_enc": p["w_enc_DF"] * s,
        "b_enc": p["b_enc_F"],
        "W_dec": p["w_dec_FD"] / s,
        "b_dec": p["b_dec_D"] / s,
    }
    d_in, d_sae = tensors["W_enc"].shape
    if variant == "jumprelu":
        tensors["threshold"] = np.exp(p["log_threshold_F"])
    elif architecture == "jumprelu":  # batchtopk variants: the scalar θ for every feature
        tensors["threshold"] = np.full((d_sae,), float(p["threshold"]))
    cfg = {
        "architecture": architecture,
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": pre_bias,
        "normalize_activations": "none",  # norm_scale is folded into the weights
        "reshape_activations": "none",
    }
    if architecture == "topk":
        if k is None:
            raise ValueError("a topk SAE needs its k")
        cfg["k"] = int(k)
        # SAELens would multiply the pre-activations by ‖W_dec,i‖ (1/s here, after folding s):
        # off, the TopK of z itself, as our encoder (the decoder rows were unit-norm before s).
        cfg["rescale_acts_by_decoder_norm"] = False
    return cfg, {name: np.ascontiguousarray(t, np.float32) for name, t in tensors.items()}


def log_sparsity(density_F: np.ndarray) -> np.ndarray:
    """SAELens's "sparsity" tensor: log10 of each feature's firing frequency (+ 1e-10)."""
    return np.log10(np.asarray(density_F, np.float64) + SPARSITY_EPS).astype(np.float32)


def density_of(log_sparsity_F: np.ndarray) -> np.ndarray:
    """Firing frequencies back from a "sparsity" tensor (inverse of `log_sparsity`)."""
    return np.clip(10.0 ** np.asarray(log_sparsity_F, np.float64) - SPARSITY_EPS, 0.0, 1.0)


def hook_layer(hook: str) -> int | None:
    """The block index of a hook name 'blocks.<i>.<kind>' (SAEBench reads metadata.hook_layer)."""
    match = re.match(r"blocks\.(\d+)\.", hook)
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------- import


@dataclasses.dataclass(frozen=True)
class Imported:
    """A SAELens SAE as one of ours: sae/model.py params and what config.json records."""

    variant: str
    sae_config: dict  # SAEConfig fields (at least variant, d, d_sae, k for topk)
    params: dict[str, np.ndarray]  # float32
    norm_scale: float  # 1 for a foreign SAE; the recorded one for an export of ours
    hparams: dict  # step.HPARAMS overrides (k for topk), as recorded by an export of ours
    hook: str | None  # the metadata's hook name (None: not recorded)
    ours: bool  # the metadata recorded our variant and it was restored
    notes: tuple[str, ...]  # the folds applied, for the summary


def from_saelens(cfg: dict, tensors: dict[str, np.ndarray], where: str = "") -> Imported:
    """Our SAE equivalent to a SAELens SAE (`cfg` as cfg.json reads, `tensors` as saved).

    Raises ValueError (prefixed with `where`) on anything it cannot convert exactly.
    """
    prefix = f"{where}: " if where else ""

    def fail(message: str) -> ValueError:
        return ValueError(prefix + message)

    cfg = canonical_cfg(cfg, fail)
    architecture, d_in, d_sae = cfg["architecture"], cfg["d_in"], cfg["d_sae"]
    pre_bias = bool(cfg["apply_b_dec_to_input"])
    t = _checked_tensors(architecture, tensors, d_in, d_sae, fail)
    metadata = cfg["metadata"]
    record = metadata.get(METADATA_KEY) if isinstance(metadata.get(METADATA_KEY), dict) else {}
    s = _recorded_norm_scale(record, fail)
    notes = []
    if s != 1.0:  # an export of ours: undo the folded norm_scale
        t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] / s, t["W_dec"] * s, t["b_dec"] * s
        notes.append(f"unfolded norm_scale {s}")
    k = cfg.get("k")
    if architecture == "topk":
        if not (_is_int(k) and 0 < k <= d_sae):
            raise fail(f"topk k={k!r} is invalid; valid: an integer in [1, d_sae={d_sae}]")
        if cfg.get("rescale_acts_by_decoder_norm"):
            # TopK of z·‖W_dec,i‖ and acts/‖W_dec,i‖ decoded = unit rows with the norms in W_enc.
            n_F = np.sqrt(np.sum(np.square(t["W_dec"]), axis=1))
            if np.any(n_F == 0):
                raise fail("rescale_acts_by_decoder_norm with a zero decoder row")
            t["W_enc"], t["b_enc"], t["W_dec"] = (t["W_enc"] * n_F[None], t["b_enc"] * n_F,
                                                  t["W_dec"] / n_F[:, None])
            notes.append("folded decoder norms (rescale_acts_by_decoder_norm)")

    restored = _restore_ours(record, architecture, pre_bias, t, d_in, d_sae, k)
    if restored is not None:
        variant, sae_config, params = restored
        hparams = dict(record.get("hparams") or {})
        if architecture == "topk":  # cfg.json's k is the one SAELens uses
            hparams["k"] = int(k)
    else:
        variant, sae_config, params, hparams = _generic(architecture, pre_bias, t, d_in, d_sae, k,
                                                        notes)
    return Imported(
        variant=variant,
        sae_config=sae_config,
        params={name: np.array(v, np.float32) for name, v in params.items()},  # 0-d θ stays 0-d
        norm_scale=s,
        hparams=hparams,
        hook=metadata.get("hook_name"),
        ours=restored is not None,
        notes=tuple(notes),
    )


def canonical_cfg(cfg: dict, fail) -> dict:
    """cfg.json as SAELens 6.x holds it: a pre-6 flat config (no "metadata", hook_point,
    activation_fn "topk") converted as SAELens's handle_pre_6_0_config does; fields checked."""
    if not isinstance(cfg, dict):
        raise fail("cfg.json is not a JSON object")
    cfg = dict(cfg)
    if not isinstance(cfg.get("metadata"), dict):  # pre-6: the LM fields sit at the top level
        flat = {({"hook_point": "hook_name"}).get(key, key): v for key, v in cfg.items()}
        cfg = {**flat, "metadata": {key: flat[key] for key in
                                    ("hook_name", "hook_head_index", "model_name", "context_size",
                                     "dataset_path", "prepend_bos") if key in flat}}
        cfg.setdefault("apply_b_dec_to_input", True)
        cfg.setdefault("architecture", "standard")
        kwargs = cfg.get("activation_fn_kwargs") or {}
        if cfg.get("activation_fn") == "topk" and kwargs.get("k") is not None:
            cfg["architecture"], cfg["k"] = "topk", kwargs["k"]
        elif cfg.get("activation_fn", "relu") != "relu" and cfg["architecture"] == "standard":
            raise fail(f"activation_fn={cfg['activation_fn']!r} is not supported; valid: relu, "
                       "topk")
        if isinstance(cfg.get("normalize_activations"), bool) or cfg.get(
                "normalize_activations") is None:
            cfg["normalize_activations"] = ("expected_average_only_in"
                                            if cfg.get("normalize_activations") else "none")
    architecture = cfg.get("architecture")
    if architecture not in ARCHITECTURES:
        raise fail(f"architecture {architecture!r} is not supported; valid: "
                   f"{', '.join(ARCHITECTURES)}")
    for field in ("d_in", "d_sae"):
        if not (_is_int(cfg.get(field)) and cfg[field] > 0):
            raise fail(f"{field}={cfg.get(field)!r} is invalid; valid: an integer > 0")
    if not isinstance(cfg.get("apply_b_dec_to_input", True), bool):
        raise fail(f"apply_b_dec_to_input={cfg['apply_b_dec_to_input']!r} is invalid; valid: "
                   "true | false")
    cfg.setdefault("apply_b_dec_to_input", True)  # SAEConfig's default
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        # Our SAEs scale their inputs by one recorded constant; SAELens leaves
        # expected_average_only_in to the caller (a folder's scale factor is not in it) and the
        # others normalise each input anew.
        raise fail(f"normalize_activations={norm!r} is not supported; valid: 'none' (fold the "
                   "scaling into the weights first: SAE.fold_activation_norm_scaling_factor)")
    if cfg.get("reshape_activations", "none") != "none":
        raise fail(f"reshape_activations={cfg['reshape_activations']!r} is not supported; "
                   "valid: 'none'")
    if cfg["metadata"].get("hook_head_index") is not None:
        raise fail("hook_head_index is set; our hooks have no head axis")
    return cfg


def _checked_tensors(architecture: str, tensors: dict, d_in: int, d_sae: int,
                     fail) -> dict[str, np.ndarray]:
    """The architecture's tensors in float64, each checked for presence, shape and finiteness."""
    tensors = dict(tensors)
    scaling = tensors.pop("scaling_factor", None)  # an old SAELens always-ones tensor
    if scaling is not None and not np.all(np.asarray(scaling, np.float64) == 1.0):
        raise fail("tensor scaling_factor (finetuning_scaling_factor) is not supported")
    names = TENSORS[architecture]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise fail(f"no tensor {missing[0]!r} (a {architecture} SAE has {', '.join(names)})")
    extra = sorted(set(tensors) - set(names))
    if extra:
        raise fail(f"unexpected tensor {extra[0]!r} (a {architecture} SAE has "
                   f"{', '.join(names)})")
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in),
              "b_dec": (d_in,), "threshold": (d_sae,)}
    out = {}
    for name in names:
        value = np.asarray(tensors[name])
        if value.shape != shapes[name]:
            raise fail(f"tensor {name} has shape {tuple(value.shape)}; expected "
                       f"{shapes[name]} (d_in={d_in}, d_sae={d_sae})")
        if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
            raise fail(f"tensor {name} has dtype {value.dtype}; expected floating point")
        value = value.astype(np.float64)
        if not np.all(np.isfinite(value)):
            raise fail(f"tensor {name} has non-finite values")
        out[name] = value
    return out


def _recorded_norm_scale(record: dict, fail) -> float:
    s = record.get("norm_scale", 1.0)
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and s > 0):
        raise fail(f"metadata.{METADATA_KEY}.norm_scale={s!r} is invalid; valid: a number > 0")
    return float(s)


def _restore_ours(record: dict, architecture: str, pre_bias: bool, t: dict, d_in: int,
                  d_sae: int, k) -> tuple[str, dict, dict] | None:
    """(variant, SAEConfig fields, params) of an export of ours whose recorded variant still
    matches the files (architecture, bias, shapes, one θ for batchtopk); else None."""
    variant = record.get("variant")
    sae_config = record.get("sae_config")
    if variant not in ARCHITECTURE_OF or ARCHITECTURE_OF[variant] != (architecture, pre_bias):
        return None
    if not isinstance(sae_config, dict) or sae_config.get("variant") != variant or (
            sae_config.get("d"), sae_config.get("d_sae")) != (d_in, d_sae):
        return None
    params = {"w_enc_DF": t["W_enc"], "b_enc_F": t["b_enc"], "w_dec_FD": t["W_dec"],
              "b_dec_D": t["b_dec"]}
    if variant == "jumprelu":
        params["log_threshold_F"] = np.log(np.maximum(t["threshold"], TINY_THRESHOLD))
    elif architecture == "jumprelu":  # batchtopk variants
        theta_F = t["threshold"]
        if not (np.all(theta_F == theta_F[0]) and theta_F[0] >= 0):
            return None
        params["threshold"] = np.asarray(theta_F[0])
    sae_config = dict(sae_config)
    if architecture == "topk":
        sae_config["k"] = max(int(k), int(sae_config.get("k", k)))
    return variant, sae_config, params


def _generic(architecture: str, pre_bias: bool, t: dict, d_in: int, d_sae: int, k,
             notes: list) -> tuple[str, dict, dict, dict]:
    """(variant, SAEConfig fields, params, hparams) with the same encoder and decoder."""
    w_enc, b_enc = t["W_enc"], t["b_enc"]
    sae_config = {"d": d_in, "d_sae": d_sae}
    hparams: dict = {}
    if architecture == "standard":
        variant = "towards_2023" if pre_bias else "anthropic_2024"
    elif architecture == "topk":
        variant = "topk"
        if not pre_bias:  # ours subtracts b_dec first: (x − b_dec)W + b_enc + b_dec W = xW + b_enc
            b_enc = b_enc + t["b_dec"] @ w_enc
            notes.append("folded apply_b_dec_to_input=false into b_enc")
        sae_config.update(k=int(k), k_aux=min(256, d_sae))
        hparams.update(k=int(k), k_start=int(k))
    else:
        variant = "jumprelu"
        if pre_bias:  # our jumprelu has no pre-encoder bias: (x − b_dec)W + b_enc = xW + b'
            b_enc = b_enc - t["b_dec"] @ w_enc
            notes.append("folded apply_b_dec_to_input=true into b_enc")
    params = {"w_enc_DF": w_enc, "b_enc_F": b_enc, "w_dec_FD": t["W_dec"], "b_dec_D": t["b_dec"]}
    if architecture == "jumprelu":
        params["log_threshold_F"] = np.log(np.maximum(t["threshold"], TINY_THRESHOLD))
    sae_config["variant"] = variant
    return variant, sae_config, params, hparams


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
