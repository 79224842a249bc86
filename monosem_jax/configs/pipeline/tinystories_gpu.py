"""The budget TinyStories run at seed scale, on one GPU: real TinyStories -> 8k BPE -> the 20.5M
GPT (configs/gpt/tinystories.py) -> its middle residual stream (blocks.3.hook_resid_post, d 384)
-> a 16,384-latent TopK SAE with 20 active latents per token -> eval -> feature browser.

It needs the real corpus: download TinyStoriesV2-GPT4-train.txt (2.2 GB, the Hugging Face
dataset roneneldan/TinyStories) and pass its path; without it the corpus stage stops at once
with "no such file" (the default path is that file's name, relative to the current folder):

  monosem-pipeline --workdir=W --config=monosem_jax/configs/pipeline/tinystories_gpu.py \
      --config.corpus.path=/data/TinyStoriesV2-GPT4-train.txt
  monosem-pipeline --workdir=W --config=monosem_jax/configs/pipeline/tinystories_gpu.py:smoke

`smoke` keeps every section's wiring (the residual hook at the LM's middle, bfloat16 store,
sampled positions, topk with an annealed k) at CPU size on the embedded generated corpus.

Expected wall time on one H100 or H200: ~0.35 h of GPU compute, up to 1.85 h (H100) / 1.29 h
(H200) where the steps are memory-bound; plus ~0.2 h off the GPU. From the FLOPs and bytes XLA
counts in each stage's compiled program at these shapes (compiled for the CPU from
jax.ShapeDtypeStruct arguments, nothing allocated), 2026-12-06:

  python experiments/seed_scale_flops.py --corpus-sample /work/shared/data/tinystories_dev.txt

  stage    program, shape                     FLOPs/step  steps   FLOPs    compute  roofline
                                                                           (both)   H100 / H200
  lm       train step, 128 x 512 tokens       8.19e12     40,000  3.28e17  0.307 h  1.746 / 1.219
  capture  forward to blocks.3, 256 x 512     2.32e12      2,048  4.76e15  0.004 h  0.017 / 0.012
  sae      topk step, 4,096 x 384 -> 16,384   2.59e11     65,536  1.70e16  0.032 h  0.083 / 0.058
  eval     3 LM fwd + SAE per token, 2^20     -           -       1.58e14  <0.001   0.001 / <0.001
  browse   1 LM fwd + SAE per token, 2^20     -           -       7.02e13  <0.001   <0.001
  total                                                           3.50e17  0.343 h  1.847 / 1.289

- compute: FLOPs at 30% of the dense peak, the same on both GPUs (989 TFLOP/s bfloat16 for the
  LM's matmuls; 495 TFLOP/s TF32 for the SAE's float32 ones, assuming XLA's default precision
  uses TF32 there; at full float32 precision, 67 TFLOP/s, the SAE takes ~0.24 h).
- roofline: each step at the slower of that and its bytes at 60% of HBM bandwidth (3.35 TB/s
  H100, 4.8 TB/s H200). XLA's CPU byte counts over-count a GPU's fused traffic (316 GB per LM
  step); the LM's einsum attention writes float32 [128, 6, 512, 512] scores per layer, so its
  step is partly memory-bound: expect between the two columns.
- LM step FLOPs = 1.02 x 6 x 20.5M params per token. SAE step: the same at k 64 (annealing, the
  first half) and k 20; it counts the AuxK branch, which runs whenever a latent is dead.
- Off the GPU: the corpus stage, 2.4 s for the 8.4 MB sample here (2 CPU cores), ~0.18 h for
  2.2 GB scaled linearly (~520M tokens at 4.17 bytes per token: 130M rows available to capture,
  2x the 2^26 kept); the store's 51.5 GB written and 4 x 51.5 GB read, ~0.04 h at 1 and 2 GB/s.
  Not counted: compilation, checkpoints, host-side work of eval and browse.

Not yet run on a GPU (none was lent to the session that wrote it); its test
(tests/test_tinystories_gpu_config.py) proves the full-size shapes with jax.eval_shape and runs
the smoke variant end to end. Disk: the store (51.5 GB), the corpus (2.2 GB) and its tokens
(~1 GB) need ~56 GB free.
"""

import ml_collections

from monosem_jax.configs.gpt import tinystories as gpt_tinystories
from monosem_jax.configs.pipeline import tiny


