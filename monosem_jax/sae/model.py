"""SAE parameters and pure forward functions: config, init, encode/decode per variant, metrics.

Parameters are a plain dict of float32 arrays:
  w_enc_DF [d, d_sae]   encoder (column i reads feature i)
  b_enc_F  [d_sae]      encoder bias
  w_dec_FD [d_sae, d]   decoder (row i is feature i's dictionary vector)
  b_dec_D  [d]          decoder bias; for towards_2023 and the TopK family also the pre-encoder bias
  log_threshold_F       jumprelu only: log of the per-feature threshold θ (kept in float32)
  threshold  []         batchtopk variants only: the inference threshold θ (float32), a running
                        average of the smallest kept activation, set by the train step (it gets
                        no gradient: the loss never reads it)

Each variant's encoder is its own named function (`ENCODERS`); `encode` looks it up. An encoder
codes every row on its own (what eval, features, steering and the browser use). That is the
loss's code for every variant except the batchtopk ones, whose loss selects over the whole batch
(`batchtopk_select`, shape letter S = the B·k selected entries) and whose encoder applies θ.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from monosem_jax.sae import shard_select

Params = dict[str, jax.Array]
HParams = dict[str, jax.Array]

VARIANTS = ("anthropic_2024", "topk", "towards_2023", "jl", "jumprelu", "matryoshka",
            "batchtopk", "matryoshka_batchtopk")
# Bussmann et al. 2024: TopK over the whole batch in the loss, a tracked threshold at inference.
BATCH_TOPK = frozenset({"batchtopk", "matryoshka_batchtopk"})
# Variants with a k (static bound cfg.k, traced hp["k"] <= cfg.k) and the AuxK loss.
TOPK_FAMILY = frozenset({"topk"}) | BATCH_TOPK
# Variants whose loss reconstructs from every nested prefix of the dictionary (cfg.prefixes).
MATRYOSHKA = frozenset({"matryoshka", "matryoshka_batchtopk"})
# Decoder rows kept at unit norm by the train step (gradient projection, then renormalisation):
# Towards Monosemanticity (2023) and Gao et al. 2024 (openai/sparse_autoencoder train.py,
# unit_norm_decoder_ + unit_norm_decoder_grad_adjustment_), and the batchtopk variants
# (dictionary_learning batch_top_k.py / matryoshka_batch_top_k.py: one threshold θ for all
# features only means the same for each when their decoder rows have the same norm). The others
# leave decoder norms free and, where it matters, weight the penalty by them (Anthropic's April
# 2024 update).
UNIT_NORM_DECODER = frozenset({"towards_2023"}) | TOPK_FAMILY
MATMUL_DTYPES = ("float32", "bfloat16")
# Variants that encode x − b_dec (the pre-encoder bias is the decoder bias, as in the papers).
PRE_ENCODER_BIAS = frozenset({"towards_2023"}) | TOPK_FAMILY


def _require(ok: bool, field: str, value, valid: str) -> None:
    if not ok:
        raise ValueError(f"SAEConfig.{field}={value!r} is invalid; valid: {valid}")


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Static (hashable) SAE settings: shapes, variant and structural constants."""

    variant: str = "anthropic_2024"
    d: int = 128
    d_sae: int = 4096
    # topk: active latents per row; batchtopk variants: per row on average (k·B per batch).
    # The static upper bound; the traced hp["k"] <= k selects fewer.
    k: int = 32
    k_aux: int = 256  # TopK family: dead latents used by AuxK (Gao et al. B.1 use d/2)
    dead_steps: int = 200  # a latent silent for this many steps counts as dead (AuxK, resampling)
    jumprelu_bandwidth: float = 0.001  # STE rectangle-kernel width ε (Gemma Scope default)
    jumprelu_threshold_init: float = 0.001  # initial θ (SAELens jumprelu_init_threshold)
    # Tied init: W_enc = dec_init_norm · U^T for unit directions U; decoder rows U · dec_init_norm,
    # except unit-norm-decoder variants (towards_2023, the TopK family) whose rows start (and
    # stay) at 1.
    dec_init_norm: float = 0.1
    # matryoshka, matryoshka_batchtopk: nested prefix sizes m (the first m latents must
    # reconstruct x on their own), strictly increasing and ending at d_sae (appended if
    # missing); () = F/32, F/8, F/2, F.
    # Resolved in __post_init__, so a config records the sizes it trained with. Other variants
    # ignore the field.
    prefixes: tuple[int, ...] = ()
    # How the train step pays for the decoder and the encoder's weight gradient; the model is the
    # same either way (sae/sparse.py). 0: dense products over all F latents. Else sums over the
    # active latents only: always for the TopK family (k per row); for the ReLU variants and
    # JumpReLU whenever no row of the batch has more than this many active latents (a batch with
    # a busier row takes the dense step, so the result is exact either way). -1: d_sae / 128,
    # where the two cost the same on CPU. Capped at d_sae.
    sparse_capacity: int = -1
    # The train step's encoder product x·W_enc: "float32", or "bfloat16" operands with float32
    # accumulation (parameters, gradients and every other product stay float32; ~1.6x that
    # product on CPUs with AVX-512 BF16, relative error ~2e-3: experiments/bf16_matmul.py).
    # Encoding at inference is always float32.
    matmul_dtype: str = "float32"

    def __post_init__(self):
        _require(self.variant in VARIANTS, "variant", self.variant, f"one of {VARIANTS}")
        _require(_is_int(self.d) and self.d > 0, "d", self.d, "an integer > 0")
        _require(_is_int(self.d_sae) and self.d_sae > 0, "d_sae", self.d_sae, "an integer > 0")
        _require(_is_int(self.dead_steps) and self.dead_steps > 0, "dead_steps", self.dead_steps,
                 "an integer > 0")
        if self.variant in TOPK_FAMILY:
            _require(_is_int(self.k) and 0 < self.k <= self.d_sae, "k", self.k,
                     f"an integer in [1, d_sae={self.d_sae}]")
            _require(_is_int(self.k_aux) and 0 < self.k_aux <= self.d_sae, "k_aux", self.k_aux,
                     f"an integer in [1, d_sae={self.d_sae}]")
        _require(_is_int(self.sparse_capacity) and self.sparse_capacity >= -1, "sparse_capacity",
                 self.sparse_capacity, "an integer >= 0 (capped at d_sae), or -1 (automatic)")
        _require(self.matmul_dtype in MATMUL_DTYPES, "matmul_dtype", self.matmul_dtype,
                 f"one of {MATMUL_DTYPES}")
        _require(self.jumprelu_bandwidth > 0, "jumprelu_bandwidth", self.jumprelu_bandwidth,
                 "> 0")
        _require(self.jumprelu_threshold_init > 0, "jumprelu_threshold_init",
                 self.jumprelu_threshold_init, "> 0")
        _require(self.dec_init_norm > 0, "dec_init_norm", self.dec_init_norm, "> 0")
        # Frozen, so set through object; a tuple either way (JSON gives lists; jit needs a hash).
        _require(isinstance(self.prefixes, (tuple, list)), "prefixes", self.prefixes,
                 "a tuple of integers")
        prefixes = (resolve_prefixes(self.prefixes, self.d_sae) if self.variant in MATRYOSHKA
                    else tuple(self.prefixes))
        object.__setattr__(self, "prefixes", prefixes)


