"""The pieces of ChartWiz training that `recipes/sft_chartwiz.py` puts together around TRL's `SFTTrainer` (the
`[train]` extra)."""
