"""Which SAE should the pipeline default to? Trains and evaluates several SAE variants on one
run's store and prints one table: reconstruction (EV, L0, dead, CE recovered) beside the concept
figures (best feature vs best unit, the probe ceiling, 1-sparse probing).

  python experiments/sae_variant_table.py --workdir runs/default \
      --run topk16:variant=topk,k=16 --run batchtopk16:variant=batchtopk,k=16 \
      --run anthropic_2024:variant=anthropic_2024

A run is NAME:key=value,... (monosem-train-sae config overrides; d_sae, steps, lr, ...). Finished
runs and evaluations are reused. The last stdout line is JSON: one row per run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time


def parse_run(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    # Split at commas that start a new key=, so list values keep theirs (prefixes=64,256,1024).
    return name, [f"--config.{kv}" for kv in re.split(r",(?=\w+=)", overrides) if kv]


def sh(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: {' '.join(cmd[:3])} failed: {done.stderr.strip().splitlines()[-1:]}")


def row_of(workdir: str, name: str, recovered_f1: float = 0.8) -> dict:
    sae = json.load(open(os.path.join(workdir, "sae", name, "summary.json")))
    ev = json.load(open(os.path.join(workdir, "eval", f"{name}.json")))
    table = ev.get("concept_table") or []
    row = {
        "name": name, "variant": sae.get("variant"), "d_sae": sae.get("d_sae"),
        "explained_variance": ev.get("explained_variance"), "l0": ev.get("l0"),
        "dead_fraction": ev.get("dead_fraction"), "ce_loss_recovered": ev.get("ce_loss_recovered"),
        "sae_wall_s": sae.get("wall_s"),
    }
    if table:
        row.update({
            "concepts": len(table),
            "feature_f1_ge_0_8": sum(r["f1"] >= recovered_f1 for r in table),
            "feature_beats_unit": sum(r["f1"] > r["neuron_f1"] for r in table),
            "mean_feature_f1": sum(r["f1"] for r in table) / len(table),
            "mean_unit_f1": sum(r["neuron_f1"] for r in table) / len(table),
            "f1": {r["concept"]: round(r["f1"], 3) for r in table},
            "unit_f1": {r["concept"]: round(r["neuron_f1"], 3) for r in table},
        })
        if "probe_f1" in table[0]:
            row["probe_f1"] = {r["concept"]: round(r["probe_f1"], 3) for r in table}
            row["k1_over_ceiling_ge_0_9"] = sum(
                r["sparse_probe_f1_k1"] >= 0.9 * r["probe_f1"] for r in table)
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a pipeline run with its activation store")
    p.add_argument("--run", action="append", required=True, help="NAME:key=value,...")
    p.add_argument("--eval-tokens", type=int, default=65536)
    args = p.parse_args(argv)
    t0 = time.time()
    rows = []
    for text in args.run:
        name, overrides = parse_run(text)
        if not os.path.exists(os.path.join(args.workdir, "sae", name, "summary.json")):
            sh(["monosem-train-sae", f"--workdir={args.workdir}", f"--config.name={name}",
                *overrides])
        if not os.path.exists(os.path.join(args.workdir, "eval", f"{name}.json")):
            sh(["monosem-eval", f"--workdir={args.workdir}", f"--config.sae_name={name}",
                f"--config.max_tokens={args.eval_tokens}"])
        rows.append(row_of(args.workdir, name))
        r = rows[-1]
        print(f"{name:24s} EV {r['explained_variance']:.3f} L0 {r['l0']:5.1f} dead "
              f"{r['dead_fraction']:.3f} CE {r['ce_loss_recovered']:.3f} | F1>=.8 "
              f"{r.get('feature_f1_ge_0_8')} beats unit {r.get('feature_beats_unit')} "
              f"mean F1 {r.get('mean_feature_f1', 0):.3f} (units {r.get('mean_unit_f1', 0):.3f})"
              f" k1>=.9 ceiling {r.get('k1_over_ceiling_ge_0_9')}", flush=True)
    print(json.dumps({"rows": rows, "wall_s": round(time.time() - t0, 1)}))
    return rows


if __name__ == "__main__":
    main()
