"""Benchmark: tokens/s of our jitted GPT train step against a PyTorch reference of the same shape.

  python experiments/bench_lm.py  # tiny CPU shape (monosem_jax/configs/gpt/tiny.py)
  python experiments/bench_lm.py --steps 20 --rounds 5    # longer, steadier medians
  python experiments/bench_lm.py --shape=gpu  # monosem_jax/configs/gpt/tinystories.py's shape

Both sides train the same decoder (pre-LN, fused-qkv causal attention, GELU(tanh) MLP, tied or
untied unembedding, learned or rotary positions) with the same AdamW (b1 .9, b2 .95, weight decay
0.1 on the 2-D parameters only), global-norm clipping at 1.0 and warm-up-cosine learning rate, on
the same random token batches (fixed seed) of the same batch x context. The PyTorch side is written
here: `scaled_dot_product_attention(is_causal=True)`, `torch.optim.AdamW` (fused), float32 (or
bfloat16 autocast where the config computes in bfloat16), `torch.set_num_threads` = the cores JAX
uses; it is timed eager and, unless --no-compile, under `torch.compile` too, the better of the two
being the reference. OMP_WAIT_POLICY defaults to PASSIVE for torch (--omp-wait-policy): with
libgomp's default spinning barriers torch ran 3-4x slower on a shared 2-core machine, which would
flatter JAX. Before timing, a copy of the torch model loaded with the JAX initial parameters trains
--check-steps steps beside JAX: the losses and the parameters after the updates must agree (same
model, same AdamW/mask/clipping/schedule); parameter counts must match exactly and both initial
losses must be ~ln(vocab).

Compilation and --warmup steps are excluded; each round times --steps steps of every contender,
alternating which goes first, and the medians over --rounds are reported (machine noise hits every
contender alike). The process CPU time per step is reported beside the rates: on a loaded machine
it is the steadier measure of work. The last stdout line is one JSON object: jax_tokens_per_s,
torch_tokens_per_s (the reference), ratio = jax / torch, the per-round figures and the config.

PyTorch is not a dependency of monosem_jax: `pip install torch==2.13.0` (CPU wheel) to run this.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import signal
import statistics
import sys
import time

import numpy as np

CONFIGS = {"cpu": "monosem_jax/configs/gpt/tiny.py",
           "gpu": "monosem_jax/configs/gpt/tinystories.py"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PIN = "torch==2.13.0"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(CONFIGS), default="cpu",
                   help="cpu: configs/gpt/tiny.py; gpu: configs/gpt/tinystories.py")
    p.add_argument("--config", default=None,
                   help="config file path[:arg] (overrides --shape)")
    p.add_argument("--batch", type=int, default=None, help="windows per step (default: config)")
    p.add_argument("--context", type=int, default=None, help="tokens per window (default: config)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round per contender")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    p.add_argument("--check-steps", type=int, default=3,
                   help="steps trained from identical params on both sides; losses must agree")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--compile-timeout", type=float, default=180.0,
                   help="seconds torch.compile may take before it is skipped")
    p.add_argument("--omp-wait-policy", default="PASSIVE",
                   help="OMP_WAIT_POLICY for torch's OpenMP threads unless already set in the "
                        "environment ('' leaves it unset); PASSIVE avoids spinning barriers, "
                        "which on a shared machine made torch several times slower")
    args = p.parse_args(argv)
    for name in ("steps", "rounds"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    return args


def load_config(spec: str):
    """A config file's get_config(arg), for `path[:arg]` (a path relative to the repo works)."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path) and os.path.exists(os.path.join(REPO, path)):
        path = os.path.join(REPO, path)
    module_spec = importlib.util.spec_from_file_location("bench_lm_config", path)
    if module_spec is None or not os.path.exists(path):
        raise SystemExit(f"bench_lm: no config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg)


def import_torch(omp_wait_policy: str):
    if omp_wait_policy and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = omp_wait_policy  # read when libgomp loads, with torch
    try:
        import torch
    except ImportError:
        print(f"bench_lm: PyTorch is not installed; run: pip install {TORCH_PIN}", file=sys.stderr)
        sys.exit(1)
    return torch


def lr_at(step: int, tc) -> float:
    """optax.warmup_cosine_decay_schedule(0, peak, warmup, decay_steps=steps, end) at `step`."""
    peak = tc.learning_rate
    if step < tc.warmup_steps:
        return peak * step / tc.warmup_steps
    decay = max(tc.steps - tc.warmup_steps, 1)
    t = min(step - tc.warmup_steps, decay)
    alpha = tc.min_lr_ratio
    return peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t / decay)) + alpha)


