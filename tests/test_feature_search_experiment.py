"""experiments/feature_search.py on a labelled real corpus: prompts from the corpus's eval split."""

import importlib.util
import json
import os
import shutil

import pytest
from test_labels import USER_CONCEPTS, _config, _write_corpus

from monosem_jax import metrics_io
from monosem_jax.corpus import dataset, loaders, prepare
from monosem_jax.intervene import splice

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "experiments", "feature_search.py")
_spec = importlib.util.spec_from_file_location("feature_search", _PATH)
feature_search = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(feature_search)

F1_TOKENS = 1024  # eval tokens for the best features and for grading the picks
# Small settings: a few prompts a side, a few eval windows to grade the picks.
FAST = ["--prompts", "12", "--batch-size", "8", "--f1-tokens", str(F1_TOKENS),
        "--context-tokens", "24"]


def _write_best_features(workdir: str) -> None:
    """W/eval/<the only SAE run>.json with only what the experiment reads: each concept's best
    feature by token F1 of "feature > 0" (the experiment's own token_f1), not a monosem-eval
    run, which would cost most of these tests' time (test_labels runs it on a real corpus)."""
    model = splice.load(workdir, "")
    f1_FC = feature_search.token_f1(workdir, model, list(range(model.num_features)), F1_TOKENS)
    concepts = dataset.load_meta(os.path.join(workdir, "data"))["concepts"]
    best = {c: {"f1": float(f1_FC[:, i].max()), "feature": int(f1_FC[:, i].argmax())}
            for i, c in enumerate(concepts) if f1_FC[:, i].max() > 0}  # the eval omits absent
    metrics_io.write_json_atomic(os.path.join(workdir, "eval", f"{model.sae.name}.json"),
                                 {"concept_f1": best})


@pytest.fixture(scope="module")
def labelled_workdir(sae_workdir, tmp_path_factory):
    """The smoke run re-read as a real corpus (its own stories.txt) with a user's labels (none of
    the generator's concept names), as in test_labels: the corpus stage rebuilds W/data with the
    same tokenizer, so the LM and SAE still fit."""
    root = tmp_path_factory.mktemp("labelled")
    workdir = str(root / "w")
    shutil.copytree(sae_workdir, workdir)
    stories = loaders.load_texts(os.path.join(workdir, "corpus", "stories.txt"))
    spans = [[[m.start(), m.end(), name] for name, pattern in USER_CONCEPTS.items()
              for m in pattern.finditer(story)] for story in stories]
    text_path, labels_path = _write_corpus(root, stories, spans)
    os.remove(os.path.join(workdir, "corpus", "summary.json"))
    prepare.prepare(_config(text_path, labels_path), workdir)
    _write_best_features(workdir)
    return workdir


def test_ranks_for_a_real_corpus_concepts(labelled_workdir, capsys):
    summary = feature_search.main(["--workdir", labelled_workdir, "--num-stories", "8", *FAST])
    out = capsys.readouterr().out
    with capsys.disabled():  # shown with -s: the experiment's table on this smoke run
        print(out)
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    assert list(summary["ranks"]) == sorted(USER_CONCEPTS)
    # Word prompts hold no punctuation: that concept has no "with" prompt and is skipped.
    assert summary["ranks"]["punctuation"] is None
    assert "no 'with' prompt" in summary["skipped"]["punctuation"]
    assert set(summary["skipped"]) == {"punctuation"}
    for concept in ("article", "capitalised"):
        rank = summary["ranks"][concept]
        assert isinstance(rank, int) and 1 <= rank <= summary["settings"]["num_features"]
        assert len(summary["top3_f1"][concept]) == 3
    assert summary["settings"]["prompt_stories"] == "eval_split"
    assert summary["settings"]["num_stories"] == 8
    assert 0 <= summary["top3_fraction"] <= 1 and summary["top3_unique_count"] <= 2


def test_prompt_stories_are_the_eval_split(labelled_workdir):
    """Every eval story comes back, with its spans, and tokenizes to W/data's eval split."""
    corpus = feature_search.corpus_summary(labelled_workdir)
    data_dir = os.path.join(labelled_workdir, "data")
    tok = dataset.load_dataset_tokenizer(data_dir)
    stories = feature_search.eval_split_stories(labelled_workdir, corpus, 10**6, tok)
    assert len(stories) == dataset.load_meta(data_dir)["num_docs"]["eval"]
    text, spans = stories[0]
    assert {s.concept for s in spans} <= set(USER_CONCEPTS)
    assert all(USER_CONCEPTS[s.concept].fullmatch(text[s.start : s.end]) for s in spans)


def test_changed_labels_are_refused(labelled_workdir, tmp_path):
    corpus = feature_search.corpus_summary(labelled_workdir)
    edited = tmp_path / "labels.jsonl"
    edited.write_text(open(corpus["labels"]).read().replace('"article"', '"articles"'))
    corpus = {**corpus, "labels": str(edited)}
    with pytest.raises(SystemExit, match="changed since the corpus stage"):
        feature_search.eval_split_stories(labelled_workdir, corpus, 8, None)


def test_generated_corpus_keeps_fresh_stories(sae_workdir, copy_workdir):
    """On the generated corpus the prompts still come from fresh generated stories."""
    workdir = copy_workdir(sae_workdir)
    _write_best_features(workdir)
    summary = feature_search.main(["--workdir", workdir, "--num-stories", "12", *FAST])
    assert summary["settings"]["prompt_stories"] == "generated"
    concepts = dataset.load_meta(os.path.join(workdir, "data"))["concepts"]
    assert list(summary["ranks"]) == concepts and len(concepts) == 12
    for c, rank in summary["ranks"].items():
        assert (rank is None) == (c in summary["skipped"])
    reasons = ("no best-F1 feature", "no 'with' prompt", "no 'without' prompt")
    assert all(any(r in why for r in reasons) for why in summary["skipped"].values())
    assert all(isinstance(summary["ranks"][c], int) for c in ("dialogue", "name"))  # common
    with pytest.raises(SystemExit, match="is the corpus seed"):
        feature_search.main(["--workdir", workdir, "--seed", "0"])
