#!/usr/bin/env python3
"""The peer side of the SAE benchmarks: SAELens's own trainer on an in-memory activation array.

Runs in the peer's virtualenv (sae-lens + torch; ../shared/bench/README.md sets one up), never in
the project's. The loop is that of ../shared/bench/peer_saelens.py (sae_lens.SAETrainer fed by a
shuffling array provider, no language model), with one more architecture and peak memory:

  standard  StandardTrainingSAE: ReLU, mean ‖x − x̂‖² + l1 · mean Σ f_i ‖W_dec,i‖
  topk      TopKTrainingSAE (k; SAELens defaults: activations rescaled by decoder norms, AuxK
            only after dead_feature_window = 1000 steps, so never in a 300-step run)
  jumprelu  JumpReLUTrainingSAE: mean ‖x − x̂‖² + l0 · L0 with the step-function STE (threshold
            init and bandwidth set to ours, 0.001; SAELens subtracts b_dec from the input)

Trainer: Adam(0.9, 0.999), gradient-norm clip 1.0, constant lr, decoder rows at norm 0.1 with
W_enc = W_decᵀ. `--autocast` runs SAELens's bfloat16 autocast (its mixed-precision option).

Prints, last, one JSON line: tokens_per_s (after --warmup steps), ms_per_step, held-out mse,
explained_variance, l0, dead_fraction and peak_rss_mb (the process's peak resident memory).
"""

import argparse
import json
import os
import resource
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # SAETrainer.fit() opens a tqdm bar
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ARCHS = ("standard", "topk", "jumprelu")


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--acts", required=True)
    ap.add_argument("--arch", choices=ARCHS, default="standard")
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--l1", type=float, default=1.0, help="L1 coefficient (standard)")
    ap.add_argument("--l0", type=float, default=1.0, help="L0 coefficient (jumprelu)")
    ap.add_argument("--k", type=int, default=32, help="k (topk)")
    ap.add_argument("--autocast", action="store_true", help="SAELens's bfloat16 autocast")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--holdout", type=int, default=16384)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


class ArrayProvider:
    """SAETrainer's data provider: a fresh permutation per epoch, one gathered batch per step."""

    def __init__(self, data: torch.Tensor, batch: int, seed: int):
        self.data, self.batch = data, batch
        self.g = torch.Generator().manual_seed(seed)
        self.perm, self.pos = None, data.shape[0]
        self.t_first = None

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.t_first is None:
            self.t_first = time.perf_counter()
        if self.pos + self.batch > self.data.shape[0]:
            self.perm = torch.randperm(self.data.shape[0], generator=self.g)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return self.data.index_select(0, idx)


def make_sae(a, d_in: int):
    import sae_lens

    common = dict(d_in=d_in, d_sae=a.d_sae, dtype="float32", device="cpu")
    if a.arch == "standard":
        return sae_lens.StandardTrainingSAE(
            sae_lens.StandardTrainingSAEConfig(**common, l1_coefficient=a.l1))
    if a.arch == "topk":
        return sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(**common, k=a.k))
    return sae_lens.JumpReLUTrainingSAE(sae_lens.JumpReLUTrainingSAEConfig(
        **common, l0_coefficient=a.l0, jumprelu_init_threshold=0.001, jumprelu_bandwidth=0.001))


def trainer_config(steps: int, batch: int, lr: float, autocast: bool = False):
    """SAETrainer's settings here: constant lr, Adam(0.9, 0.999), no checkpoints, no wandb."""
    from sae_lens import LoggingConfig
    from sae_lens.config import SAETrainerConfig

    return SAETrainerConfig(
        total_training_samples=steps * batch, train_batch_size_samples=batch,
        lr=lr, lr_end=lr, lr_scheduler_name="constant", lr_warm_up_steps=0,
        lr_decay_steps=0, adam_beta1=0.9, adam_beta2=0.999, device="cpu",
        autocast=autocast, dead_feature_window=1000, feature_sampling_window=2000,
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
    )


def heldout(sae, held: torch.Tensor, d_sae: int) -> dict:
    sae.eval()
    sq_err, l0_sum = 0.0, 0.0
    fired = torch.zeros(d_sae, dtype=torch.bool)
    with torch.no_grad():
        for s in range(0, held.shape[0], 4096):
            x = held[s:s + 4096]
            f = sae.encode(x)
            f = f.to_dense() if f.is_sparse else f
            sq_err += (x - sae.decode(f)).pow(2).sum().item()
            l0_sum += (f != 0).sum().item()
            fired |= (f != 0).any(0)
    tot_var = (held.double() - held.double().mean(0)).pow(2).sum().item()
    m = held.shape[0]
    return {"mse": sq_err / m, "explained_variance": 1.0 - sq_err / tot_var, "l0": l0_sum / m,
            "dead_fraction": 1.0 - fired.float().mean().item(), "holdout_rows": m}


def main():
    a = parse()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    import sae_lens
    from sae_lens import SAETrainer

    arr = np.load(a.acts)
    assert arr.dtype == np.float32 and arr.ndim == 2, (arr.dtype, arr.shape)
    n, d_in = arr.shape
    data, held = torch.from_numpy(arr[:n - a.holdout]), torch.from_numpy(arr[n - a.holdout:])
    sae = make_sae(a, d_in)
    tcfg = trainer_config(a.steps, a.batch, a.lr, a.autocast)
    step_end, last = [], {}

    class TimedTrainer(SAETrainer):
        # fit() calls step() once per step; on CPU every op is synchronous.
        def step(self, batch):
            out = super().step(batch)
            step_end.append(time.perf_counter())
            last["out"] = out
            return out

    provider = ArrayProvider(data, a.batch, a.seed)
    trainer = TimedTrainer(cfg=tcfg, sae=sae, data_provider=provider)
    t0 = time.perf_counter()
    trainer.fit()
    t_fit = time.perf_counter() - t0
    assert len(step_end) == a.steps, len(step_end)
    w = a.warmup
    dt = step_end[-1] - (step_end[w - 1] if w > 0 else provider.t_first)
    res = {
        "system": "saelens", "sae_lens_version": sae_lens.__version__,
        "torch_version": torch.__version__, "arch": a.arch, "autocast": a.autocast,
        "d_in": d_in, "d_sae": a.d_sae, "batch": a.batch, "steps": a.steps, "lr": a.lr,
        "l1": a.l1 if a.arch == "standard" else None, "k": a.k if a.arch == "topk" else None,
        "l0_coefficient": a.l0 if a.arch == "jumprelu" else None,
        "threads": torch.get_num_threads(),
        "tokens_per_s": (a.steps - w) * a.batch / dt, "ms_per_step": 1000 * dt / (a.steps - w),
        "fit_wall_s": t_fit, "train_last_mse": last["out"].losses["mse_loss"].item(),
        "train_last_loss": last["out"].loss.item(),
        **heldout(sae, held, a.d_sae),
        # ru_maxrss is in KiB on Linux: the peak of the whole process (data, model, autograd).
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