# ------------------------------------------------------------------------------------ PyTorch


def torch_gpt(torch, cfg):
    """The PyTorch reference GPT of a GPTConfig (classes built here: torch is imported lazily)."""
    nn, F = torch.nn, torch.nn.functional
    d, h, k = cfg.d_model, cfg.n_heads, cfg.d_head

    def rope(x_BLHZ):
        length = x_BLHZ.shape[1]
        inv_freq_Z = 1.0 / 10000.0 ** (
            torch.arange(0, k, 2, dtype=torch.float32, device=x_BLHZ.device) / k
        )
        angles_LZ = torch.arange(length, dtype=torch.float32, device=x_BLHZ.device)[:, None]
        angles_LZ = angles_LZ * inv_freq_Z[None, :]
        cos, sin = angles_LZ.cos()[None, :, None, :], angles_LZ.sin()[None, :, None, :]
        x1, x2 = x_BLHZ.float().chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return out.to(x_BLHZ.dtype)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_attn = nn.LayerNorm(d, eps=cfg.ln_eps)
            self.qkv = nn.Linear(d, 3 * d)
            self.attn_out = nn.Linear(d, d)
            self.ln_mlp = nn.LayerNorm(d, eps=cfg.ln_eps)
            self.mlp_in = nn.Linear(d, cfg.d_mlp)
            self.mlp_out = nn.Linear(cfg.d_mlp, d)

        def forward(self, x_BLD):
            b, length, _ = x_BLD.shape
            qkv_BL3HZ = self.qkv(self.ln_attn(x_BLD)).view(b, length, 3, h, k)
            q_BLHZ, k_BLHZ, v_BLHZ = qkv_BL3HZ.unbind(2)
            if cfg.positional == "rope":
                q_BLHZ, k_BLHZ = rope(q_BLHZ), rope(k_BLHZ)
            attn_BHLZ = F.scaled_dot_product_attention(
                q_BLHZ.transpose(1, 2), k_BLHZ.transpose(1, 2), v_BLHZ.transpose(1, 2),
                is_causal=True,
            )
            x_BLD = x_BLD + self.attn_out(attn_BHLZ.transpose(1, 2).reshape(b, length, d))
            mlp_BLF = F.gelu(self.mlp_in(self.ln_mlp(x_BLD)), approximate="tanh")
            return x_BLD + self.mlp_out(mlp_BLF)

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(cfg.vocab_size, d)
            if cfg.positional == "learned":
                self.pos_embed = nn.Parameter(torch.empty(cfg.context_len, d))
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layers))
            self.ln_final = nn.LayerNorm(d, eps=cfg.ln_eps)
            if not cfg.tied_embeddings:
                self.unembed = nn.Linear(d, cfg.vocab_size)
            self.reset_parameters()

        @torch.no_grad()
        def reset_parameters(self):
            """The JAX init: normal(0.02) matrices, GPT-2 residual scaling, zero biases."""
            out_std = 0.02 / (2 * cfg.n_layers) ** 0.5
            for name, p in self.named_parameters():
                if name == "pos_embed":
                    p.normal_(0.0, 0.01)
                elif name.endswith(("attn_out.weight", "mlp_out.weight")):
                    p.normal_(0.0, out_std)
                elif p.ndim == 2:
                    p.normal_(0.0, 0.02)
                elif ".ln_" in name or name.startswith("ln_"):
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                else:
                    p.zero_()

        def forward(self, tokens_BL):
            x_BLD = self.embed(tokens_BL)
            if cfg.positional == "learned":
                x_BLD = x_BLD + self.pos_embed[None, : tokens_BL.shape[1]]
            for block in self.blocks:
                x_BLD = block(x_BLD)
            x_BLD = self.ln_final(x_BLD)
            if cfg.tied_embeddings:
                return F.linear(x_BLD, self.embed.weight).float()
            return self.unembed(x_BLD).float()

    return GPT()


