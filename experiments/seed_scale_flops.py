"""Expected wall time of configs/pipeline/tinystories_gpu.py on one H100 / H200, from the FLOPs
and bytes XLA counts in each stage's compiled step (compiled for the CPU; nothing is allocated at
full size: every argument is a jax.ShapeDtypeStruct).

  python experiments/seed_scale_flops.py                 # the full config: ~10 s of compiles
  python experiments/seed_scale_flops.py --arg smoke     # the smoke variant's shapes
  python experiments/seed_scale_flops.py --mfu 0.2       # a more pessimistic sustained fraction

Measured programs: the LM train step (gpt/step.py), the capture forward
(activations/capture.hook_activations), the SAE train step (sae/step.train_step) at k_start while
k anneals and at k after (the loop compiles both), and the LM's full forward and the SAE's
encode + decode, from which the eval stage (3 LM forwards per token: clean, spliced, zero-ablated,
plus the SAE) and the browser (1 LM forward + the SAE) are estimated.

Hours per stage, two ways: "compute" = FLOPs / (peak x mfu), the LM stages' bfloat16 matmuls at
the dense bfloat16 peak, the SAE's float32 ones at the TF32 peak (assuming XLA's default precision
uses TF32 on an H100); "roofline" = each step at the slower of that and bytes / (HBM bandwidth x
bw_eff). The byte counts are XLA's CPU counts (its fusions, not a GPU's), which likely over-count
a GPU's traffic: expect between the two. Left out: compilation, checkpoints, host-side work; the
store's disk traffic is printed apart (io_hours), and the corpus stage (CPU: tokenizer training
and encoding) only with --corpus-sample, timed on this machine and scaled linearly by bytes.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from monosem_jax.activations import capture  # noqa: E402
from monosem_jax.configs.pipeline import tinystories_gpu  # noqa: E402
from monosem_jax.gpt import model as gpt_model  # noqa: E402
from monosem_jax.gpt import step as gpt_step  # noqa: E402
from monosem_jax.sae import model as sae_model  # noqa: E402
from monosem_jax.sae import run as sae_run  # noqa: E402
from monosem_jax.sae import step as sae_step  # noqa: E402

# One GPU's dense peaks (NVIDIA's H100 SXM / H200 SXM datasheets, without sparsity): the two
# share the compute; the H200 has HBM3e at 4.8 TB/s against the H100's HBM3 at 3.35 TB/s.
GPUS = {
    "h100": {"bf16_flops": 989.4e12, "tf32_flops": 494.7e12, "hbm_bytes_per_s": 3.35e12},
    "h200": {"bf16_flops": 989.4e12, "tf32_flops": 494.7e12, "hbm_bytes_per_s": 4.8e12},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arg", default="", help="the config's arg: '' (full size) or 'smoke'")
    p.add_argument("--mfu", type=float, default=0.3,
                   help="sustained fraction of the matmul peak (small models: d 384)")
    p.add_argument("--bw-eff", type=float, default=0.6, help="sustained fraction of HBM bandwidth")
    p.add_argument("--disk-write", type=float, default=1e9, help="store write bytes/s (capture)")
    p.add_argument("--disk-read", type=float, default=2e9, help="store read bytes/s (SAE)")
    p.add_argument("--corpus-sample", default="",
                   help="a TinyStories-format file: time the corpus stage on it (this machine's "
                        "CPU) and scale its tokens and time to --corpus-bytes")
    p.add_argument("--corpus-bytes", type=float, default=2.2e9,
                   help="size of the real corpus (TinyStoriesV2-GPT4-train.txt: ~2.2 GB)")
    return p.parse_args(argv)


def cost(fn, *args, **static) -> dict:
    """XLA's FLOPs and bytes accessed of `fn` compiled for abstract `args`."""
    compiled = jax.jit(functools.partial(fn, **static)).lower(*args).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0]
    return {"flops": float(analysis["flops"]), "bytes": float(analysis["bytes accessed"])}


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def lm_costs(config) -> dict:
    model_cfg, train_cfg = gpt_step.configs_from(config.lm)
    state = jax.eval_shape(lambda: gpt_step.init_state(model_cfg, train_cfg))
    batch, length = train_cfg.batch_size, model_cfg.context_len
    tokens_BL1 = jax.ShapeDtypeStruct((batch, length + 1), jnp.int32)
    train = cost(gpt_step.train_step, state, tokens_BL1, model_cfg=model_cfg, train_cfg=train_cfg)
    forward = cost(gpt_step.loss_fn, state["params"], tokens_BL1, model_cfg=model_cfg)
    return {
        "model_cfg": model_cfg,
        "params": gpt_model.num_params(state["params"]),
        "train_step": train,
        "tokens_per_step": batch * length,
        "forward_per_token": {k: v / (batch * length) for k, v in forward.items()},
    }


