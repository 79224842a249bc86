"""Attribution against ablation for one prompt (monosem-attribute).

monosem-attribute --workdir=W --config.prompt="Lily wanted to play in the park. She"
monosem-attribute --workdir=W --config.sae_name=topk16 --config.target="logit: park"
monosem-attribute --workdir=W --config=monosem_jax/configs/attribution/default.py:smoke
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.sae_name = ""  # the run W/sae/<sae_name>; "" = the pipeline's SAE
    # The prompt; it gets the EOT document separator in front, as every training document did.
    config.prompt = "Once upon a time, there was a little girl named Lily. She loved to play"
    # What is attributed: 'loss' (mean next-token CE over the prompt), 'loss:last' (CE of its
    # last token), 'logit:next' (logit of its last token where it is predicted), or
    # 'logit:<token>' (logit after the prompt of a one-token string, e.g. 'logit: park', or of
    # a token id, e.g. 'logit:264').
    config.target = "loss"
    config.chunk = 64  # features ablated per vmapped forward (memory ~ chunk x L x vocab floats)
    config.top = 20  # features printed and summarised, by |attribution|
    # Leave position 0 (the EOT attention sink, excluded from the SAE's training data as in
    # capture and eval) entirely in the frozen error term: no feature is attributed there.
    config.exclude_first = True
    config.name = ""  # output W/attribution/<name>.{json,png}; '' = <sae_name>_<hash of prompt>

    if arg == "smoke":
        config.prompt = "Lily went to the park. She"
        config.chunk = 8
        config.top = 5
    elif arg:
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    return config