def resolve_prefixes(prefixes, d_sae: int) -> tuple[int, ...]:
    """Validated nested prefix sizes ending at d_sae; () = (d_sae/32, d_sae/8, d_sae/2, d_sae)."""
    # The default ratios are those of the experiment that recovered a single French-context
    # feature (F = 1024: prefixes 32, 128, 512, 1024); BUILD.md "SAE math" has the figures.
    if not prefixes:
        return tuple(sorted({max(1, d_sae // r) for r in (32, 8, 2)} | {d_sae}))
    sizes = tuple(prefixes)
    valid = f"strictly increasing integers in [1, d_sae={d_sae}] (d_sae appended if missing)"
    _require(all(_is_int(m) for m in sizes), "prefixes", prefixes, valid)
    _require(sizes[0] > 0 and sizes[-1] <= d_sae, "prefixes", prefixes, valid)
    _require(all(a < b for a, b in zip(sizes[:-1], sizes[1:], strict=True)), "prefixes", prefixes,
             valid)
    return sizes if sizes[-1] == d_sae else sizes + (d_sae,)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def init_params(cfg: SAEConfig, key: jax.Array) -> Params:
    """Tied init: unit directions U, W_dec = U·norm, W_enc = dec_init_norm·Uᵀ, zero biases."""
    u_FD = unit_rows(jax.random.normal(key, (cfg.d_sae, cfg.d), jnp.float32))
    dec_norm = 1.0 if cfg.variant in UNIT_NORM_DECODER else cfg.dec_init_norm
    params = {
        "w_enc_DF": (cfg.dec_init_norm * u_FD).T,
        "b_enc_F": jnp.zeros((cfg.d_sae,), jnp.float32),
        "w_dec_FD": dec_norm * u_FD,
        # Zero, not the data's geometric median (Towards 2023 / OpenAI init from data): the
        # params are built before any data is seen; the bias learns the mean within a few steps.
        "b_dec_D": jnp.zeros((cfg.d,), jnp.float32),
    }
    if cfg.variant == "jumprelu":
        params["log_threshold_F"] = jnp.full(
            (cfg.d_sae,), math.log(cfg.jumprelu_threshold_init), jnp.float32
        )
    if cfg.variant in BATCH_TOPK:  # 0 = not yet estimated (the inference rule is then ReLU)
        params["threshold"] = jnp.zeros((), jnp.float32)
    return params


def row_norms(w_AD: jax.Array) -> jax.Array:
    """The L2 norm of each row [R] (R: any row axis, e.g. features)."""
    return jnp.sqrt(jnp.sum(jnp.square(w_AD), axis=1))


def unit_rows(w_AD: jax.Array, eps: float = 0.0) -> jax.Array:
    """Each row divided by its L2 norm (by eps where the norm is smaller: zero rows stay 0)."""
    norms_A = row_norms(w_AD)
    return w_AD / (jnp.maximum(norms_A, eps) if eps else norms_A)[:, None]


def decoder_norms(params: Params) -> jax.Array:
    """‖W_dec,i‖₂ per feature [F] (cheap: one pass over [F, D])."""
    return row_norms(params["w_dec_FD"])


def encoder_bias(params: Params, pre_bias: bool) -> jax.Array:
    """The encoder product's bias [F]: b_enc, or b_enc − b_dec W_enc with a pre-encoder bias."""
    if not pre_bias:
        return params["b_enc_F"]
    return params["b_enc_F"] - params["b_dec_D"] @ params["w_enc_DF"]


def variant_preacts(cfg: SAEConfig, params: Params, x_BD: jax.Array) -> jax.Array:
    """The variant's pre-activations x W_enc + bias [B, F] (pre-encoder bias where it has one),
    the product in cfg.matmul_dtype (float32 accumulation either way)."""
    bias_F = encoder_bias(params, cfg.variant in PRE_ENCODER_BIAS)
    if cfg.matmul_dtype == "bfloat16":
        xw_BF = jnp.dot(x_BD.astype(jnp.bfloat16), params["w_enc_DF"].astype(jnp.bfloat16),
                        preferred_element_type=jnp.float32)
    else:
        xw_BF = x_BD.astype(jnp.float32) @ params["w_enc_DF"]
    return xw_BF + bias_F[None]


def preacts(params: Params, x_BD: jax.Array) -> jax.Array:
    """W_enc x + b_enc (no pre-encoder bias)."""
    return x_BD @ params["w_enc_DF"] + params["b_enc_F"][None]


def preacts_pre_bias(params: Params, x_BD: jax.Array) -> jax.Array:
    """W_enc (x − b_dec) + b_enc, with b_dec folded into the bias (no [B,F]x[F,D] in its grad)."""
    # (x − b)W = xW − bW: the gradient wrt b_dec is then a [F]x[F,D] product of the summed
    # pre-activation grads instead of a full [B,F]x[F,D] matmul (OpenAI's "pre_bias grad
    # optimization" in sparse_autoencoder/train.py).
    return x_BD @ params["w_enc_DF"] + encoder_bias(params, pre_bias=True)[None]


def topk_select(
    z_BF: jax.Array, k_max: int, k: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(ReLU'd values, indices) [B, k_max] of the k largest pre-activations per row, descending.

    Entries past the traced k (<= static k_max) have value 0. The sparse form of
    `topk_activation`: a loss can decode from it by gathering k decoder rows per row.
    """
    # Exact lax.top_k on every backend: approximate, threshold, prefilter and bisection
    # selections measured no faster on CPU; the step's time is in its GEMMs, which is why
    # loss_topk decodes sparsely (experiments/README.md, topk_select_study.py).
    vals_BK, idx_BK = shard_select.latent_top_k(z_BF, k_max)  # local to a sharded dictionary
    if k is not None:  # top_k sorts descending, so the first k of k_max are the k largest
        keep_K = jnp.arange(k_max) < k
        vals_BK = jnp.where(keep_K[None], vals_BK, 0.0)
    # ReLU after the selection, as Gao et al. (openai/sparse_autoencoder: relu(topk(...))).
    return jax.nn.relu(vals_BK), idx_BK


def scatter_topk(z_BF: jax.Array, vals_BK: jax.Array, idx_BK: jax.Array) -> jax.Array:
    """The dense [B, F] activations of a sparse (values, indices) TopK selection."""
    rows_B1 = jnp.arange(z_BF.shape[0])[:, None]
    return jnp.zeros_like(z_BF).at[rows_B1, idx_BK].set(vals_BK, unique_indices=True)


def topk_activation(z_BF: jax.Array, k_max: int, k: jax.Array | None = None) -> jax.Array:
    """ReLU of the k largest pre-activations per row, zero elsewhere (k traced, <= static k_max)."""
    vals_BK, idx_BK = topk_select(z_BF, k_max, k)
    return scatter_topk(z_BF, vals_BK, idx_BK)


def batchtopk_select(
    z_BF: jax.Array, k_max: int, k: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(ReLU'd values, flat indices b·F + i) [B·k_max] of the k·B largest entries of the batch.

    BatchTopK (Bussmann et al. 2024): one selection over the flattened [B, F] pre-activations, so
    a row keeps a variable number of latents, k on average. Descending; entries past the traced
    k·B (k <= static k_max) have value 0, as in `topk_select`.
    """
    # One exact lax.top_k over the B·F entries (SAELens / dictionary_learning: torch.topk of the
    # flattened acts). ReLU after the selection, as `topk_select`: with fewer than k·B positive
    # entries the extra picks are zeros. It costs several times a per-row top_k (a batchtopk step
    # about twice a topk step on CPU); prefilters and full sorts measured slower still
    # (experiments/README.md, "batchtopk selection").
    num_s = z_BF.shape[0] * k_max
    vals_S, flat_S = shard_select.batch_top_k(z_BF, num_s)
    if k is not None:
        vals_S = jnp.where(jnp.arange(num_s) < z_BF.shape[0] * k, vals_S, 0.0)
    return jax.nn.relu(vals_S), flat_S


def scatter_batchtopk(z_BF: jax.Array, vals_S: jax.Array, flat_S: jax.Array) -> jax.Array:
    """The dense [B, F] activations of a `batchtopk_select` selection."""
    return jnp.zeros(z_BF.size, z_BF.dtype).at[flat_S].set(vals_S, unique_indices=True).reshape(
        z_BF.shape)


def batchtopk_activation(z_BF: jax.Array, k_max: int, k: jax.Array | None = None) -> jax.Array:
    """The batch rule: ReLU of the k·B largest entries of z over the whole batch, zero elsewhere."""
    return scatter_batchtopk(z_BF, *batchtopk_select(z_BF, k_max, k))


def encode_relu(cfg: SAEConfig, params: Params, x_BD: jax.Array, hp: HParams | None) -> jax.Array:
    """anthropic_2024 / jl / matryoshka: ReLU(W_enc x + b_enc)."""
    del cfg, hp
    return jax.nn.relu(preacts(params, x_BD))


def encode_pre_bias_relu(
    cfg: SAEConfig, params: Params, x_BD: jax.Array, hp: HParams | None
) -> jax.Array:
    """towards_2023: ReLU(W_enc (x − b_dec) + b_enc)."""
    del cfg, hp
    return jax.nn.relu(preacts_pre_bias(params, x_BD))


def encode_topk(cfg: SAEConfig, params: Params, x_BD: jax.Array, hp: HParams | None) -> jax.Array:
    """topk: ReLU(TopK(W_enc (x − b_dec) + b_enc)) with k = hp["k"] (cfg.k without hp)."""
    k = None if hp is None else hp["k"]
    return topk_activation(preacts_pre_bias(params, x_BD), cfg.k, k)


def encode_jumprelu(
    cfg: SAEConfig, params: Params, x_BD: jax.Array, hp: HParams | None
) -> jax.Array:
    """jumprelu: z · H(z − θ), z = W_enc x + b_enc (forward only; the loss uses the STE version)."""
    del cfg, hp
    z_BF = preacts(params, x_BD)
    theta_F = jnp.exp(params["log_threshold_F"])
    return jnp.where(z_BF > theta_F[None], z_BF, 0.0)


def encode_batchtopk(
    cfg: SAEConfig, params: Params, x_BD: jax.Array, hp: HParams | None
) -> jax.Array:
    """batchtopk variants at inference: z · (z > θ), z = W_enc (x − b_dec) + b_enc, θ a scalar.

    Each row on its own (the loss's batch rule lives in losses.loss_batchtopk): θ, the running
    average of the smallest activation the batch rule kept, makes about k latents fire per row.
    """
    del cfg, hp
    z_BF = preacts_pre_bias(params, x_BD)
    # θ >= 0, so this is also ReLU'd; θ = 0 (never trained) gives plain ReLU.
    return jnp.where(z_BF > params["threshold"], z_BF, 0.0)


ENCODERS = {
    "anthropic_2024": encode_relu,
    "topk": encode_topk,
    "towards_2023": encode_pre_bias_relu,
    "jl": encode_relu,
    "jumprelu": encode_jumprelu,
    "matryoshka": encode_relu,
    "batchtopk": encode_batchtopk,
    "matryoshka_batchtopk": encode_batchtopk,
}


def encode(cfg: SAEConfig, params: Params, x_BD: jax.Array, hp: HParams | None = None) -> jax.Array:
    """Feature activations f [B, F], each row coded on its own (variant-specific).

    The loss's f for every variant but the batchtopk ones (see the module docstring).
    """
    return ENCODERS[cfg.variant](cfg, params, x_BD.astype(jnp.float32), hp)


def decode(params: Params, f_BF: jax.Array) -> jax.Array:
    """x̂ = f W_dec + b_dec."""
    return f_BF @ params["w_dec_FD"] + params["b_dec_D"][None]


def decode_sparse(params: Params, vals_BK: jax.Array, idx_BK: jax.Array) -> jax.Array:
    """x̂ = Σ_k vals_k W_dec[idx_k] + b_dec: `decode` of a sparse TopK code (k rows gathered)."""
    w_BKD = params["w_dec_FD"][idx_BK]
    return jnp.einsum("bk,bkd->bd", vals_BK, w_BKD) + params["b_dec_D"][None]


def batch_sparse_terms(
    params: Params, vals_S: jax.Array, flat_S: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(rows, features, vals_s · W_dec[feature_s] [S, D]) of a `batchtopk_select` selection."""
    num_f = params["w_dec_FD"].shape[0]
    rows_S, cols_S = flat_S // num_f, flat_S % num_f
    return rows_S, cols_S, vals_S[:, None] * params["w_dec_FD"][cols_S]


def decode_batch_sparse(
    params: Params, vals_S: jax.Array, flat_S: jax.Array, num_b: int
) -> jax.Array:
    """x̂ [num_b, D] = `decode` of a BatchTopK code: each selected row of W_dec added to its row."""
    # The batchtopk counterpart of decode_sparse: B·k gathered rows instead of a [B,F]x[F,D]
    # product (and a scatter-add of B·k rows for the W_dec gradient).
    rows_S, _, terms_SD = batch_sparse_terms(params, vals_S, flat_S)
    return jax.ops.segment_sum(terms_SD, rows_S, num_segments=num_b) + params["b_dec_D"][None]


def feature_acts(
    cfg: SAEConfig, params: Params, x_BD: jax.Array, hp: HParams | None = None
) -> jax.Array:
    """Reported activation f_i · ‖W_dec,i‖ (equals f for unit-norm decoders)."""
    return encode(cfg, params, x_BD, hp) * decoder_norms(params)[None]


def fold_decoder_norms(cfg: SAEConfig, params: Params) -> Params:
    """Unit-norm decoder rows with the norms moved into W_enc, b_enc (and θ); same x̂."""
    # Scaling feature i's pre-activation by n_i scales f_i by n_i (ReLU and JumpReLU with θ·n_i
    # are positively homogeneous), so f_i W_dec,i is unchanged. TopK selection is not invariant
    # to per-feature scaling, but topk keeps unit-norm rows, so there n_i = 1 and this is a no-op;
    # the same holds for the batchtopk variants' single θ (kept as is).
    # Matryoshka's prefixes are index ranges, which folding leaves in place.
    del cfg
    n_F = decoder_norms(params)
    folded = dict(params)
    folded["w_dec_FD"] = params["w_dec_FD"] / n_F[:, None]
    folded["w_enc_DF"] = params["w_enc_DF"] * n_F[None]
    folded["b_enc_F"] = params["b_enc_F"] * n_F
    if "log_threshold_F" in params:  # θ' = θ · n, as SAELens JumpReLUSAE.fold_W_dec_norm
        folded["log_threshold_F"] = params["log_threshold_F"] + jnp.log(n_F)
    return folded