def capture_cost(config, model_cfg, params) -> dict:
    cfg = capture.capture_config_from(config.capture)
    length = model_cfg.context_len
    kept = capture.kept_positions(cfg, 0, length).size
    tokens_BL = jax.ShapeDtypeStruct((cfg.batch_size, length), jnp.int32)
    positions_BK = jax.ShapeDtypeStruct((cfg.batch_size, kept), jnp.int32)
    batch = cost(capture.hook_activations.__wrapped__, params, tokens_BL, positions_BK,
                 model_cfg=model_cfg, hooks=cfg.hooks)
    return {"batch": batch, "rows_per_batch": cfg.batch_size * kept,
            "tokens_per_batch": cfg.batch_size * length, "cfg": cfg}


def sae_costs(config, d: int) -> dict:
    cfg = sae_run.TrainConfig.from_config(config.sae)
    spec = sae_run.run_spec(cfg, workdir="", d=d)
    settled = sae_run.k_settled_step(spec)  # annealing steps run at k_start, the rest at k
    phases = [(spec.sae_cfg, settled if settled is not None else spec.steps)]
    if settled is not None:
        final = dataclasses.replace(spec.sae_cfg, k=int(spec.hparams["k"]))
        phases.append((final, spec.steps - settled))
    hp = spec.device_hparams()
    x_BD = jax.ShapeDtypeStruct((cfg.batch_size, d), jnp.float32)
    out = []
    for sae_cfg, steps in phases:
        state = jax.eval_shape(lambda c=sae_cfg: sae_step.init_state(c, jax.random.key(0)))
        step = cost(sae_step.train_step, state, x_BD, hp, cfg=sae_cfg)
        out.append({"k": sae_cfg.k, "steps": steps, "step": step})
    final_cfg = phases[-1][0]
    params = jax.eval_shape(lambda: sae_model.init_params(final_cfg, jax.random.key(0)))
    fwd = cost(lambda p, x: sae_model.decode(p, sae_model.encode(final_cfg, p, x, hp)),
               params, x_BD)
    return {"cfg": cfg, "sae_cfg": final_cfg, "phases": out,
            "forward_per_row": {k: v / cfg.batch_size for k, v in fwd.items()},
            "params": sum(math.prod(x.shape) for x in jax.tree.leaves(params))}


