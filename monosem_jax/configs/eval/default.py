"""Held-out evaluation of one SAE run: reconstruction, CE recovered, neurons, planted concepts.

monosem-eval --workdir=W                    (after the SAE stage; evaluates the pipeline's SAE)
monosem-eval --workdir=W --config.sae_name=topk16 --config.max_tokens=131072
monosem-eval --workdir=W --config=monosem_jax/configs/eval/default.py:smoke
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.sae_name = ""  # the run W/sae/<sae_name>; "" = the pipeline's SAE
    config.split = "eval"  # corpus split whose contexts are evaluated (held out from LM and SAE)
    config.max_tokens = 65536  # tokens of that split used (whole context windows; 0 = all)
    config.batch_size = 16  # contexts per forward pass (the last batch is padded and masked)
    # Skip position 0 of each context everywhere (metrics, splice, CE), as capture does: it is
    # the attention sink, an outlier the SAE never saw in training.
    config.exclude_first = True

    # Concept detection: a unit detects a concept where its activation exceeds a threshold.
    # Each unit gets the thresholds at which it is positive on these fractions of a token sample
    # (its quantiles); SAE features also get "> 0", neurons and residual dimensions also the
    # mirrored rule "below" (they are signed). The best (unit, threshold) per concept is reported.
    config.threshold_rates = (0.5, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002)
    config.threshold_sample_tokens = 8192  # tokens (strided over the windows) for the quantiles
    config.recovered_f1 = 0.8  # a concept counts as recovered by a unit with F1 >= this

    # Probes (analysis/probes.py): per concept, a logistic probe on the hook's activations (the
    # linear ceiling) and SAEBench-style k-sparse probes on the k latents with the largest
    # |class-mean difference|; fit on a train part of the eval windows, F1 on the rest.
    config.probe_tokens = 32768  # tokens sampled (whole windows, seeded; 0 = every eval window)
    config.probe_train_fraction = 0.5  # this fraction of the sampled windows train, the rest test
    config.probe_seed = 0  # which windows are sampled
    config.probe_l2 = 1e-4  # L2 on standardized inputs, per mean BCE (sklearn C = 1/(l2 N))
    config.probe_steps = 100  # full-batch L-BFGS steps (one program fits every probe)
    config.probe_ks = (1, 2, 5)  # latents per sparse probe (SAEBench's k_values)

    if arg == "smoke":
        config.max_tokens = 2048
        config.batch_size = 8
        config.threshold_sample_tokens = 512
    elif arg:
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    return config
