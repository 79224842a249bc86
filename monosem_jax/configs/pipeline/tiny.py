"""The embedded default, on a CPU: generated concept corpus -> tokenizer -> tiny GPT ->
activations -> SAE -> eval -> feature browser.

monosem-pipeline --workdir=W                                  (this config is the default)
monosem-pipeline --workdir=W --config.corpus.path=stories.txt (a real corpus instead)
monosem-pipeline --workdir=W --config=monosem_jax/configs/pipeline/tiny.py:smoke
"""

import ml_collections

from monosem_jax.configs.browse import default as browse_default
from monosem_jax.configs.capture import default as capture_default
from monosem_jax.configs.eval import default as eval_default
from monosem_jax.configs.gpt import tiny as gpt_tiny
from monosem_jax.configs.sae import default as sae_default


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    if arg not in ("", "smoke"):
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    config = ml_collections.ConfigDict()

    config.corpus = ml_collections.ConfigDict()
    config.corpus.path = ""  # "" = generate the labelled synthetic corpus; else a file/folder
    config.corpus.format = "auto"  # "auto" | "tinystories" | "jsonl" | "txt_dir"
    config.corpus.num_stories = 20_000  # generated stories (ignored for a real corpus)
    config.corpus.french_fraction = 0.15  # share of generated stories in French
    config.corpus.seed = 0  # generator seed: same seed, same corpus, byte for byte
    config.corpus.max_documents = 0  # cap on documents read from a real corpus (0 = all)
    # Concept labels of a real corpus (needs corpus.path): JSON lines, one per story in order,
    # {"story": i, "spans": [[start, end, "concept"], ...]} in character offsets (BUILD.md,
    # "Bring your own concept labels"); max_documents caps the labels too. "" = unlabelled.
    config.corpus.labels = ""
    # Cap on characters per document of a real corpus (0 = no cap): a longer one is cut to its
    # first max_document_chars characters, with a warning naming how many were cut. 1 M characters
    # (a long novel) keeps real documents whole and a runaway one (a dump without separators)
    # from dominating the corpus and the encoder's memory (the dataset holds per-token offsets).
    config.corpus.max_document_chars = 1_000_000
    # Rare planted concepts (generated corpus only): this many invented recurring characters,
    # rare_00 (the most frequent) ..., at occurrence rates per word log-spaced from
    # rare_max_rate down to rare_min_rate; for feature completeness (experiments/
    # feature_completeness.py). 0 = none, the default corpus unchanged.
    config.corpus.rare_concepts = 0
    config.corpus.rare_max_rate = 1e-2
    config.corpus.rare_min_rate = 1e-5

    config.tokenizer = ml_collections.ConfigDict()
    config.tokenizer.vocab_size = 2048  # byte-level BPE size, incl. <|endoftext|>
    config.tokenizer.eval_fraction = 0.05  # documents held out for evaluation
    config.tokenizer.split_seed = 0

    config.lm = gpt_tiny.get_config(arg)
    # The model's vocabulary is the tokenizer's: one number, two places.
    config.lm.model.vocab_size = config.tokenizer.get_ref("vocab_size")

    config.capture = capture_default.get_config(arg)
    config.sae = sae_default.get_config(arg)
    config.eval = eval_default.get_config(arg)
    config.browse = browse_default.get_config(arg)
    # SAE variants trained and evaluated beside the default (config.sae) with its settings, for
    # the report's side-by-side concept tables: the paper's L1 SAE is the reference. () = none.
    config.compare_variants = ("anthropic_2024",)

    if arg == "smoke":
        config.corpus.num_stories = 400
        config.tokenizer.vocab_size = 512
        config.tokenizer.eval_fraction = 0.1
    return config
