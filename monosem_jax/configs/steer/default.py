"""Steering: generate with SAE features clamped at the hook, baseline and doses side by side.

monosem-steer --workdir=W --config.features=123 --config.clamp_values=-2,2,5,10
monosem-steer --workdir=W --config.features=123,456 --config.scale=absolute --config.clamp_values=8
    --config.prompts="Once upon a time||One day, a little"
Writes W/steer/<name>.json (every continuation) and W/steer/<name>.md (side by side).
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.sae_name = ""  # the run W/sae/<sae_name>; "" = the pipeline's SAE
    config.features = ()  # feature ids, clamped together (required; command line: 12,40)
    # Clamp values (one dose each, all in one compiled program); negative values push the
    # feature's direction out. scale "max": multiples of each feature's maximum activation on
    # held-out tokens (the paper's "10x max"); "absolute": reported activations as they are.
    config.clamp_values = (-2.0, 2.0, 5.0, 10.0)
    config.scale = "max"
    config.prompts = "Once upon a time||One day, a little||There was a"  # "||" separates prompts
    config.num_samples = 4  # continuations per prompt and dose (same random keys for all doses)
    config.num_new = 40  # tokens generated after each prompt
    config.temperature = 1.0  # 0 = greedy
    config.top_k = 0  # sample among the k likeliest tokens (0 = all)
    config.seed = 0
    config.max_tokens = 65536  # eval tokens scanned for each feature's maximum activation
    config.name = ""  # W/steer/<name>.json; "" = steer_<feature ids>

    if arg == "smoke":
        config.num_samples = 2
        config.num_new = 8
        config.max_tokens = 2048
    elif arg:
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    return config
