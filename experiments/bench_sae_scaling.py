"""How do our SAE steps and SAELens's scale with the dictionary size, in speed and memory?

Question: tokens/s and peak memory of our topk and anthropic_2024 steps and of SAELens's `topk`
and `standard` as d_sae grows 4,096 -> 16,384 -> 65,536 at the same batch. Goal (issue 12): at
d_sae 65,536 ours >= 5x the peer's tokens/s, peak memory reported for both.

  python experiments/bench_sae_scaling.py --peer-python PEER_VENV/bin/python
  python experiments/bench_sae_scaling.py --d-saes 4096,16384 --pairs topk --steps 12
  python experiments/bench_sae_scaling.py --smoke          # tiny sizes; our side only

Each (d_sae, pair) is one run of bench_sae_vs_saelens.py in its own process (--rounds 1, few
steps: --steps, of which --warmup untimed), so each side's peak resident memory is that run's
alone: ours is the benchmark process's (the peer runs in a child), the peer's its own process's.
A run that fails (e.g. killed out of memory) or passes --timeout-s is reported as such, with the
side that did not finish. All runs share one activation file (--acts, else generated once).

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


def one_run(a, acts: str, d_sae: int, pair: str) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "bench_sae_vs_saelens.py"), "--acts", acts,
           "--pairs", pair, "--d-sae", str(d_sae), "--batch", str(a.batch), "--steps",
           str(a.steps), "--warmup", str(a.warmup), "--k", str(a.k), "--holdout", str(a.holdout),
           "--rounds", "1", "--peak-reps", "1", "--square", "1024"]
    if a.peer_python:
        cmd += ["--peer-python", a.peer_python]
    common.log(f"d_sae {d_sae} {pair}: {' '.join(cmd)}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout_s)
    except subprocess.TimeoutExpired as e:
        last = (e.stderr or b"")[-400:]
        last = last.decode(errors="replace") if isinstance(last, bytes) else last
        return {"finished": False, "why": f"over --timeout-s {a.timeout_s}", "log_tail": last}
    if proc.returncode != 0:
        return {"finished": False, "why": f"exit {proc.returncode}",
                "log_tail": proc.stderr[-600:]}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    fig = res[pair]
    per_round = res.get(pair, {}).get("per_round_peer", {})
    out = {"finished": True, "ours_tokens_per_s": fig["ours_tokens_per_s"],
           "ours_ms_per_step": fig["ours_ms_per_step"],
           "ours_step_over_encoder_forward": fig["ours_step_over_encoder_forward"],
           "ours_peak_rss_mb": res["ours_peak_rss_mb"],
           "ours_explained_variance": fig["quality_heldout"]["ours"]["explained_variance"]}
    if "peer_tokens_per_s" in fig:
        out.update(peer_tokens_per_s=fig["peer_tokens_per_s"],
                   peer_ms_per_step=fig["peer_ms_per_step"],
                   ratio=fig["ratio_median_of_rounds"],
                   peer_peak_rss_mb=fig.get("peer_peak_rss_mb"),
                   peer_explained_variance=fig["quality_heldout"]["peer"]["explained_variance"],
                   peer_process_cpu_share=per_round.get("process_cpu_share"))
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
           "meets_goal_at_largest": {p: (r.get("ratio", 0.0) >= GOAL_RATIO_AT_LARGEST
                                         if "ratio" in r else None)
                                     for p, r in largest.items()}}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
