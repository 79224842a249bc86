"""monosem-pipeline: every stage in order in one work directory, skipping finished ones.

  monosem-pipeline --workdir=W                                  (the embedded default corpus)
  monosem-pipeline --workdir=W --config.corpus.path=stories.txt (a real corpus)

Each stage records the config sections it was run with in `W/pipeline/<stage>.json`;
rerunning with different values for those sections is refused (use a fresh --workdir) so one work
directory never mixes two experiments. A finished stage (its summary.json exists) is skipped;
an unfinished one resumes from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import ml_collections
from absl import logging

from monosem_jax import (
    cli,
    config_values,
    distributed,
    metrics_io,
    observe,
    report,
    stage_config,
    workdir_lock,
)
from monosem_jax.activations import capture
from monosem_jax.analysis import evaluate
from monosem_jax.browser import write as browser_write
from monosem_jax.corpus import prepare
from monosem_jax.gpt import step as gpt_step
from monosem_jax.gpt import train as gpt_train
from monosem_jax.sae import model as sae_model
from monosem_jax.sae import run as sae_run
from monosem_jax.sae import train as sae_train


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # also the folder W/<name> holding its summary.json
    sections: tuple[str, ...]  # config sections that determine its output
    run: Callable[[ml_collections.ConfigDict, str], dict]
    # Several processes (jax.distributed): process 0 runs it alone and the others read its
    # summary; the other stages run on every process, sharing the work.
    primary_only: bool = False


def _lm_stage(config, workdir):
    return gpt_train.train_and_evaluate(config.lm, workdir)


def _capture_stage(config, workdir):
    return capture.capture(config.capture, workdir)


def _sae_stage(config, workdir):
    return sae_train.train_sae(config.sae, workdir)


def _evaluate_once(eval_config, workdir):
    # monosem-eval alone always recomputes (about a minute); the pipeline skips a finished one.
    name = metrics_io.resolve_sae_name(workdir, evaluate.eval_config_from(eval_config).sae_name)
    finished = metrics_io.finished_summary(
        os.path.join(workdir, "eval", f"{name}.json"), f"evaluation of {name}"
    )
    return finished if finished is not None else evaluate.evaluate(eval_config, workdir)


def _eval_stage(config, workdir):
    return _evaluate_once(config.eval, workdir)


def _compare_stage(config, workdir):
    """Trains and evaluates each of config.compare_variants beside the default SAE, with the
    default's settings (each variant's own coefficients), for the report's side-by-side tables."""
    default_name = config.sae.name or config.sae.variant  # the sae stage's run (run_spec)
    summaries = {}
    for variant in config_values.str_tuple("compare_variants", config.compare_variants):
        if variant == default_name:
            continue
        sae_config = ml_collections.ConfigDict(config.sae.to_dict())
        sae_config.variant, sae_config.name = variant, variant
        trained = sae_train.train_sae(sae_config, workdir)
        eval_config = ml_collections.ConfigDict(config.eval.to_dict())
        eval_config.sae_name = variant
        evaluated = _evaluate_once(eval_config, workdir)
        summaries[variant] = {
            "sae_wall_s": trained.get("wall_s"),
            **{k: evaluated.get(k) for k in COMPARED},
        }
    # Written and printed like every stage's summary.
    return metrics_io.finish_summary(os.path.join(workdir, "compare", "summary.json"), summaries)


# What the compare stage's summary keeps of each variant's evaluation.
COMPARED = ("explained_variance", "l0", "dead_fraction", "ce_loss_recovered",
            "concepts_feature_beats_unit", "concepts_recovered_fraction")


def _browse_stage(config, workdir):
    return browser_write.browse(config.browse, workdir)


def _report_stage(config, workdir):
    # Like every stage, a finished report is kept as it is: a pipeline killed after the report
    # (while writing W/summary.json) reruns without rewriting it.
    finished = metrics_io.finished_summary(os.path.join(workdir, "report", "summary.json"),
                                           "report")
    return finished if finished is not None else report.write_report(config.eval, workdir)


