"""The GPU-scale GPT of the budget TinyStories reproduction: ~21M parameters, hours on one GPU.

Shape in the range of the small TinyStories models (d=384, 8 layers, 6 heads of 64, context
512, RoPE, untied unembedding) with a BPE of 8k tokens: 20.5M parameters; ~2.6B tokens at batch
128 x 512 for 40k steps, bfloat16 compute.

  monosem-train-lm --config=monosem_jax/configs/gpt/tinystories.py --workdir=W
  monosem-train-lm --config=monosem_jax/configs/gpt/tinystories.py:smoke --workdir=W
"""

import ml_collections

from monosem_jax.configs.gpt import tiny


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.model.vocab_size = 8192
    config.model.context_len = 512
    config.model.d_model = 384
    config.model.n_layers = 8
    config.model.n_heads = 6
    config.model.d_mlp = 1536
    config.model.positional = "rope"
    config.model.tied_embeddings = False
    config.model.compute_dtype = "bfloat16"

    config.train.steps = 40_000
    config.train.batch_size = 128
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 1000
    config.train.log_every = 100
    config.train.eval_every = 2000
    config.train.eval_tokens = 1_048_576
    config.train.checkpoint_every = 1000
    config.train.sample_len = 256

    if arg == "smoke":  # same code paths, CPU-sized
        config.model.vocab_size = 512
        config.model.context_len = 64
        config.model.d_model = 64
        config.model.n_layers = 2
        config.model.n_heads = 4
        config.model.d_mlp = 128
        config.model.compute_dtype = "float32"
        config.train.steps = 16
        config.train.batch_size = 8
        config.train.warmup_steps = 2
        config.train.log_every = 4
        config.train.eval_every = 8
        config.train.eval_tokens = 2048
        config.train.checkpoint_every = 8
        config.train.num_samples = 2
        config.train.sample_len = 16
    elif arg:
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    return config
