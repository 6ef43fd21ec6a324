"""
Trains ChartWiz with TRL's `SFTTrainer`, one stage per run: stage 1 trains the projector on chart -> table pairs
(`tune: projector`), stage 2 the projector and the language model on the instruction mix
(`tune: projector_and_language_model`), stage 2' LoRA adapters on the language model with the projector in full
(`use_peft: true`). The recipes in `recipes/<model>/<stage>/config_<variant>.yaml` hold each stage's settings;
flags given after `--config` override them. Rerunning a command resumes from the last checkpoint in `output_dir`.

# Stage 1, then stage 2 from stage 1's output: 4 GPUs, DeepSpeed ZeRO-2 (the original trained on 4x A100 40GB)
```bash
chartwiz compose --vision nuua/ko-deplot --text maywell/Synatra-42dot-1.3B --out checkpoints/chartwiz-1.3b-base
accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero2.yaml --num_processes 4 \
    recipes/sft_chartwiz.py --config recipes/chartwiz-1.3b/pretrain/config_full.yaml
accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero2.yaml --num_processes 4 \
    recipes/sft_chartwiz.py --config recipes/chartwiz-1.3b/finetune/config_full.yaml
```

# Stage 2 with LoRA on one GPU, then a full checkpoint from base + adapter
```bash
python recipes/sft_chartwiz.py --config recipes/chartwiz-1.3b/finetune/config_lora.yaml
chartwiz merge --base checkpoints/chartwiz-1.3b-pretrain --adapter checkpoints/chartwiz-1.3b-lora \
    --out checkpoints/chartwiz-1.3b-lora-merged
```

# The tiny recipes on CPU, one process or two (gloo); what the tests run, in minutes on 2 cores
```bash
chartwiz synth outputs/synth --n 2000 --test-fraction 0.05 --num-proc 2
chartwiz data build --data-dir outputs/synth --gpt outputs/synth/gpt_qa.jsonl --out outputs/charts
chartwiz init-tiny outputs/chartwiz-tiny --corpus outputs/charts --vocab-size 1000 --hidden-size 128 --max-patches 128
python recipes/sft_chartwiz.py --config recipes/chartwiz-tiny/pretrain/config_full.yaml
accelerate launch --multi_gpu --num_processes 2 recipes/sft_chartwiz.py \
    --config recipes/chartwiz-tiny/finetune/config_full.yaml
```

The tiny recipes were run on a 2-core CPU (one and two processes); the GPU commands above could not be run where
this script was written. `recipes/README.md` gives every stage's command and how to fit smaller GPUs.
"""

import logging
import sys

import datasets
import transformers

import chartwiz_hf  # noqa: F401  (registers ChartWiz with the Auto classes)
from chartwiz.extras import missing_extra_message


try:
    from trl import ModelConfig, TrlParser
except ModuleNotFoundError as error:  # the core install has no TRL: say which extra brings it, in one line
    if error.name is None or error.name.split(".")[0] != "trl":
        raise
    raise SystemExit(missing_extra_message("trl", "recipes/sft_chartwiz.py")) from None

from chartwiz.training import (
    ChartWizScriptArguments,
    ChartWizSFTConfig,
    ChartWizSFTTrainer,
    RecipeError,
    card_details,
    chartwiz_lora_config,
    check_arguments,
    find_resume_checkpoint,
    load_chart_splits,
    load_model_and_processor,
    measure_and_check_lengths,
    run_definition,
    set_trainable,
    start_run,
    vision_collator,
)


logger = logging.getLogger(__name__)


def configure_logging(training_args):
    """
    Logging as transformers' and TRL's example scripts set it up: records on stdout with their time, level and logger;
    the main process at INFO and the others at WARNING unless `--log_level` / `--log_level_replica` say otherwise
    (`passive`, the default, keeps those), the same level for this script, transformers and datasets.
    """
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def build_trainer(script_args, training_args, model_args, callbacks=None):
    """
    Checks the arguments, the checkpoint, the data and `output_dir`, then returns the trainer and the checkpoint to
    resume from (None to start over). Raises `RecipeError` before any training on bad input.
    """
    check_arguments(script_args, training_args, model_args)
    # Is `output_dir` empty, this same run (resume from its newest complete checkpoint), or another run (refused)?
    definition = run_definition(script_args, model_args)
    resume_from = find_resume_checkpoint(training_args, definition)

    ################
    # Dataset (opened first: a wrong path fails before a large model is loaded)
    ################
    train_dataset, eval_dataset = load_chart_splits(script_args, training_args)

    ################
    # Model
    ################
    model, processor = load_model_and_processor(model_args, training_args)
    set_trainable(model, script_args.tune)
    peft_config = chartwiz_lora_config(model_args)

    ################
    # Sequence lengths: for the context check and `group_by_length`
    ################
    context = model.config.text_config.max_position_embeddings
    train_dataset, eval_dataset = measure_and_check_lengths(
        train_dataset, eval_dataset, processor, training_args, context
    )

    ################
    # Training
    ################
    start_run(training_args, definition)
    trainer = ChartWizSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        data_collator=vision_collator(processor, training_args),
        peft_config=peft_config,
        callbacks=callbacks,
        projector_learning_rate=script_args.projector_learning_rate,
        card_details=card_details(script_args, model_args, peft_config, train_dataset, eval_dataset),
    )
    return trainer, resume_from


def main(script_args, training_args, model_args, callbacks=None):
    """Trains one stage and saves a full checkpoint (or, with LoRA, an adapter), metrics and a model card."""
    configure_logging(training_args)
    trainer, resume_from = build_trainer(script_args, training_args, model_args, callbacks=callbacks)
    if resume_from is not None:
        logger.info("Resuming from %s", resume_from)
    train_result = trainer.train(resume_from_checkpoint=resume_from)

    # Weights (safetensors), config, processor, code files and font: the next stage's input
    trainer.save_model(training_args.output_dir)
    metrics = {**train_result.metrics, "train_samples": len(trainer.train_dataset)}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()

    if trainer.eval_dataset is not None:
        metrics = {**trainer.evaluate(), "eval_samples": len(trainer.eval_dataset)}
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    trainer.create_model_card(dataset_name=script_args.dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.accelerator.wait_for_everyone()
    return trainer


def make_parser() -> TrlParser:
    return TrlParser((ChartWizScriptArguments, ChartWizSFTConfig, ModelConfig))


if __name__ == "__main__":
    parser = make_parser()
    try:
        script_args, training_args, model_args = parser.parse_args_and_config()
        main(script_args, training_args, model_args)
    except RecipeError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