STAGES = (
    Stage("corpus", ("corpus", "tokenizer"), prepare.prepare, primary_only=True),
    Stage("lm", ("corpus", "tokenizer", "lm"), _lm_stage),
    Stage("acts", ("corpus", "tokenizer", "lm", "capture"), _capture_stage),
    Stage("sae", ("corpus", "tokenizer", "lm", "capture", "sae"), _sae_stage),
    Stage("eval", ("corpus", "tokenizer", "lm", "capture", "sae", "eval"), _eval_stage),
    Stage("browser", ("corpus", "tokenizer", "lm", "capture", "sae", "browse"), _browse_stage,
          primary_only=True),
    Stage("compare", ("corpus", "tokenizer", "lm", "capture", "sae", "eval", "compare_variants"),
          _compare_stage),
    Stage("report", ("corpus", "tokenizer", "lm", "capture", "sae", "eval", "browse",
                     "compare_variants"), _report_stage, primary_only=True),
)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every section read as its stage will read it, before any stage runs: a bad value in a late
    section (sae.k, browse.top_n) is one error now, with nothing written, not one after the
    corpus and the LM. (What needs the work dir, such as a hook of the LM or a file, is checked
    by its stage, still before that stage writes.)"""
    prepare.configs_from(config)
    gpt_step.configs_from(config.lm)
    observe.check_profile_steps(config.lm.get("profile_steps", 0), "lm.profile_steps")
    capture.capture_config_from(config.capture)
    sae_run.check_hparams(sae_run.TrainConfig.from_config(config.sae))
    evaluate.eval_config_from(config.eval)
    browser_write.browse_config_from(config.browse)
    for variant in config_values.str_tuple("compare_variants", config.compare_variants):
        stage_config.one_of("compare_variants", variant, sae_model.VARIANTS)


def _sections_json(config: ml_collections.ConfigDict, sections) -> dict:
    def plain(value):  # a section is a ConfigDict or a plain field (compare_variants)
        return json.loads(value.to_json() if hasattr(value, "to_json") else json.dumps(value))

    return {name: plain(config[name]) for name in sections}


def _record_path(workdir: str, stage: Stage) -> str:
    return os.path.join(workdir, "pipeline", f"{stage.name}.json")


def check_stage_config(config, workdir: str, stage: Stage) -> bool:
    """Records the stage's config on first run; refuses a rerun with different values.

    Returns whether this call made the first record (so a stage that then fails can take it
    back, see run_pipeline).
    """
    path = _record_path(workdir, stage)
    wanted = _sections_json(config, stage.sections)
    first = not os.path.exists(path)
    if not first:
        diff = metrics_io.config_difference(metrics_io.read_json(path), wanted)
        if diff:
            raise ValueError(
                f"{workdir} holds a '{stage.name}' stage made with a different config ({diff}); "
                "use a new --workdir or the original config"
            )
    if distributed.is_primary():
        metrics_io.write_json_atomic(path, wanted)  # also records keys added since
    return first


def _run_stage(stage: Stage, config, workdir: str) -> dict:
    if not stage.primary_only:
        return stage.run(config, workdir)
    return distributed.primary_then_all(
        f"pipeline.{stage.name}", lambda: stage.run(config, workdir),
        lambda: metrics_io.read_json(os.path.join(workdir, STAGE_SUMMARIES[stage.name])))


# Where each primary-only stage leaves its summary (the other processes read it there).
STAGE_SUMMARIES = {"corpus": "corpus/summary.json", "browser": "browser/summary.json",
                   "report": "report/summary.json"}


def _fmt(value, spec: str) -> str:
    """`value` formatted, or "-" where a stage did not report it (None, missing)."""
    return "-" if value is None else format(value, spec)


def _kl_score(eval_summary: dict):
    """SAEBench's kl_div_score of an eval summary (None for one written before it existed)."""
    core = eval_summary.get("saebench_core") or {}
    return (core.get("model_behavior_preservation") or {}).get("kl_div_score")


