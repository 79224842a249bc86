"""Config fuzzing of every binary: wrong values (types, signs, ranges, unknown keys, empty strings,
huge numbers, a broken --config), generated from each binary's own default config with a fixed
seed, each run on a real work dir where a valid config would proceed. Every one must be refused
the way a user error is (cli.py): exit code 2, one `error:` line that is the last line on stderr
and names the field or the value, no traceback, and nothing written into the work dir (exit 1,
an unexpected exception, is a bug).

Binaries run in this process (`run_binary`), so the whole file costs a few in-process parses
and validations per value; each binary's work dir is copied once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import random
import shutil

import ml_collections
import pytest

from monosem_jax import cli

SEED = 15  # the generator's: the same values every run
# Bad values per binary (at least 20), drawn from all the generated ones (~1,900 in all, about
# a minute in one process); MONOSEM_FUZZ_PER_BINARY=0 runs every one.
PER_BINARY = int(os.environ.get("MONOSEM_FUZZ_PER_BINARY", "30")) or None
WORD = "zebra"  # a word where a number, a choice or a name is wanted
HUGE = str(10**30)  # no count, size or id is that large (and none fits an int64)


@dataclasses.dataclass(frozen=True)
class Binary:
    main: str  # the module whose run_main is the binary
    config: str  # its config file under monosem_jax/configs, with the smoke arg
    # The work dir it gets: "empty", "data" (the corpus), "lm" (+ the LM), "sae" (+ the store
    # and the SAE run topk), "pipeline" (sae as the smoke pipeline left it: its stage records)
    workdir: str
    argv: tuple[tuple[str, str], ...] = ()  # (flag, value) a valid run needs beside the config


# Each on the work dir where its valid smoke config would proceed (not a finished stage, which a
# valid config would skip): W/sae/fuzz, W/sweep/sweep, W/eval/topk.json, ... do not exist yet.
BINARIES = {
    "monosem-pipeline": Binary("monosem_jax.pipeline", "pipeline/tiny.py:smoke", "pipeline"),
    "monosem-prepare": Binary("monosem_jax.corpus.main", "pipeline/tiny.py:smoke", "empty"),
    "monosem-train-lm": Binary("monosem_jax.gpt.main", "gpt/tiny.py:smoke", "data"),
    "monosem-capture": Binary("monosem_jax.activations.main", "capture/default.py:smoke", "lm"),
    "monosem-train-sae": Binary("monosem_jax.sae.main", "sae/default.py:smoke", "sae",
                                (("config.name", "fuzz"),)),
    "monosem-sweep": Binary("monosem_jax.sae.sweep_main", "sae/default.py:smoke", "sae"),
    "monosem-eval": Binary("monosem_jax.analysis.eval_main", "eval/default.py:smoke", "sae"),
    "monosem-browse": Binary("monosem_jax.browser.main", "browse/default.py:smoke", "sae"),
    "monosem-steer": Binary("monosem_jax.intervene.steer_main", "steer/default.py:smoke", "sae",
                            (("config.features", "1,3"), ("config.scale", "absolute"))),
    "monosem-search": Binary("monosem_jax.intervene.search_main", "search/default.py:smoke",
                             "sae", (("config.prompt", "The fish swam in the sea."),)),
    "monosem-attribute": Binary("monosem_jax.intervene.attribute_main",
                                "attribution/default.py:smoke", "sae"),
    "monosem-export": Binary("monosem_jax.interop.export_main", "export/default.py:smoke", "sae",
                             (("out", "{tmp}/exported"),)),
    "monosem-import": Binary("monosem_jax.interop.import_main", "sae_import/default.py:smoke",
                             "sae", (("from", "{saelens}"), ("config.name", "fuzz"))),
}

# ----------------------------------------------------------------------------- the generator
# Wrong by construction for a leaf of a given type; the tables below narrow the values that
# depend on what the field means (a sign, a zero, a range, a choice, a name, a path).

_BY_TYPE = {
    bool: ("maybe", "2"),
    int: (WORD, "2.5", "", HUGE, "-7", "0"),
    float: (WORD, "", "nan", "inf", "-inf", "-0.5", "0"),
    str: ("", WORD, "/nonexistent/zebra", "../zebra", "x" * 300),
    tuple: (WORD, "1,zebra", "nan", "-7", HUGE, ""),
    object: ("", ",", WORD, "blocks.99.hook_resid_post"),  # config_values.names fields
}

# Fractions, rates and F1s: a number in [0, 1] (Adam's betas below 1).
FRACTIONS = {"french_fraction", "eval_fraction", "probe_train_fraction", "min_lr_ratio",
             "label_min_f1", "recovered_f1", "threshold_rate", "l1_warmup_frac",
             "lr_decay_frac", "k_anneal_frac", "jl_warmup_frac", "b1", "b2"}

# Values that are in fact valid for a field (by its last name; "binary:name" for one binary's).
# Each is dropped from the generator: running it would run the stage.
VALID = {
    # 0 means "all", "none", "off" or "no cap"
    "positions_per_context": {"0"},
    "lm_positions_per_context": {"0"},
    "max_rows": {"0"},
    "max_tokens": {"0"},
    "monosem-steer:max_tokens": set(),  # steering scans some tokens for each feature's max
    "max_features": {"0"},
    "max_documents": {"0"},
    "max_document_chars": {"0"},
    "rare_concepts": {"0"},
    "probe_tokens": {"0"},
    "context_before": {"0"},
    "context_after": {"0"},
    "warmup_steps": {"0"},
    "k_start": {"0"},  # no k schedule
    "top_k": {"0"},  # sample among all tokens
    "temperature": {"0"},  # greedy
    # numbers where 0 and anything in between are fine
    "min_lr_ratio": {"0"},
    "weight_decay": {"0"},
    "b1": {"0"},
    "b2": {"0"},
    "aux_coef": {"0"},
    "l1_coef": {"0"},
    "jl_coef": {"0"},
    "l0_coef": {"0"},
    "label_min_f1": {"0"},
    "probe_l2": {"0"},  # unregularised probes
    "threshold_rate": {"0"},
    "l1_warmup_frac": {"0"},
    "lr_decay_frac": {"0"},
    "k_anneal_frac": {"0"},
    "jl_warmup_frac": {"0"},
    "french_fraction": {"0"},
    # seeds: any non-negative integer
    "seed": {"0"},
    "split_seed": {"0"},
    "probe_seed": {"0"},
    "data_seed": {"0"},
    "sparse_capacity": {"0"},  # the dense step
    "prefetch": {"0"},  # no batches read ahead
    "profile_steps": {"0", HUGE},  # off; a window past the last step ends with the run
    # free text: a prompt, a context, a name for the metadata
    "prompt": {"", WORD, "/nonexistent/zebra", "../zebra", "x" * 300},
    "monosem-search:prompt": {WORD, "/nonexistent/zebra", "../zebra", "x" * 300},
    "context": {"", WORD, "/nonexistent/zebra", "../zebra", "x" * 300},
    "prompts": {WORD, "/nonexistent/zebra", "../zebra", "x" * 300},
    "model_name": {"", WORD, "/nonexistent/zebra", "../zebra", "x" * 300},
    # "" = the default (the pipeline's SAE, the variant's name, W/acts, the generated corpus...)
    "sae_name": {""},
    # in a pipeline the SAE named may be one it trains (a compare variant): looked up when the
    # eval or browser stage starts, after the stages before it ran
    "monosem-pipeline:sae_name": {"", WORD},
    "name": {"", WORD},  # a new output (W/sae/zebra, W/steer/zebra.json, ...)
    # a store path relative to the current directory may hold a store; where capture writes its
    # store is any path (an absent one is made)
    "store": {"", WORD, "../zebra"},
    "kvstore": {"", WORD, "/nonexistent/zebra", "../zebra"},
    "path": {""},
    "labels": {""},
    "hook": {""},
    "with_prompts": {""},
    "without_prompts": {""},
    # clamp values may be any finite number, negative ones included
    "clamp_values": {"-7", HUGE},  # 1e30 is a finite float32
    "compare_variants": {""},  # no variants beside the default
    "prefixes": {""},  # the default prefixes
    "resample_steps": {""},  # no resampling
}


@dataclasses.dataclass(frozen=True)
class BadValue:
    field: str  # the dotted config field ("" for the config file itself)
    argv: tuple[str, ...]  # the flags that give it
    says: tuple[str, ...]  # the error line names one of these

    def __str__(self):
        return " ".join(self.argv)


# Wrong values of a field beyond those of its type.
_NOT_A_FOLDER_NAME = (".", "..", ".zebra", "ze/bra", "-zebra", "ze bra")  # a run, an output
EXTRA = {
    "store": ("{zebra",), "kvstore": ("{zebra",),  # not JSON (a kvstore spec starts with {)
    "sae_name": _NOT_A_FOLDER_NAME, "name": _NOT_A_FOLDER_NAME,
}

# The binaries' own flags beside --config ({workdir}: the work dir, not an empty folder; {tmp}:
# a folder that holds no SAELens SAE).
FLAGS = {"monosem-export": {"out": ("", "{workdir}")},
         "monosem-import": {"from": ("", "/nonexistent/zebra", "{tmp}")}}

# Fields (a trailing "." for a section) the binary never reads, so any value runs it: the sweep
# section of the SAE config outside monosem-sweep; in monosem-sweep, the k its smoke grid sets.
UNREAD = {"monosem-train-sae": ("sweep.",), "monosem-pipeline": ("sae.sweep.",),
          "monosem-sweep": ("k",)}
# monosem-prepare reads only these of the pipeline config it shares with monosem-pipeline.
READS = {"monosem-prepare": ("corpus.", "tokenizer.", "lm.model.vocab_size")}


def _matches(field: str, names) -> bool:
    return any(field == u or (u.endswith(".") and field.startswith(u)) for u in names)


def _unread(binary: str, field: str) -> bool:
    reads = READS.get(binary)
    return _matches(field, UNREAD.get(binary, ())) or (reads is not None
                                                        and not _matches(field, reads))


def leaves(config: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted field, type, default) of every leaf of `config`."""
    for key in sorted(config.keys()):
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", config.get_type(key), value


