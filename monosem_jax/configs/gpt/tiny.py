"""The tiny GPT of the embedded default: 0.66M parameters, trained in ~4 minutes on 2 CPU cores.

The recipe is chosen so that the model uses the story's topic (topic context gain >= 0.3 nats,
experiments/topic_context_gain.py): two RoPE layers at a peak learning rate of 6e-3 pass the
phase change at ~500 steps; four RoPE layers at 3e-3 need ~750-1,000 (BUILD.md,
"The default LM recipe").

monosem-train-lm --config=monosem_jax/configs/gpt/tiny.py --workdir=W  (W/data from monosem-prepare)
monosem-train-lm --config=monosem_jax/configs/gpt/tiny.py:smoke --workdir=W
monosem-train-lm --config=monosem_jax/configs/gpt/tiny.py --workdir=W --config.profile_steps=5
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict()
    config.model.vocab_size = 2048  # >= the tokenizer's vocabulary (tokens 0..V-1)
    config.model.context_len = 128  # tokens per training window
    config.model.d_model = 128  # residual width: the width of the SAE's input
    config.model.n_layers = 2  # 2 RoPE layers carry the topic sooner than 4 (BUILD.md)
    config.model.n_heads = 4
    config.model.d_mlp = 512  # MLP hidden width (4 x d_model)
    config.model.positional = "rope"  # "learned" | "rope" (RoPE: lower loss at equal steps)
    config.model.tied_embeddings = True  # unembedding = embedding^T (fewer params on CPU)
    config.model.compute_dtype = "float32"  # "bfloat16" on GPUs; params stay float32
    config.model.ln_eps = 1e-5

    config.train = ml_collections.ConfigDict()
    config.train.seed = 0  # params init and the data order, a pure function of (seed, step)
    config.train.steps = 700  # ~3.5 min alone on 2 cores; past the topic phase change (~500)
    config.train.batch_size = 32  # windows per step (divisible by the device count)
    config.train.learning_rate = 6e-3  # peak, after linear warm-up; cosine decay after (1e-2:
    # no topic phase change by 600 steps; 6e-3: gain 0.37 at 700)
    config.train.warmup_steps = 25
    config.train.min_lr_ratio = 0.1  # final lr = min_lr_ratio x peak
    config.train.weight_decay = 0.1  # AdamW, matrices only
    config.train.b1 = 0.9
    config.train.b2 = 0.95
    config.train.grad_clip = 1.0  # global gradient norm
    config.train.log_every = 20  # progress line + metrics.jsonl row
    config.train.eval_every = 175  # eval loss on the fixed held-out windows
    config.train.eval_tokens = 65536  # held-out tokens evaluated (capped by the eval split)
    config.train.checkpoint_every = 50  # Orbax checkpoint interval (resume granularity)
    config.train.max_to_keep = 2
    config.train.num_samples = 4  # stories sampled into lm/samples.txt at the end
    config.train.sample_len = 120
    config.train.temperature = 0.8
    config.train.top_k = 40

    # Steps traced by jax.profiler after this run's first (compiling) step, into W/lm/profile
    # (TensorBoard's profile tab, XProf); 0 = off. The metrics go to W/lm/tensorboard always.
    config.profile_steps = 0

    if arg == "smoke":
        config.model.vocab_size = 512
        config.model.context_len = 32
        config.model.d_model = 32
        config.model.n_layers = 2
        config.model.n_heads = 2
        config.model.d_mlp = 64
        config.train.steps = 24
        config.train.batch_size = 8
        config.train.warmup_steps = 4
        config.train.log_every = 4
        config.train.eval_every = 12
        config.train.eval_tokens = 2048
        config.train.checkpoint_every = 8
        config.train.num_samples = 2
        config.train.sample_len = 16
    elif arg:
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    return config