def load_jax_params(torch, model, params) -> None:
    """Copies a JAX parameter tree into the torch reference (Dense kernels transposed)."""
    p = {k: np.asarray(v) for k, v in _flatten(params).items()}
    sd = {"embed.weight": p["embed/embedding"], "ln_final.weight": p["ln_final/scale"],
          "ln_final.bias": p["ln_final/bias"]}
    if "pos_embed" in p:
        sd["pos_embed"] = p["pos_embed"]
    if "unembed/kernel" in p:
        sd["unembed.weight"], sd["unembed.bias"] = p["unembed/kernel"].T, p["unembed/bias"]
    i = 0
    while f"block_{i}/qkv/kernel" in p:
        for layer in ("qkv", "attn_out", "mlp_in", "mlp_out"):
            sd[f"blocks.{i}.{layer}.weight"] = p[f"block_{i}/{layer}/kernel"].T
            sd[f"blocks.{i}.{layer}.bias"] = p[f"block_{i}/{layer}/bias"]
        for ln in ("ln_attn", "ln_mlp"):
            sd[f"blocks.{i}.{ln}.weight"] = p[f"block_{i}/{ln}/scale"]
            sd[f"blocks.{i}.{ln}.bias"] = p[f"block_{i}/{ln}/bias"]
        i += 1
    device = next(model.parameters()).device
    model.load_state_dict({k: torch.tensor(np.ascontiguousarray(v), device=device)
                           for k, v in sd.items()}, strict=True)


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else key
        out.update(_flatten(value, name) if hasattr(value, "items") else {name: value})
    return out


class TorchTrainer:
    """Model + AdamW + clipping + schedule; `step(tokens_BL1)` is one update like JAX's."""

    def __init__(self, torch, model, model_cfg, train_cfg, device, compile_model=False):
        self.torch, self.model, self.tc, self.device = torch, model, train_cfg, device
        decay = [p for p in model.parameters() if p.ndim == 2]  # the JAX mask: p.ndim == 2
        no_decay = [p for p in model.parameters() if p.ndim != 2]
        self.params = decay + no_decay
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": train_cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=0.0, betas=(train_cfg.b1, train_cfg.b2), eps=1e-8, fused=True,
        )
        self.autocast = model_cfg.compute_dtype == "bfloat16"
        self.loss_fn = torch.compile(self._loss) if compile_model else self._loss
        self.count = 0

    def _loss(self, tokens_BL1):
        logits_BLV = self.model(tokens_BL1[:, :-1])
        targets_BL = tokens_BL1[:, 1:]
        return self.torch.nn.functional.cross_entropy(
            logits_BLV.reshape(-1, logits_BLV.shape[-1]), targets_BL.reshape(-1)
        )

    def step(self, tokens_BL1):
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.loss_fn(tokens_BL1)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.tc.grad_clip)
        lr = lr_at(self.count, self.tc)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.count += 1
        return loss, grad_norm

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


# ------------------------------------------------------------------------------------ timing


class _Timeout(Exception):
    pass


