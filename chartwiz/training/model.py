"""The model a run trains: the checkpoint loaded and checked, the parts `tune` trains, and the LoRA config."""

from dataclasses import replace

from transformers import AutoConfig, AutoModelForImageTextToText
from trl import get_peft_config

from chartwiz.checkpoints import from_pretrained_complete
from chartwiz.inference.loading import check_checkpoint, load_processor

from .checks import RecipeError


# LoRA never touches the vision encoder; the projector is trained in full and saved with the adapter instead.
LORA_EXCLUDED_MODULES = r".*\b(vision_tower|multi_modal_projector)\b.*"
LORA_MODULES_TO_SAVE = ["multi_modal_projector"]


def load_model_and_processor(model_args, training_args):
    """
    The ChartWiz model (dtype and attention from `ModelConfig`) and its processor; refuses other checkpoints and
    checkpoints whose weights do not all fit the model.
    """
    name = model_args.model_name_or_path
    if not name:
        raise RecipeError("Set --model_name_or_path: a ChartWiz checkpoint (`chartwiz compose`, or stage 1's output).")
    hub_kwargs = {"revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code}
    try:
        check_checkpoint(name, revision=model_args.model_revision)
    except (OSError, ValueError) as error:
        raise RecipeError(
            f"{error} Stage 1 starts from `chartwiz compose --vision <pix2struct> --text <causal LM> --out DIR`; "
            "stage 2 from stage 1's output."
        ) from None
    try:
        config = AutoConfig.from_pretrained(name, **hub_kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise RecipeError(f"{name} is not a loadable checkpoint: {error}") from error
    model_kwargs = {**hub_kwargs, "dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation}
    model_kwargs.update(training_args.model_init_kwargs or {})
    # The model is built here, so TRL must not try to apply these again (it warns when given both).
    training_args.model_init_kwargs = None
    try:
        model = from_pretrained_complete(AutoModelForImageTextToText, name, config=config, **model_kwargs)
    except ValueError as error:  # weights missing, unexpected or of another shape
        raise RecipeError(str(error)) from None
    # The fast tokenizer, as `chartwiz ask`, `infer` and `merge` load it: the ids trained on are the ids answered on.
    processor = load_processor(name, **hub_kwargs)
    return model, processor


def set_trainable(model, tune: str):
    """Freezes everything `tune` leaves out: frozen parameters get no gradients and no optimizer state."""
    model.requires_grad_(tune == "all")
    model.multi_modal_projector.requires_grad_(True)
    if tune == "projector_and_language_model":
        model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)


def chartwiz_lora_config(model_args):
    """TRL's LoRA config from `ModelConfig`, aimed at the language model's linear layers, projector saved in full."""
    peft_config = get_peft_config(model_args)
    if peft_config is None:
        return None
    return replace(
        peft_config,
        # PEFT's "all-linear" skips the LM head; the exclusion keeps the vision encoder and the projector out.
        target_modules=model_args.lora_target_modules or "all-linear",
        exclude_modules=LORA_EXCLUDED_MODULES,
        modules_to_save=model_args.lora_modules_to_save or LORA_MODULES_TO_SAVE,
    )


__all__ = ["chartwiz_lora_config", "load_model_and_processor", "set_trainable"]