def corpus_sample(config, args) -> dict:
    """The corpus stage on --corpus-sample at the config's vocabulary, scaled by bytes to the
    real corpus: its tokens (so the capture's available rows) and a linear time estimate."""
    import tempfile

    from monosem_jax.corpus import prepare

    config.corpus.path = os.path.abspath(args.corpus_sample)
    with tempfile.TemporaryDirectory() as workdir:
        t = time.time()
        summary = prepare.prepare(config, workdir)
        elapsed = time.time() - t
    sample_bytes = os.path.getsize(args.corpus_sample)
    scale = args.corpus_bytes / sample_bytes
    train_tokens = summary["train_tokens"] * scale
    length = config.lm.model.context_len
    kept = config.capture.positions_per_context or length - 1
    return {"sample_bytes": sample_bytes, "sample_tokens": summary["train_tokens"]
            + summary["eval_tokens"], "sample_stage_s": elapsed,
            "bytes_per_token": sample_bytes / (summary["train_tokens"] + summary["eval_tokens"]),
            "corpus_bytes": args.corpus_bytes, "corpus_train_tokens": train_tokens,
            "capture_rows_available": int(train_tokens // length) * kept,
            "corpus_stage_hours_linear": elapsed * scale / 3600}


def seconds(flops: float, bytes_: float, peak: float, gpu: dict, args) -> float:
    return max(flops / (peak * args.mfu), bytes_ / (gpu["hbm_bytes_per_s"] * args.bw_eff))


def estimate(config, args) -> dict:
    t0 = time.time()
    lm = lm_costs(config)
    model_cfg = lm["model_cfg"]
    params = jax.eval_shape(lambda: gpt_model.init_params(model_cfg, jax.random.key(0)))
    cap = capture_cost(config, model_cfg, params)
    sae = sae_costs(config, gpt_model.hook_dim(model_cfg, cap["cfg"].hooks[0]))
    compile_s = time.time() - t0

    train_cfg = gpt_step.configs_from(config.lm)[1]
    # Capture: total_rows = max_rows (the split's rows when 0 or larger: unknown here).
    rows = cap["cfg"].max_rows or cap["rows_per_batch"]
    cap_batches = math.ceil(rows / cap["rows_per_batch"])
    lm_fwd, sae_fwd = lm["forward_per_token"], sae["forward_per_row"]
    eval_tokens, browse_tokens = config.eval.max_tokens, config.browse.max_tokens

    # (cost, peak key, count) of each stage's repeated programs.
    stages = {
        "lm": [(lm["train_step"], "bf16_flops", train_cfg.steps)],
        "capture": [(cap["batch"], "bf16_flops", cap_batches)],
        "sae": [(p["step"], "tf32_flops", p["steps"]) for p in sae["phases"]],
        "eval": [({k: 3 * lm_fwd[k] for k in lm_fwd}, "bf16_flops", eval_tokens),
                 (sae_fwd, "tf32_flops", eval_tokens)],
        "browse": [(lm_fwd, "bf16_flops", browse_tokens), (sae_fwd, "tf32_flops", browse_tokens)],
    }
    result = {"stages": {}}
    for name, parts in stages.items():
        entry = {"flops": sum(c["flops"] * n for c, _, n in parts),
                 "bytes": sum(c["bytes"] * n for c, _, n in parts)}
        for gpu_name, gpu in GPUS.items():
            # compute: every step at mfu x peak; roofline: each step at its slower bound.
            entry[f"{gpu_name}_compute_hours"] = sum(
                n * c["flops"] / (gpu[peak] * args.mfu) for c, peak, n in parts) / 3600
            entry[f"{gpu_name}_roofline_hours"] = sum(
                n * seconds(c["flops"], c["bytes"], gpu[peak], gpu, args)
                for c, peak, n in parts) / 3600
        result["stages"][name] = entry
    for bound in ("compute", "roofline"):
        result[f"total_{bound}_hours"] = {
            g: sum(e[f"{g}_{bound}_hours"] for e in result["stages"].values()) for g in GPUS}

    store_bytes = rows * gpt_model.hook_dim(model_cfg, cap["cfg"].hooks[0]) * (
        2 if cap["cfg"].dtype == "bfloat16" else 4)
    sae_rows = sae["cfg"].steps * sae["cfg"].batch_size
    result.update({
        "config_arg": args.arg,
        "lm_params": lm["params"],
        "lm_train_step": {**lm["train_step"], "steps": train_cfg.steps,
                          "tokens_per_step": lm["tokens_per_step"],
                          "flops_per_token_over_6N": lm["train_step"]["flops"]
                          / lm["tokens_per_step"] / (6 * lm["params"])},
        "capture_batch": {**cap["batch"], "batches": cap_batches,
                          "tokens_per_batch": cap["tokens_per_batch"],
                          "rows_per_batch": cap["rows_per_batch"]},
        "sae_params": sae["params"],
        "sae_train_step": sae["phases"],
        "lm_forward_per_token": lm_fwd,
        "sae_forward_per_row": sae_fwd,
        "store_bytes": store_bytes,
        "io_hours": {"capture_write": store_bytes / args.disk_write / 3600,
                     "sae_read": sae_rows / rows * store_bytes / args.disk_read / 3600},
        "assumptions": {"gpus": GPUS, "mfu": args.mfu, "bw_eff": args.bw_eff,
                        "disk_write_bytes_per_s": args.disk_write,
                        "disk_read_bytes_per_s": args.disk_read},
        "backend": jax.default_backend(),
        "compile_s": compile_s,
    })
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    result = estimate(tinystories_gpu.get_config(args.arg), args)
    if args.corpus_sample:
        result["corpus_sample"] = corpus_sample(tinystories_gpu.get_config(args.arg), args)
    for name, e in result["stages"].items():
        print(f"{name:8s} {e['flops']:.3e} FLOPs {e['bytes']:.3e} bytes | hours: compute "
              f"{e['h100_compute_hours']:.3f}, roofline H100 {e['h100_roofline_hours']:.3f} "
              f"H200 {e['h200_roofline_hours']:.3f}", file=sys.stderr)
    print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