# The 2-3 numbers of each stage's summary that tell whether it worked.
HEADLINES = {
    "corpus": lambda s: f"{_fmt(s.get('documents'), ',')} documents, "
                        f"{_fmt(s.get('train_tokens'), ',')} train tokens",
    "lm": lambda s: f"eval loss {_fmt(s.get('eval_loss'), '.3f')} "
                    f"({_fmt(s.get('eval_over_unigram'), '.2f')}x unigram), "
                    f"topic gain {_fmt(s.get('topic_context_gain'), '.3f')}",
    "acts": lambda s: f"{_fmt(s.get('rows'), ',')} rows at {len(s.get('hooks') or ())} hook(s), "
                      f"{_fmt(s.get('tokens_per_s'), ',.0f')} tok/s",
    "sae": lambda s: f"{s.get('name')}: EV {_fmt(s.get('explained_variance'), '.3f')}, "
                     f"L0 {_fmt(s.get('l0'), '.1f')}, {_fmt(s.get('tokens_per_s'), ',.0f')} tok/s",
    "eval": lambda s: f"CE recovered {_fmt(s.get('ce_loss_recovered'), '.4f')}, KL score "
                      f"{_fmt(_kl_score(s), '.4f')}, dead {_fmt(s.get('dead_fraction'), '.1%')}, "
                      "feature beats neuron on "
                      f"{_fmt(s.get('concepts_feature_beats_unit'), 'd')}/"
                      f"{_fmt(s.get('concepts_probed'), 'd')} concepts",
    "browser": lambda s: f"{_fmt(s.get('features_written'), ',')} feature pages",
    "compare": lambda s: "; ".join(
        f"{name}: EV {_fmt(v.get('explained_variance'), '.3f')}, "
        f"CE recovered {_fmt(v.get('ce_loss_recovered'), '.4f')}" for name, v in s.items()
    ) or "no other variants",
    "report": lambda s: f"example features {s.get('example_features')}",
}


def summary_table(summaries: dict, seconds: dict, workdir: str) -> str:
    """The pipeline's last words for a person: per stage its time and headline numbers, then
    where to look next."""
    rows = []
    for name, summary in summaries.items():
        took, recorded = seconds[name], summary.get("wall_s")
        # A stage an earlier run finished is skipped: it takes a fraction of its recorded time.
        time_text = f"{took:.1f} s"
        if isinstance(recorded, (int, float)) and took < 0.5 * recorded:
            time_text += f" (done before in {recorded:.0f} s)"
        rows.append((name, time_text, HEADLINES[name](summary)))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{'stage':<{width[0]}}  {'time':<{width[1]}}  result"]
    lines += [f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]
    sae_name = summaries.get("eval", {}).get("sae_name", "")
    lines += [
        "",
        f"report:      {os.path.join(workdir, 'report.md')}",
        f"browser:     {os.path.join(workdir, 'browser', 'index.html')}  (open in a web browser)",
        f"eval:        {os.path.join(workdir, 'eval', sae_name + '.json')}",
        f"tensorboard: tensorboard --logdir {workdir}",
    ]
    return "\n".join(lines)


@workdir_lock.writer(lambda config: "pipeline")
def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every stage; returns {stage: summary, ..., 'wall_s'}.

    Prints, last, a table for a person (`summary_table`) and then the summary as one JSON line.
    """
    t_start = time.time()
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    summaries, seconds = {}, {}
    for i, stage in enumerate(STAGES):
        first = check_stage_config(config, workdir, stage)
        logging.info("=== stage %d/%d: %s ===", i + 1, len(STAGES), stage.name)
        t_stage = time.time()
        try:
            summaries[stage.name] = _run_stage(stage, config, workdir)
        except Exception:
            # A first attempt that fails (a config value the stage rejects, a bad input file)
            # takes its record back, so the corrected command is not refused as "a different
            # config". A killed stage keeps its record, and so do the stage's own outputs,
            # which check their configs themselves (store spec, SAE run config.json).
            if first and distributed.is_primary():
                os.remove(_record_path(workdir, stage))
            raise
        seconds[stage.name] = time.time() - t_stage
        logging.info("stage %s done in %.1fs", stage.name, seconds[stage.name])
    summary = {**summaries, "wall_s": time.time() - t_start}
    if distributed.is_primary():
        metrics_io.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
        print(summary_table(summaries, seconds, workdir), flush=True)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


def run_main():
    cli.define_flags(cli.default_config("pipeline/tiny.py"))
    cli.run(run_pipeline)


if __name__ == "__main__":
    run_main()
