"""The static feature browser of one SAE run, written to W/browser (open W/browser/index.html).

monosem-browse --workdir=W                         (after the SAE stage; the pipeline's SAE)
monosem-browse --workdir=W --config.sae_name=topk16 --config.max_features=1000
monosem-browse --workdir=W --config=monosem_jax/configs/browse/default.py:smoke
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.sae_name = ""  # the run W/sae/<sae_name>; "" = the pipeline's SAE
    config.split = "eval"  # corpus split whose contexts are read (held out from LM and SAE)
    config.max_tokens = 131072  # tokens of that split read (whole context windows; 0 = all)
    config.batch_size = 16  # contexts per LM + SAE forward pass
    config.max_features = 0  # write features 0..max_features-1 only (0 = all)

    config.top_n = 20  # highest-activating examples per feature
    config.context_before = 24  # tokens shown before each example (within its context window)
    config.context_after = 8  # and after it
    config.quantile_bins = 4  # equal-count bins of the nonzero activations, shown below the top
    config.per_bin = 3  # examples per bin
    config.sample_size = 32  # uniform sample of nonzero activations per feature the bins use
    config.logit_top = 10  # promoted / suppressed output tokens per feature
    # A feature's label is its most frequent top-activating tokens, prefixed with its
    # best-matching planted concept when that concept's F1 is at least this.
    config.label_min_f1 = 0.3

    if arg == "smoke":
        config.max_tokens = 2048
        config.batch_size = 8
        config.top_n = 5
        config.sample_size = 8
        config.quantile_bins = 2
        config.per_bin = 2
    elif arg:
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    return config