def _alarm(seconds: float):
    def handler(signum, frame):
        raise _Timeout()

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _disarm():
    signal.setitimer(signal.ITIMER_REAL, 0)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch = import_torch(args.omp_wait_policy)

    import jax

    from monosem_jax.gpt import model as gpt_model
    from monosem_jax.gpt import step as gpt_step

    config = load_config(args.config or CONFIGS[args.shape])
    if args.batch is not None:
        config.train.batch_size = args.batch
    if args.context is not None:
        config.model.context_len = args.context
    model_cfg, train_cfg = gpt_step.configs_from(config)
    batch, length, vocab = train_cfg.batch_size, model_cfg.context_len, model_cfg.vocab_size
    tokens_per_step = batch * length
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    if jax.default_backend() == "gpu" and not torch.cuda.is_available():
        raise SystemExit("bench_lm: JAX runs on a GPU but this torch has no CUDA; install a CUDA "
                         "build of torch to compare on GPU")
    device = torch.device("cuda" if jax.default_backend() == "gpu" else "cpu")
    load_start = os.getloadavg()[0]
    log = lambda *a: print("[bench_lm]", *a, file=sys.stderr, flush=True)
    log(f"shape {model_cfg}; batch {batch} x context {length}; jax {jax.__version__} on "
        f"{jax.default_backend()} ({len(jax.devices())} device(s)), torch {torch.__version__} on "
        f"{device} ({torch.get_num_threads()} threads), {cores} cores")

    # Identical random batches for both sides, placed on their devices ahead of time.
    rng = np.random.default_rng(args.seed)
    batches_np = rng.integers(0, vocab, size=(4, batch, length + 1), dtype=np.int32)
    jax_batches = [jax.device_put(b) for b in batches_np]
    torch_batches = [torch.from_numpy(b.astype(np.int64)).to(device) for b in batches_np]

    # --- JAX: compile, parameter count, initial loss.
    state = gpt_step.init_state(model_cfg, train_cfg)
    jax_params = gpt_model.num_params(state["params"])
    init_params_np = jax.device_get(state["params"])
    step_fn = gpt_step.compile_train_step(model_cfg, train_cfg)
    t0 = time.perf_counter()
    state, metrics = step_fn(state, jax_batches[0])
    jax_losses = [float(metrics["loss"])]
    jax_compile_s = time.perf_counter() - t0
    for i in range(1, max(args.check_steps, 1)):
        state, metrics = step_fn(state, jax_batches[i % 4])
        jax_losses.append(float(metrics["loss"]))
    checked_params_np = jax.device_get(state["params"])
    for i in range(args.warmup):
        state, metrics = step_fn(state, jax_batches[i % 4])
    jax.block_until_ready(state)
    jax_cache_after_warmup = step_fn._cache_size()
    log(f"jax: {jax_params} params, initial loss {jax_losses[0]:.4f} (ln V = {math.log(vocab):.4f})"
        f", compile+first step {jax_compile_s:.1f}s")

    # --- PyTorch: own init (same scale), parameter count, initial loss.
    torch.manual_seed(args.seed)
    eager = TorchTrainer(torch, torch_gpt(torch, model_cfg).to(device), model_cfg, train_cfg,
                         device)
    torch_params = sum(p.numel() for p in eager.model.parameters())
    loss, _ = eager.step(torch_batches[0])
    torch_initial_loss = loss.item()
    for i in range(args.warmup):
        eager.step(torch_batches[(i + 1) % 4])
    eager.sync()
    log(f"torch: {torch_params} params, initial loss {torch_initial_loss:.4f}")
    if torch_params != jax_params:
        raise SystemExit(f"bench_lm: parameter counts differ: jax {jax_params} vs torch "
                         f"{torch_params}")
    for name, value in (("jax", jax_losses[0]), ("torch", torch_initial_loss)):
        # Near-zero logits give ln(vocab); the init's logit variance adds ~0.02^2 * d_model / 2.
        if abs(value - math.log(vocab)) > 0.02 * math.log(vocab):
            raise SystemExit(f"bench_lm: {name} initial loss {value:.4f} is not ~ln(vocab) = "
                             f"{math.log(vocab):.4f}")

    # --- Same math: a torch copy of the JAX initial params trains beside the JAX losses above.
    twin = TorchTrainer(torch, torch_gpt(torch, model_cfg).to(device), model_cfg, train_cfg,
                        device)
    load_jax_params(torch, twin.model, init_params_np)
    twin_losses = [twin.step(torch_batches[i % 4])[0].item() for i in range(len(jax_losses))]
    max_loss_diff = max(abs(a - b) for a, b in zip(jax_losses, twin_losses, strict=True))
    # ... and the parameters after those updates (AdamW, mask, clipping and schedule) agree too.
    jax_after = torch_gpt(torch, model_cfg).to(device)
    load_jax_params(torch, jax_after, checked_params_np)
    jax_before = torch_gpt(torch, model_cfg).to(device)
    load_jax_params(torch, jax_before, init_params_np)
    after, before = jax_after.state_dict(), jax_before.state_dict()
    max_param_diff = max((after[k] - v).abs().max().item()
                         for k, v in twin.model.state_dict().items())
    max_update = max((after[k] - v).abs().max().item() for k, v in before.items())
    del twin, jax_after, jax_before
    tol = 2e-2 if model_cfg.compute_dtype == "bfloat16" else 1e-3
    log(f"same-params losses: jax {[round(x, 5) for x in jax_losses]} torch "
        f"{[round(x, 5) for x in twin_losses]} (max diff {max_loss_diff:.2e}); params after "
        f"{len(jax_losses)} steps differ by <= {max_param_diff:.2e} (largest update "
        f"{max_update:.2e})")
    if max_loss_diff > tol:
        raise SystemExit(f"bench_lm: JAX and torch losses from the same params differ by "
                         f"{max_loss_diff:.2e} > {tol}: the two models are not the same math")
    if model_cfg.compute_dtype == "float32" and max_param_diff > 0.01 * max_update + 1e-6:
        raise SystemExit(f"bench_lm: parameters after {len(jax_losses)} identical steps differ "
                         f"by {max_param_diff:.2e} (updates up to {max_update:.2e}): the two "
                         "optimisers are not the same")

    # --- torch.compile (optional): compile time bounded by --compile-timeout.
    compiled, compile_note, torch_compile_s = None, None, None
    if args.no_compile:
        compile_note = "skipped (--no-compile)"
    else:
        torch.manual_seed(args.seed)
        compiled = TorchTrainer(torch, torch_gpt(torch, model_cfg).to(device), model_cfg,
                                train_cfg, device, compile_model=True)
        t0 = time.perf_counter()
        try:
            _alarm(args.compile_timeout)
            compiled.step(torch_batches[0])
            compiled.sync()
            _disarm()
            torch_compile_s = time.perf_counter() - t0
            for i in range(args.warmup):
                compiled.step(torch_batches[(i + 1) % 4])
            compiled.sync()
            log(f"torch.compile: compile+first step {torch_compile_s:.1f}s")
        except _Timeout:
            compiled = None
            compile_note = f"skipped: compilation took > {args.compile_timeout:.0f}s"
        except Exception as e:  # noqa: BLE001 - any inductor failure just skips compile
            _disarm()
            compiled = None
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            compile_note = f"skipped: torch.compile failed: {type(e).__name__}: {first[:200]}"
        if compile_note:
            log(f"torch.compile {compile_note}")

    # --- Timed rounds, alternating which contender goes first.
    def timed(run, sync):
        """(tokens/s, process CPU ms per step) of --steps steps."""
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return tokens_per_step * args.steps / wall, 1e3 * cpu / args.steps

    def run_jax():
        nonlocal state
        for i in range(args.steps):
            state, _ = step_fn(state, jax_batches[i % 4])

    def time_jax():
        return timed(run_jax, lambda: jax.block_until_ready(state))

    def time_torch(trainer):
        def run():
            for i in range(args.steps):
                trainer.step(torch_batches[i % 4])

        return timed(run, trainer.sync)

    contenders = {"jax": time_jax, "torch_eager": lambda: time_torch(eager)}
    if compiled is not None:
        contenders["torch_compiled"] = lambda: time_torch(compiled)
    per_round = {name: [] for name in contenders}
    cpu_ms = {name: [] for name in contenders}
    for r in range(args.rounds):
        order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
        for name in order:
            rate, cpu = contenders[name]()
            per_round[name].append(rate)
            cpu_ms[name].append(cpu)
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {per_round[n][-1]:,.0f} tok/s ({cpu_ms[n][-1]:.0f} CPU ms/step)"
            for n in contenders))
    if step_fn._cache_size() != jax_cache_after_warmup:
        log("warning: the jitted JAX step recompiled during timing")

    medians = {name: statistics.median(v) for name, v in per_round.items()}
    reference = max((n for n in medians if n.startswith("torch")), key=medians.get)
    result = {
        "jax_tokens_per_s": round(medians["jax"], 1),
        "torch_tokens_per_s": round(medians[reference], 1),
        "ratio": round(medians["jax"] / medians[reference], 4),
        "torch_reference": reference,
        "ratio_vs_torch_eager": round(medians["jax"] / medians["torch_eager"], 4),
        "torch_eager_tokens_per_s": round(medians["torch_eager"], 1),
        "torch_compiled_tokens_per_s": (round(medians["torch_compiled"], 1)
                                        if "torch_compiled" in medians else None),
        "torch_compile": compile_note or "ok",
        "torch_compile_s": None if torch_compile_s is None else round(torch_compile_s, 1),
        "jax_compile_s": round(jax_compile_s, 1),
        "jax_recompiled": step_fn._cache_size() != jax_cache_after_warmup,
        "per_round_tokens_per_s": {n: [round(x, 1) for x in v] for n, v in per_round.items()},
        "cpu_ms_per_step": {n: round(statistics.median(v), 1) for n, v in cpu_ms.items()},
        # Work per step, torch reference / JAX (> 1: JAX spends less CPU): steadier than the
        # rates when other jobs share the cores.
        "cpu_ratio": round(statistics.median(cpu_ms[reference])
                           / statistics.median(cpu_ms["jax"]), 4),
        "params": jax_params,
        "torch_params": torch_params,
        "initial_loss": {"jax": round(jax_losses[0], 5), "torch": round(torch_initial_loss, 5),
                         "ln_vocab": round(math.log(vocab), 5)},
        "same_params_max_loss_diff": float(f"{max_loss_diff:.3g}"),
        "same_params_max_param_diff": float(f"{max_param_diff:.3g}"),
        "same_params_max_update": float(f"{max_update:.3g}"),
        "config": args.config or CONFIGS[args.shape],
        "batch": batch,
        "context": length,
        "vocab_size": vocab,
        "d_model": model_cfg.d_model,
        "n_layers": model_cfg.n_layers,
        "n_heads": model_cfg.n_heads,
        "d_mlp": model_cfg.d_mlp,
        "positional": model_cfg.positional,
        "tied_embeddings": model_cfg.tied_embeddings,
        "compute_dtype": model_cfg.compute_dtype,
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "threads": cores,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "jax_backend": jax.default_backend(),
        "torch_device": str(device),
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