def _valid(binary: str, field: str, value: str) -> bool:
    name = field.rsplit(".", 1)[-1]
    return value in VALID.get(f"{binary}:{name}", VALID.get(name, ()))


def bad_values(binary: str) -> list[BadValue]:
    """Every generated bad value of `binary`: per leaf of its default config the values wrong
    for its type, plus unknown keys and a broken --config."""
    spec = BINARIES[binary]
    path, _, arg = spec.config.partition(":")
    module = importlib.import_module("monosem_jax.configs." + path[:-3].replace("/", "."))
    out = []
    for field, kind, default in leaves(module.get_config(arg)):
        name = field.rsplit(".", 1)[-1]
        if _unread(binary, field):
            continue
        if isinstance(default, tuple) and kind is not object:
            kind = tuple
        extra = (("1.5",) if name in FRACTIONS else ()) + EXTRA.get(name, ())
        for value in _BY_TYPE.get(kind, ()) + extra:
            if not _valid(binary, field, value):
                # the error names the field ("prompt 0 ..." for prompts) or the value
                says = (name, name.removesuffix("s"), value or name)
                out.append(BadValue(field, (f"--config.{field}={value}",), says))
    for flag, values in FLAGS.get(binary, {}).items():
        out += [BadValue(flag, (f"--{flag}={value}",), (f"--{flag}", value or flag))
                for value in values]
    first_leaf = next(leaves(module.get_config(arg)))[0]
    for field in (WORD, f"{first_leaf}.{WORD}", first_leaf.upper(), f"{first_leaf}_"):
        out.append(BadValue(field, (f"--config.{field}=1",), (field,)))
    out += [BadValue(first_leaf, (f"--config.{first_leaf}",), (first_leaf,)),  # no value
            BadValue("", ("--config.=1",), ("no field",))]
    file = cli.default_config(path)
    out += [BadValue("", (f"--config={file}:{WORD}",), (WORD,)),
            BadValue("", ("--config=/nonexistent/zebra.py",), ("/nonexistent/zebra.py",)),
            BadValue("", ("--config",), ("--config",)),
            BadValue("", ("--config=",), ("--config",))]
    return out


