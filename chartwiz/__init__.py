"""
ChartWiz's application: everything around the model package `chartwiz_hf` (which holds what every checkpoint carries).

Each subpackage is one layer and imports only the layers below it (`tests/test_layers.py` reads them from here):

- the modules at this level: the names, errors, file handling and fingerprints that every layer shares, on the
  standard library alone, so that `dataset_builder` can use them without loading torch or transformers;
- `inference`: loading a checkpoint, building prompts through the processor, fitting the context, generating;
- `serving`: the vLLM engines;
- `batch`: question files and dataset splits answered by an engine, resumable and sharded;
- `evaluation`: metrics, scores by task and chart type, reports and comparisons;
- `models`: tiny random ChartWiz models, and merging a LoRA adapter into its base;
- `training`: the pieces of `recipes/sft_chartwiz.py` around TRL's `SFTTrainer`;
- `demo`: the Streamlit demo;
- `commands`: the `chartwiz` command line (`cli.py` its entry, `parser.py` the parser, one module per command).
"""

__version__ = "0.1.0"
