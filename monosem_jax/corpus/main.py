"""monosem-prepare: corpus -> tokenizer -> tokenized dataset in W (the pipeline's first stage).

  monosem-prepare --workdir=W [--config.corpus.path=FILE]
      [--config.corpus.labels=LABELS.jsonl]   (concept labels of that corpus; see corpus/labels.py)
"""

from monosem_jax import cli
from monosem_jax.corpus import prepare


def run_main():
    cli.define_flags(cli.default_config("pipeline/tiny.py"))
    cli.run(prepare.prepare)


if __name__ == "__main__":
    run_main()
