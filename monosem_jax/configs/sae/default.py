"""SAE training on a captured activation store (the pipeline's default: topk, k 16 annealed
from 64; BUILD.md, "The default SAE", has the comparison that chose it).

monosem-train-sae --workdir=W                                      (after capture)
monosem-train-sae --workdir=W --config.variant=anthropic_2024      (the paper's L1 SAE)
monosem-sweep --workdir=W --config.sweep.grid="k=8,16,32,64"  (one compiled program)
monosem-sweep --workdir=W --config.variant=anthropic_2024 --config.sweep.grid="l1_coef=1,2,4,8"
monosem-train-sae --workdir=W --config.profile_steps=5   (a jax.profiler trace of 5 steps)
"""

import ml_collections
from ml_collections.config_dict import placeholder

from monosem_jax import config_values


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = ""  # run folder W/sae/<name>; "" = the variant's name
    # anthropic_2024 | topk | towards_2023 | jl | jumprelu | matryoshka | batchtopk |
    # matryoshka_batchtopk
    config.variant = "topk"
    config.hook = "blocks.0.hook_resid_post"  # which captured store to train on (the middle)
    config.store = ""  # store root: "" = W/acts; else a path or a JSON TensorStore kvstore spec

    config.d_sae = 2048  # dictionary size (16 x d for the tiny GPT)
    config.steps = 600  # optimizer steps
    config.batch_size = 4096  # rows per step
    config.seed = 0  # init (and the data order unless data_seed >= 0)
    config.data_seed = -1  # data order, a pure function of (data_seed, step); -1 = seed

    # None = the variant's default from the reference implementations (monosem_jax/sae/step.py).
    # Adam peak lr, decaying linearly to 0 over the last lr_decay_frac. 2e-3 suits the 600-step
    # CPU budget (BUILD.md, "The default SAE"); long runs use Anthropic's 5e-5.
    config.lr = 2e-3
    config.lr_decay_frac = 0.2
    # lambda of the L1 penalty (anthropic_2024, towards_2023, matryoshka)
    config.l1_coef = placeholder(float)
    config.l1_warmup_frac = 0.05  # lambda warms up linearly over this fraction of steps
    config.k = 16  # topk: active latents per row (batchtopk variants: per row on average)
    # topk, batchtopk variants: k at step 0, annealed linearly to k (0 = no schedule). Starting
    # wide lets most latents fire early (fewer dead; BUILD.md, "The default SAE").
    config.k_start = 64
    config.k_anneal_frac = 0.5  # topk, batchtopk variants: fraction of steps over which k anneals
    config.k_aux = 256  # topk, batchtopk variants: dead latents in the AuxK loss
    config.aux_coef = 1 / 32  # topk, batchtopk variants: AuxK coefficient
    # batchtopk variants: weight of each batch's smallest kept activation in the running average
    # θ that replaces the batch rule at inference (f = z if z > θ)
    config.threshold_rate = 0.01
    config.jl_coef = placeholder(float)  # jl: final coefficient of the JL penalty
    config.jl_warmup_frac = 0.4  # jl: the coefficient eases from 5x down to jl_coef (gpt_sae)
    config.l0_coef = placeholder(float)  # jumprelu: L0 coefficient
    config.jumprelu_bandwidth = 0.001
    # matryoshka, matryoshka_batchtopk: nested prefix sizes, e.g. (64, 256, 1024) or on the
    # command line --config.prefixes=64,256,1024 (d_sae appended); () = d_sae/32, /8, /2, d_sae
    config.prefixes = ()
    config.dead_steps = (
        200  # steps without firing before a latent counts as dead (AuxK, resampling)
    )
    config.resample_steps = ()  # towards_2023: the steps at which dead latents resample
    # The sparse step (same result, fewer FLOPs: monosem_jax/sae/sparse.py): the decoder and the
    # encoder's weight gradient over the active latents only. TopK variants always use it unless
    # 0; the ReLU variants and jumprelu for each batch whose rows all have at most this many
    # active latents (others take the dense step). 0 = always dense; -1 = d_sae / 128 (where
    # the two cost the same on CPU; below d_sae 1024 the ReLU variants stay dense).
    config.sparse_capacity = -1
    # The encoder product's operands: "float32" or "bfloat16" (float32 accumulation, params and
    # gradients; ~1.6x that product on CPUs with AVX-512 BF16; a sweep can set it per run).
    config.matmul_dtype = "float32"

    # Devices on the mesh's 'model' axis: each holds d_sae / model_parallel latents (W_enc
    # columns, W_dec rows, their Adam moments and counters); the other devices of all processes
    # split each batch ('data'). 1 = the dictionary whole on every device (pure data parallel).
    config.model_parallel = 1
    # Where training rows come from: "store" (a captured store: config.hook, config.store) or
    # "lm" (the trained LM's hook activations computed in the same jitted program as the SAE
    # step, through an on-device shuffle buffer: no store on disk).
    config.source = "store"
    # source "lm" (held-out rows: the eval split's first eval_rows rows): the shuffle buffer, in
    # batches (lm_buffer_batches x batch_size rows, on every device and in every checkpoint); a
    # row stays in it a geometric number of steps, this many on average
    config.lm_buffer_batches = 8
    # source "lm": which positions of each fresh context give rows (capture's meaning: 0 = all
    # positions, n = n random per context; position 0, the attention sink, excluded)
    config.lm_positions_per_context = 0
    config.lm_exclude_first = True

    config.eval_rows = 65536  # held-out rows (the store's last rows; source lm: see above)
    config.shuffle_blocks = 8  # shuffle buffer, in shards
    config.prefetch = 2  # shards read ahead in a background thread
    config.log_every = 50  # progress line + metrics.jsonl row (and TensorBoard: <run>/tensorboard)
    config.checkpoint_every = 200
    # Steps traced by jax.profiler after this run's first (compiling) step, into
    # W/sae/<name>/profile (a sweep: W/sweep/<name>/profile); 0 = off.
    config.profile_steps = 0

    config.sweep = ml_collections.ConfigDict()
    config.sweep.name = "sweep"  # W/sweep/<name>; members are W/sae/<name>_<i>
    # "key=v1,v2,..." axes (their product is the sweep), one per item, or space-separated in one
    # string on the command line (--config.sweep.grid="k=8,16 seed=0,1"): any of lr, l1_coef, k,
    # k_start, aux_coef, jl_coef, l0_coef, seed, l1_warmup_frac, lr_decay_frac, k_anneal_frac,
    # threshold_rate.
    config.sweep.grid = config_values.names("k=8,16,32,64")
    config.sweep.strategy = "auto"  # auto | vmap | map | loop: how members share one program

    if arg == "smoke":
        config.hook = "blocks.0.hook_resid_post"
        config.d_sae = 128
        config.steps = 40
        config.batch_size = 256
        config.eval_rows = 1024
        config.log_every = 10
        config.checkpoint_every = 10
        config.dead_steps = 10
        config.k = 8
        config.k_start = 32
        config.k_aux = 16
        config.sweep.grid = ("k=4,8", "seed=0,1")
    elif arg:
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    return config
