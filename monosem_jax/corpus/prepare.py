"""The corpus stage: text (generated or loaded) -> BPE tokenizer -> tokenized train/eval split.

Writes `W/corpus/` (the generated stories and their concept labels, or a pointer to the real
corpus), `W/tokenizer.json` and `W/data/` (see dataset.py), then `W/corpus/summary.json` last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

import ml_collections
from absl import logging

from monosem_jax import metrics_io, stage_config, workdir_lock
from monosem_jax.corpus import dataset, generator, labels, loaders, rare_concepts, tokenizer


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """The corpus section (monosem_jax/configs/pipeline/tiny.py documents each field)."""

    path: str = ""  # "" = generate the labelled synthetic corpus
    format: str = "auto"
    num_stories: int = 20_000
    french_fraction: float = 0.15
    seed: int = 0
    max_documents: int = 0
    labels: str = ""  # a config from before the field reads as unlabelled
    max_document_chars: int = 1_000_000  # 0 = no cap
    rare_concepts: int = 0  # planted characters rare_00, ... (corpus/rare_concepts.py); 0 = none
    rare_max_rate: float = 1e-2
    rare_min_rate: float = 1e-5

    def __post_init__(self):
        stage_config.one_of("corpus.format", self.format, loaders.FORMATS)
        stage_config.positive(self, ("num_stories",), "corpus.")
        stage_config.check(0 <= self.french_fraction <= 1, "corpus.french_fraction",
                           self.french_fraction, "a fraction in [0, 1]")
        stage_config.non_negative(self, ("seed",), "corpus.")
        stage_config.non_negative(self, ("max_documents",), "corpus.", "0 = all")
        stage_config.non_negative(self, ("max_document_chars",), "corpus.", "0 = no cap")
        stage_config.non_negative(self, ("rare_concepts",), "corpus.", "0 = none")
        stage_config.check(self.rare_concepts <= rare_concepts.MAX_CONCEPTS,
                           "corpus.rare_concepts", self.rare_concepts,
                           f"at most {rare_concepts.MAX_CONCEPTS}")
        stage_config.positive(self, ("rare_min_rate",), "corpus.")
        stage_config.check(self.rare_min_rate <= stage_config.number(
            "corpus.rare_max_rate", self.rare_max_rate, "a rate") < 1, "corpus.rare_max_rate",
            self.rare_max_rate, f"a rate in [corpus.rare_min_rate={self.rare_min_rate}, 1)")
        if self.rare_concepts and self.path:
            raise ValueError(
                f"corpus.rare_concepts={self.rare_concepts} plants characters in the generated "
                "corpus; a real corpus (corpus.path) cannot have them: set it to 0")
        if self.labels and not self.path:
            raise ValueError(
                f"corpus.labels={self.labels!r} needs corpus.path: the generated corpus writes its "
                "own labels (W/corpus/labels.jsonl); set corpus.path to the stories the labels "
                "belong to, or drop corpus.labels")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """The tokenizer section."""

    vocab_size: int = 2048
    eval_fraction: float = 0.05
    split_seed: int = 0

    def __post_init__(self):
        stage_config.number("tokenizer.vocab_size", self.vocab_size, "an integer")
        stage_config.check(self.vocab_size >= tokenizer.MIN_VOCAB_SIZE, "tokenizer.vocab_size",
                           self.vocab_size, f">= {tokenizer.MIN_VOCAB_SIZE} (256 bytes + EOT)")
        stage_config.check(0 < self.eval_fraction < 1, "tokenizer.eval_fraction",
                           self.eval_fraction, "a fraction in (0, 1)")
        stage_config.non_negative(self, ("split_seed",), "tokenizer.")


def configs_from(config: ml_collections.ConfigDict) -> tuple[CorpusConfig, TokenizerConfig]:
    """The corpus stage's frozen configs of a pipeline ConfigDict (one ValueError per bad value);
    the tokenizer's vocabulary must fit the LM's (lm.model.vocab_size)."""
    corpus = stage_config.from_config(CorpusConfig, config.corpus)
    tok = stage_config.from_config(TokenizerConfig, config.tokenizer)
    lm_vocab = config.lm.model.vocab_size
    stage_config.check(tok.vocab_size <= lm_vocab, "tokenizer.vocab_size", tok.vocab_size,
                       f"at most lm.model.vocab_size={lm_vocab}")
    return corpus, tok


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    if os.path.isdir(path):
        return ""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cap_documents(texts: list[str], spans: list | None, max_chars: int):
    """(texts, spans, documents cut, spans dropped): each text longer than max_chars cut to its
    first max_chars characters (then right-stripped), and the spans that no longer fit dropped."""
    if max_chars <= 0:
        return texts, spans, 0, 0
    cut = [i for i, t in enumerate(texts) if len(t) > max_chars]
    if not cut:
        return texts, spans, 0, 0
    texts, spans = list(texts), None if spans is None else list(spans)
    dropped = 0
    for i in cut:
        texts[i] = texts[i][:max_chars].rstrip()
        if spans is not None:
            kept = tuple(s for s in spans[i] if s.end <= len(texts[i]))
            dropped += len(spans[i]) - len(kept)
            spans[i] = kept
    return texts, spans, len(cut), dropped


def _real_corpus(cfg: CorpusConfig):
    """(texts, spans or None, concepts, provenance) of `corpus.path` [+ `corpus.labels`].

    Everything is read and checked here, before the stage writes anything. The labels are checked
    against the whole corpus, then `max_documents` caps texts and labels alike; the concepts (and
    so the bits of the token masks) are those of the whole labels file, whatever the cap.
    """
    path = os.path.abspath(os.path.expanduser(cfg.path))
    texts = loaders.load_texts(path, cfg.format)
    provenance = {"source": path, "source_sha256": _file_sha256(path)}
    spans, concepts = None, ()
    if cfg.labels:
        labels_path = os.path.abspath(os.path.expanduser(cfg.labels))
        spans, concepts = labels.load_labels(labels_path, texts, corpus=path)
        provenance.update(labels=labels_path, labels_sha256=_file_sha256(labels_path))
        if not concepts:
            logging.warning("%s names no concepts (every `spans` list is empty)", labels_path)
    if cfg.max_documents > 0:
        texts = texts[: cfg.max_documents]
        spans = None if spans is None else spans[: cfg.max_documents]
    longest = max(map(len, texts))
    texts, spans, num_cut, num_dropped = cap_documents(texts, spans, cfg.max_document_chars)
    if num_cut:
        logging.warning(
            "corpus: cut %d of %d documents to corpus.max_document_chars=%d characters (the "
            "longest had %d)%s; raise corpus.max_document_chars (0 = no cap) to keep them whole",
            num_cut, len(texts), cfg.max_document_chars, longest,
            f", dropping {num_dropped} label spans past the cut" if num_dropped else "")
        provenance["documents_cut"] = num_cut  # in the summary: the text is not all the file's
    return texts, spans, concepts, provenance


def load_or_generate(cfg: CorpusConfig, corpus_dir: str):
    """(texts, spans per text or None, concept names, provenance dict)."""
    if cfg.path:
        try:
            return _real_corpus(cfg)
        except OSError as e:  # a path the system refuses (too long, no permission): user input
            raise ValueError(f"cannot read {e.filename or cfg.path} (corpus.path, "
                             f"corpus.labels): {e.strerror or e}") from None
    rare = (rare_concepts.make_concepts(cfg.rare_concepts, cfg.rare_max_rate, cfg.rare_min_rate)
            if cfg.rare_concepts else ())
    stories = generator.generate_stories(cfg.num_stories, cfg.seed, cfg.french_fraction, rare)
    os.makedirs(corpus_dir, exist_ok=True)
    generator.write_labelled_corpus(
        stories, os.path.join(corpus_dir, "stories.txt"), os.path.join(corpus_dir, "labels.jsonl")
    )
    texts = [s.text for s in stories]
    spans = [s.spans for s in stories]
    # The same rule as a labels file's: the names used, sorted (so feeding stories.txt and
    # labels.jsonl back as a real corpus gives the same concepts and token masks).
    provenance = {"source": "generated", "seed": cfg.seed}
    if rare:  # what each rare concept is and its planned rate, for experiments and the report
        provenance["rare_concepts"] = [dataclasses.asdict(c) for c in rare]
    return texts, spans, labels.concepts_of(spans), provenance


@workdir_lock.writer(lambda config: "corpus")
def prepare(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the corpus stage into `workdir` (a no-op when its summary exists)."""
    t_start = time.time()
    corpus_cfg, tok_cfg = configs_from(config)
    corpus_dir = os.path.join(workdir, "corpus")
    summary_path = os.path.join(corpus_dir, "summary.json")
    finished = metrics_io.finished_summary(summary_path, "corpus stage")
    if finished is not None:
        return finished
    # Read and check every input before writing anything: a bad labels file costs nothing in W.
    texts, spans, concepts, provenance = load_or_generate(corpus_cfg, corpus_dir)
    # A corpus too small to split fails now, not after the tokenizer's training.
    dataset.split_documents(len(texts), tok_cfg.eval_fraction, tok_cfg.split_seed)
    os.makedirs(workdir, exist_ok=True)
    num_chars = sum(map(len, texts))
    logging.info("corpus: %d documents, %d characters", len(texts), num_chars)
    logging.info("tokenizer: training a %d-token byte-level BPE on %.1f MB of text",
                 tok_cfg.vocab_size, num_chars / 1e6)
    t_tok = time.time()
    tok = tokenizer.train_tokenizer(texts, tok_cfg.vocab_size)
    tokenizer.save_tokenizer(tok, os.path.join(workdir, "tokenizer.json"))
    logging.info("tokenizer: %d tokens trained in %.1fs", tok.get_vocab_size(), time.time() - t_tok)
    meta = dataset.build_dataset(
        tok,
        texts,
        spans,
        concepts,
        tok_cfg.eval_fraction,
        tok_cfg.split_seed,
        os.path.join(workdir, "data"),
    )
    summary = {
        **provenance,
        "documents": len(texts),
        "characters": sum(map(len, texts)),
        "distinct_words": len(generator.distinct_words(texts)),
        "concepts": list(concepts),
        "vocab_size": tok.get_vocab_size(),
        "tokenizer_hash": tokenizer.tokenizer_hash(tok),
        "train_tokens": meta["num_tokens"]["train"],
        "eval_tokens": meta["num_tokens"]["eval"],
        "wall_s": time.time() - t_start,
    }
    return metrics_io.finish_summary(summary_path, summary)