def drawn(binary: str) -> list[BadValue]:
    """PER_BINARY of the binary's bad values (all: None), drawn with a fixed seed."""
    values = bad_values(binary)
    return random.Random(f"{SEED}:{binary}").sample(values, min(PER_BINARY or 10**9, len(values)))


# ----------------------------------------------------------------------------- the harness

IGNORED = (".locks", "logs")  # the lock a writer takes (freed, not removed); a bug's traceback


def listing(workdir: str) -> dict[str, str]:
    """{relative path: sha1 of the content ("" for a folder)} of everything under `workdir`.

    Contents, not times: a rerun rewrites a finished stage's summary and the pipeline its stage
    records, with the same bytes.
    """
    out = {}
    for root, dirs, files in os.walk(workdir):
        rel = os.path.relpath(root, workdir)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in IGNORED]
        for name in dirs:
            out[os.path.normpath(os.path.join(rel, name))] = ""
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                digest = hashlib.sha1(f.read()).hexdigest()
            out[os.path.normpath(os.path.join(rel, name))] = digest
    return out


def check_refused(out, value: BadValue) -> list[str]:
    """What is wrong with a binary's answer to a bad value (empty: refused as it should be)."""
    problems = []
    if out.returncode != 2:
        problems.append(f"exit {out.returncode}")
    if "Traceback" in out.stderr:
        problems.append("a traceback")
    lines = out.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    if len(errors) != 1 or errors[0] != lines[-1]:
        problems.append(f"{len(errors)} error lines, the last stderr line {lines[-1:]}")
    elif not any(word in errors[0] for word in value.says):
        problems.append(f"an error naming none of {value.says}")
    return problems + ([errors[-1]] if problems and errors else [])


