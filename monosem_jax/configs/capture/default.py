"""Activation capture: which hooks, which positions, and the store's layout.

monosem-capture --workdir=W                            (after the LM stage; pipeline config)
monosem-capture --workdir=W --config.hooks=blocks.0.hook_resid_post,blocks.1.hook_mlp_out
monosem-pipeline --workdir=W --config.capture.hooks=blocks.0.hook_resid_post,blocks.1.hook_mlp_out
"""

import ml_collections

from monosem_jax import config_values


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Hook names; the default is the 2-layer tiny GPT's middle residual stream. A names field
    # (config_values.names): on the command line a comma-separated list.
    config.hooks = config_values.names("blocks.0.hook_resid_post")
    config.dtype = "float32"  # stored dtype: "float32" | "bfloat16" (half the bytes)
    config.positions_per_context = 0  # 0 = all positions; n = n random per context (Towards M.)
    config.exclude_first = True  # drop position 0 of each context (an outlier: attention sink)
    config.max_rows = 0  # cap on stored rows (0 = the whole split)
    config.split = "train"  # which split's contexts to run: "train" | "eval"
    config.batch_size = 64  # contexts per forward pass
    config.rows_per_shard = 65536  # rows per zarr3 shard file (32 MB at d=128 float32)
    config.max_in_flight = 4  # shard writes pending before the loop waits
    config.seed = 0  # which positions are kept when positions_per_context > 0
    config.kvstore = (
        ""  # "" = W/acts; or a path; or a JSON TensorStore kvstore spec (gcs, s3, memory)
    )
    config.forward_only_batches = 8  # batches timed without writing (the summary's reference)
    if arg == "smoke":
        config.hooks = ("blocks.0.hook_resid_post",)
        config.batch_size = 16
        config.rows_per_shard = 4096
        config.forward_only_batches = 2
    elif arg:
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    return config
