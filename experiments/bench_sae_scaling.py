"""How do our SAE steps and SAELens's scale with the dictionary size, in speed and memory?

Question: tokens/s and peak memory of our topk and anthropic_2024 steps and of SAELens's `topk`
and `standard` as d_sae grows 4,096 -> 16,384 -> 65,536 at the same batch. Goal (issue 12): at
d_sae 65,536 ours >= 5x the peer's tokens/s, peak memory reported for both.

  python experiments/bench_sae_scaling.py --peer-python PEER_VENV/bin/python
  python experiments/bench_sae_scaling.py --d-saes 4096,16384 --pairs topk --steps 12
  python experiments/bench_sae_scaling.py --smoke          # tiny sizes; our side only

Per (d_sae, pair), ours then the peer, each alone in its own process (ours:
bench_sae_vs_saelens.py --rounds 1 without a peer; the peer: saelens_peer.py on the same cores),
with few steps (--steps, of which --warmup untimed), so each side's peak resident memory is its
own and neither shares the machine's memory with the other. A side that fails (e.g. killed out
of memory) or passes --timeout-s is reported as such. All runs share one activation file
(--acts, else generated once).

The last stdout line is one JSON object: per d_sae and pair, ours and peer tokens/s, their ratio,
our step over the encoder forward product, both peak memories (MiB), or why a run did not finish.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import _bench_common as common

HERE = os.path.dirname(os.path.abspath(__file__))
SMOKE = dict(d_saes="128,512", steps=6, warmup=2, rows=4096, acts_d=32, batch=256,
             holdout=1024, k=8)
GOAL_RATIO_AT_LARGEST = 5.0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_acts_flags(ap)
    common.add_peer_flags(ap)
    ap.add_argument("--d-saes", default="4096,16384,65536", help="comma list of d_sae")
    ap.add_argument("--pairs", default="topk,l1", help="comma list of: topk, l1, jumprelu")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=15, help="steps per run, --warmup of them untimed")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--holdout", type=int, default=16384)
    ap.add_argument("--timeout-s", type=int, default=1500, help="wall-clock limit per run")
    ap.add_argument("--smoke", action="store_true", help=f"tiny sizes: {SMOKE}")
    return common.parse_with_smoke(ap, argv, SMOKE)


def _run(cmd: list[str], timeout_s: int) -> tuple[dict | None, str | None]:
    """(the command's last stdout line as JSON, None), or (None, why it did not finish)."""
    common.log(" ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"over --timeout-s {timeout_s}"
    if proc.returncode != 0:
        killed = " (killed: out of memory?)" if proc.returncode == -9 else ""
        return None, f"exit {proc.returncode}{killed}: {proc.stderr[-300:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def ours(a, acts: str, d_sae: int, pair: str) -> dict:
    """Our side alone (bench_sae_vs_saelens.py without a peer): its process's peak memory."""
    res, why = _run([sys.executable, os.path.join(HERE, "bench_sae_vs_saelens.py"), "--acts",
                     acts, "--pairs", pair, "--d-sae", str(d_sae), "--batch", str(a.batch),
                     "--steps", str(a.steps), "--warmup", str(a.warmup), "--k", str(a.k),
                     "--holdout", str(a.holdout), "--rounds", "1", "--peak-reps", "1",
                     "--square", "1024"], a.timeout_s)
    if res is None:
        return {"finished": False, "why": why}
    fig = res[pair]
    return {"finished": True, "tokens_per_s": fig["ours_tokens_per_s"],
            "ms_per_step": fig["ours_ms_per_step"],
            "step_over_encoder_forward": fig["ours_step_over_encoder_forward"],
            "peak_rss_mb": res["ours_peak_rss_mb"],
            "explained_variance": fig["quality_heldout"]["ours"]["explained_variance"]}


def peer(a, acts: str, d_sae: int, pair: str) -> dict:
    """SAELens alone, in its own process on the same cores (no process of ours beside it)."""
    arch = {"topk": "topk", "l1": "standard", "jumprelu": "jumprelu"}[pair]
    cpus = sorted(os.sched_getaffinity(0))
    cmd = [a.peer_python, common.PEER_SCRIPT, "--acts", acts, "--arch", arch, "--d-sae",
           str(d_sae), "--batch", str(a.batch), "--steps", str(a.steps), "--warmup",
           str(a.warmup), "--k", str(a.k), "--holdout", str(a.holdout), "--lr", "3e-4",
           "--l1", "3.0", "--threads", str(len(cpus))]
    res, why = _run(["taskset", "-c", ",".join(map(str, cpus)), *cmd], a.timeout_s)
    if res is None:
        return {"finished": False, "why": why}
    return {"finished": True, "tokens_per_s": res["tokens_per_s"],
            "ms_per_step": res["ms_per_step"], "peak_rss_mb": res["peak_rss_mb"],
            "explained_variance": res["explained_variance"]}


def one_run(a, acts: str, d_sae: int, pair: str) -> dict:
    out = {"ours": ours(a, acts, d_sae, pair)}
    if a.peer_python:
        out["peer"] = peer(a, acts, d_sae, pair)
        if out["ours"]["finished"] and out["peer"]["finished"]:
            out["ratio"] = out["ours"]["tokens_per_s"] / out["peer"]["tokens_per_s"]
    return out


def main(argv=None) -> dict:
    a = parse_args(argv)
    d_saes = [int(v) for v in a.d_saes.split(",") if v.strip()]
    pairs = [p.strip() for p in a.pairs.split(",") if p.strip()]
    skipped = common.peer_unavailable(a)
    if skipped:
        common.log(f"peer skipped: {skipped}; timing our side only")
        a.peer_python = ""
    with tempfile.TemporaryDirectory(prefix="bench_sae_scaling_") as tmp:
        acts, acts_info = common.acts_file(a, tmp)
        runs = {str(f): {p: one_run(a, acts, f, p) for p in pairs} for f in d_saes}
    largest = runs[str(max(d_saes))]
    out = {"bench": "sae_scaling", "command": " ".join([sys.executable, *sys.argv]),
           "peer_skipped": skipped, "acts": acts_info,
           "config": {"d_saes": d_saes, "pairs": pairs, "batch": a.batch, "steps": a.steps,
                      "warmup": a.warmup, "k": a.k, "timeout_s": a.timeout_s},
           "runs": runs, "goal_ratio_at_largest": GOAL_RATIO_AT_LARGEST,
           "meets_goal_at_largest": {p: (r["ratio"] >= GOAL_RATIO_AT_LARGEST
                                         if "ratio" in r else None)
                                     for p, r in largest.items()}}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
