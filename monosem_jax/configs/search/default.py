"""Feature search: the features a prompt activates, or contrastive search between prompt sets.

monosem-search --workdir=W --config.prompt="The fish swam in the sea."
monosem-search --workdir=W --config.with_prompts="She swam in the sea.||The waves were big." \
    --config.without_prompts="She baked a cake.||The cow slept in the barn."
monosem-search --workdir=W --config=monosem_jax/configs/search/default.py:smoke --config.prompt=...
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.sae_name = ""  # the run W/sae/<sae_name>; "" = the pipeline's SAE
    # Exactly one mode: `prompt` (one prompt: per-token and overall top features), or both
    # `with_prompts` and `without_prompts` (contrastive search; each a list of prompts joined by
    # "||", search.SEPARATOR, so a single "|" may still appear inside a prompt).
    config.prompt = ""
    config.with_prompts = ""
    config.without_prompts = ""
    # Text run through the LM before every prompt but not searched: features of a small LM can
    # depend on the story around a word and on its position (search.Prompt).
    config.context = ""
    config.top_n = 10  # features listed per token / overall / in the contrastive ranking
    # Contrastive score over per-prompt max activations (monosem_jax/intervene/search.py):
    # "f1" | "fire_diff" | "max_diff" | "norm_max_diff". f1 was best on experiments/
    # feature_search.py (192 prompts a side); with a handful of prompts it takes few values and
    # max_diff (mean max activation with - without) can be the easier ranking to read.
    config.score = "f1"
    config.batch_size = 32  # prompts per forward pass in contrastive mode
    # Output W/search/<name>.json; "" = <sae_name>_<mode>_<hash of the prompts> (no clobbering).
    config.name = ""

    if arg == "smoke":
        config.top_n = 5
        config.batch_size = 8
    elif arg:
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    return config
