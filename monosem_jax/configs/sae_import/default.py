"""monosem-import: a SAELens SAE folder (trained anywhere on this work dir's LM and hook) turned
into the SAE run W/sae/<name>/, which eval, browser, steering, search and attribution then use
like one trained here.

monosem-import --workdir=W --from=DIR --config.name=saelens_topk
monosem-import --workdir=W --from=DIR --config.name=x --config.hook=blocks.1.hook_resid_post
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # The run folder W/sae/<name> (letters, digits, '.', '_', '-'); "" = the --from folder's
    # name. An existing run is never overwritten.
    config.name = ""
    # The LM hook the SAE reads; "" = cfg.json's metadata.hook_name. Must be a hook of this work
    # dir's LM (blocks.<i>.hook_resid_post, ...) whose width is the SAE's d_in.
    config.hook = ""

    if arg and arg != "smoke":  # smoke: nothing to shrink (the import converts one folder)
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    return config
