"""
The pieces of ChartWiz training that `recipes/sft_chartwiz.py` puts together around TRL's `SFTTrainer`: the script's
argument dataclasses (`arguments`), the checks made before any step runs (`checks`), the run bookkeeping of
`output_dir` (`runs`), the model's trainable parts and LoRA config (`model`), the data (`data`), the collator and
sequence lengths (`collator`), the trainer with its seeded length-grouped sampler (`trainer`) and its model card
(`card`). Needs the `[train]` extra (TRL).
"""

from chartwiz.extras import MissingExtraError, missing_extra_message


try:
    from .arguments import ChartWizScriptArguments, ChartWizSFTConfig
    from .card import add_chartwiz_sections, card_details
    from .checks import RecipeError, check_arguments, check_lengths, measure_and_check_lengths
    from .collator import (
        ChartWizVisionCollator,
        SequenceLengths,
        add_sequence_lengths,
        tokenizer_prefix,
        vision_collator,
    )
    from .data import load_chart_splits
    from .model import chartwiz_lora_config, load_model_and_processor, set_trainable
    from .runs import (
        RUN_FILE,
        checkpoint_problem,
        find_resume_checkpoint,
        newest_complete_checkpoint,
        run_definition,
        start_run,
    )
    from .trainer import ChartWizSFTTrainer, SeededLengthGroupedSampler
except ModuleNotFoundError as error:  # the core install has no TRL: say which extra brings it, in one line
    if error.name is None or error.name.split(".")[0] != "trl":
        raise
    raise MissingExtraError(missing_extra_message("trl", "ChartWiz training (chartwiz.training)")) from None


__all__ = [
    "ChartWizSFTConfig",
    "ChartWizSFTTrainer",
    "ChartWizScriptArguments",
    "ChartWizVisionCollator",
    "RUN_FILE",
    "RecipeError",
    "SeededLengthGroupedSampler",
    "SequenceLengths",
    "add_sequence_lengths",
    "add_chartwiz_sections",
    "card_details",
    "check_arguments",
    "check_lengths",
    "checkpoint_problem",
    "chartwiz_lora_config",
    "find_resume_checkpoint",
    "load_chart_splits",
    "load_model_and_processor",
    "measure_and_check_lengths",
    "newest_complete_checkpoint",
    "run_definition",
    "set_trainable",
    "start_run",
    "tokenizer_prefix",
    "vision_collator",
]