def residual_hook(n_layers: int) -> str:
    """The residual stream at the LM's middle: after block n_layers/2 - 1 (blocks.3 of 8)."""
    return f"blocks.{max(n_layers // 2 - 1, 0)}.hook_resid_post"


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    if arg not in ("", "smoke"):
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    # tiny.py's sections (corpus, tokenizer, capture, sae, eval, browse, compare_variants), each
    # commented where it is defined; only what differs at seed scale is set here.
    config = tiny.get_config(arg)

    # The real corpus: a TinyStories dump (stories separated by <|endoftext|> lines). The
    # default is the file's name, so a command without --config.corpus.path fails clearly in
    # the corpus stage instead of training the 20M LM on the small generated corpus.
    config.corpus.path = "TinyStoriesV2-GPT4-train.txt"
    config.corpus.format = "tinystories"
    # ~2.7M stories: 1% held out is ~5M tokens, more than the LM eval, eval and browse read.
    config.tokenizer.eval_fraction = 0.01
    config.tokenizer.vocab_size = 8192  # the 20M GPT's BPE (configs/gpt/tinystories.py)

    # 20.5M parameters, 40k steps of 128 x 512 tokens (2.6B tokens, ~5 passes), bfloat16.
    config.lm = gpt_tinystories.get_config(arg)
    config.lm.model.vocab_size = config.tokenizer.get_ref("vocab_size")

    hook = residual_hook(config.lm.model.n_layers)
    config.capture.hooks = (hook,)
    # 2^26 rows x 384 x 2 bytes = 51.5 GB: the ~50 GB of residuals of the budget run. bfloat16
    # halves the store (the SAE reads it back as float32); 128 sampled positions per context
    # spread those rows over 524k contexts (~270M tokens, half of TinyStories) instead of 131k.
    config.capture.dtype = "bfloat16"
    config.capture.positions_per_context = 128
    config.capture.max_rows = 2**26
    config.capture.batch_size = 256  # contexts per forward (131k tokens; GPU memory is no limit)
    # 65,536 rows = 50 MB shards at d 384 bfloat16: shard-aligned writes and reads.
    config.capture.rows_per_shard = 65536

    config.sae.hook = hook
    config.sae.variant = "topk"  # exactly k active latents per token
    config.sae.d_sae = 16384  # 42.7 x d_model
    config.sae.k = 20  # ~20 active latents per token, as in the budget run
    config.sae.k_start = 64  # k anneals 64 -> 20 over the first half (fewer dead latents)
    config.sae.k_anneal_frac = 0.5
    # 65,536 steps x 4,096 rows = 268M rows: four passes over the 67M-row store. The SAE's
    # compute is minutes on one GPU; the store's disk is the limit, so rows repeat rather than
    # the store growing past a 64 GB disk (12.6M SAE parameters against 26G stored values).
    config.sae.steps = 65536
    config.sae.batch_size = 4096
    # Adam peak lr (decayed over the last 20%), the order of OpenAI's TopK trainer
    # (openai/sparse_autoencoder train.py: 1e-4 at 32,768 latents); 2e-3 is the CPU default's.
    config.sae.lr = 2e-4
    # Dead = no firing for ~10M rows (that trainer's dead_toks_threshold): 2,500 x 4,096 rows.
    config.sae.dead_steps = 2500
    config.sae.k_aux = 256  # dead latents in the AuxK loss (that trainer's auxk)
    config.sae.eval_rows = 2**20  # held-out rows (the store's last 1M) for the run's summary
    config.sae.shuffle_blocks = 16  # 16 shards (1M rows) per shuffle window
    config.sae.log_every = 500
    config.sae.checkpoint_every = 4096

    config.eval.max_tokens = 2**20  # eval-split tokens: 2,048 contexts of 512
    config.eval.batch_size = 64
    config.browse.max_tokens = 2**20  # ~20M activations: top examples for rarer latents too
    config.browse.batch_size = 64
    # The budget run trains one SAE; --config.compare_variants=anthropic_2024 adds the paper's
    # L1 SAE beside it (its l1_coef untuned for this model).
    config.compare_variants = ()

    if arg == "smoke":  # the wiring above at CPU size, on the generated corpus
        config.corpus.path = ""
        config.corpus.format = "auto"
        config.tokenizer.eval_fraction = 0.1
        config.tokenizer.vocab_size = 512
        config.capture.positions_per_context = 16  # of the smoke LM's 64
        config.capture.max_rows = 0
        config.capture.batch_size = 16
        config.capture.rows_per_shard = 4096
        config.sae.d_sae = 256  # 4 x d_model
        config.sae.k, config.sae.k_start = 8, 32
        config.sae.steps = 40
        config.sae.batch_size = 256
        config.sae.lr = 2e-3
        config.sae.dead_steps = 10
        config.sae.k_aux = 16
        config.sae.eval_rows = 1024
        config.sae.shuffle_blocks = 8
        config.sae.log_every = 10
        config.sae.checkpoint_every = 10
        config.eval.max_tokens = 2048
        config.eval.batch_size = 8
        config.browse.max_tokens = 2048
        config.browse.batch_size = 8
    return config