@pytest.fixture(scope="module")
def saelens_folder(sae_workdir, tmp_path_factory):
    """The fixture's SAE exported as a SAELens folder (what monosem-import reads)."""
    from monosem_jax.configs.export import default as export_default
    from monosem_jax.interop import export

    out = str(tmp_path_factory.mktemp("fuzz_saelens") / "topk")
    export.export_sae(export_default.get_config(), sae_workdir, out)
    return out


def _fill(text: str, paths: dict[str, str]) -> str:
    """text with each {name} of `paths` replaced (other braces, as in '{zebra', kept)."""
    for name, path in paths.items():
        text = text.replace("{" + name + "}", path)
    return text


def _workdir(kind: str, request, tmp_path) -> str:
    dst = str(tmp_path / "w")
    if kind == "empty":
        os.makedirs(dst)
    elif kind in ("data", "lm"):
        shutil.copytree(request.getfixturevalue("smoke_lm_workdir"), dst,
                        ignore=shutil.ignore_patterns("lm") if kind == "data" else None)
    else:
        shutil.copytree(request.getfixturevalue("sae_workdir"), dst)
    if kind == "pipeline":  # the fixture's stages are the smoke pipeline's first four
        from monosem_jax import pipeline
        from monosem_jax.configs.pipeline import tiny

        for stage in pipeline.STAGES[:4]:
            pipeline.check_stage_config(tiny.get_config("smoke"), dst, stage)
    return dst


@pytest.mark.parametrize("binary", sorted(BINARIES))
def test_bad_config_values_are_one_error_line_exit_2_and_write_nothing(
        binary, request, tmp_path, run_binary):
    spec = BINARIES[binary]
    workdir = _workdir(spec.workdir, request, tmp_path)
    paths = {"tmp": str(tmp_path), "workdir": workdir}
    if binary == "monosem-import":
        paths["saelens"] = request.getfixturevalue("saelens_folder")
    run_main = importlib.import_module(spec.main).run_main
    values = drawn(binary)
    assert len(values) >= 20
    before = listing(workdir)
    failures = []
    for value in values:
        fuzzed = {arg.split("=", 1)[0] for arg in value.argv}
        base = [f"--{flag}={_fill(v, paths)}" for flag, v in spec.argv
                if f"--{flag}" not in fuzzed]
        value = dataclasses.replace(value, argv=tuple(_fill(a, paths) for a in value.argv),
                                    says=tuple(_fill(w, paths) for w in value.says))
        if "--config" in fuzzed:  # its own --config file, before the overrides in base
            argv = [f"--workdir={workdir}", *value.argv, *base]
        else:
            config = f"--config={cli.default_config(spec.config)}"
            argv = [f"--workdir={workdir}", config, *base, *value.argv]
        out = run_binary(run_main, *argv)
        problems = check_refused(out, value)
        after = listing(workdir)
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            problems.append(f"the work dir changed: {changed[:5]}")
            before = after
        if os.path.exists(os.path.join(str(tmp_path), "exported")):
            problems.append("--out written")
            shutil.rmtree(os.path.join(str(tmp_path), "exported"))
        if problems:
            failures.append(f"{value}: " + "; ".join(problems))
    assert not failures, "\n".join(failures)


def test_the_generator_is_deterministic_and_covers_every_binary():
    for binary in BINARIES:
        assert drawn(binary) == drawn(binary)
        assert len(drawn(binary)) >= 20
        fields = {v.field for v in bad_values(binary)}
        assert WORD in fields and "" in fields  # an unknown key; a broken --config
