"""The corpus stage: text (generated or loaded) -> BPE tokenizer -> tokenized train/eval split.

Writes `W/corpus/` (the generated stories and their concept labels, or a pointer to the real
corpus), `W/tokenizer.json` and `W/data/` (see dataset.py), then `W/corpus/summary.json` last.
"""

from __future__ import annotations

import hashlib
import os
import time

import ml_collections
from absl import logging

from monosem_jax import metrics_io
from monosem_jax.corpus import dataset, generator, loaders, tokenizer


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    if os.path.isdir(path):
        return ""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_or_generate(config: ml_collections.ConfigDict, corpus_dir: str):
    """(texts, spans per text or None, concept names, provenance dict)."""
    cfg = config.corpus
    if cfg.path:
        path = os.path.abspath(os.path.expanduser(cfg.path))
        texts = loaders.load_texts(path, cfg.format)
        if cfg.max_documents > 0:
            texts = texts[: cfg.max_documents]
        return texts, None, (), {"source": path, "source_sha256": _file_sha256(path)}
    stories = generator.generate_stories(cfg.num_stories, cfg.seed, cfg.french_fraction)
    generator.write_labelled_corpus(
        stories, os.path.join(corpus_dir, "stories.txt"), os.path.join(corpus_dir, "labels.jsonl")
    )
    texts = [s.text for s in stories]
    spans = [s.spans for s in stories]
    return texts, spans, tuple(generator.CONCEPTS), {"source": "generated", "seed": cfg.seed}


def prepare(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the corpus stage into `workdir` (a no-op when its summary exists)."""
    t_start = time.time()
    corpus_dir = os.path.join(workdir, "corpus")
    summary_path = os.path.join(corpus_dir, "summary.json")
    if os.path.exists(summary_path):
        logging.info("corpus stage already finished (%s); nothing to do", summary_path)
        return metrics_io.finish_summary(summary_path, metrics_io.read_json(summary_path))
    if config.tokenizer.vocab_size > config.lm.model.vocab_size:
        raise ValueError(
            f"tokenizer.vocab_size={config.tokenizer.vocab_size} exceeds "
            f"lm.model.vocab_size={config.lm.model.vocab_size}"
        )
    os.makedirs(corpus_dir, exist_ok=True)

    texts, spans, concepts, provenance = load_or_generate(config, corpus_dir)
    logging.info("corpus: %d documents, %d characters", len(texts), sum(map(len, texts)))
    t_tok = time.time()
    tok = tokenizer.train_tokenizer(texts, config.tokenizer.vocab_size)
    tokenizer.save_tokenizer(tok, os.path.join(workdir, "tokenizer.json"))
    logging.info("tokenizer: %d tokens trained in %.1fs", tok.get_vocab_size(), time.time() - t_tok)
    meta = dataset.build_dataset(
        tok,
        texts,
        spans,
        concepts,
        config.tokenizer.eval_fraction,
        config.tokenizer.split_seed,
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
