"""ChartWiz model configuration."""

import re

from transformers import AutoConfig, Pix2StructVisionConfig, PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING


_MLP_PROJECTOR_PATTERN = re.compile(r"^mlp(\d+)x_gelu$")
PROJECTOR_TYPES_HELP = "'linear', 'identity' or 'mlp{N}x_gelu' with N >= 1 (e.g. 'mlp2x_gelu')"


def projector_depth(projector_type: str) -> int:
    """Number of linear layers of a projector type (0 for `identity`); raises `ValueError` on unknown types."""
    if projector_type == "identity":
        return 0
    if projector_type == "linear":
        return 1
    match = _MLP_PROJECTOR_PATTERN.match(projector_type) if isinstance(projector_type, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"Unknown projector_type {projector_type!r}; expected one of {PROJECTOR_TYPES_HELP}.")
    return int(match.group(1))


class ChartWizConfig(PretrainedConfig):
    r"""
    This is the configuration class to store the configuration of a [`ChartWizForConditionalGeneration`]: a
    Pix2Struct (DePlot) vision encoder, a multimodal projector and any causal language model known to `AutoConfig`.

    Args:
        vision_config (`Union[Pix2StructVisionConfig, dict]`, *optional*, defaults to `Pix2StructVisionConfig()`):
            The config object or dictionary of the vision encoder (the encoder of a Pix2Struct / DePlot model).
        text_config (`Union[AutoConfig, dict]`, *optional*, defaults to `LlamaConfig()`):
            The config object or dictionary of the causal language model (llama, mistral, qwen2, gemma, exaone...).
            Both sub-configs have defaults here, but a config loaded with `from_pretrained` or `from_dict` must
            carry both: a saved config without them is refused rather than read as these defaults.
        projector_type (`str`, *optional*, defaults to `"mlp2x_gelu"`):
            The projector between the two: `"linear"`, `"identity"` (needs equal hidden sizes) or `"mlp{N}x_gelu"`.
        image_token_id (`int`, *optional*):
            The id of the `<image>` token, set when the tokenizer is known (see `compose_chartwiz`).
        max_patches (`int`, *optional*, defaults to 512):
            Number of Pix2Struct patches per image. Every encoder output, padding patches included, becomes one
            image token, so this is also the number of `<image>` tokens per image.
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector's linear layers have a bias.
        ignore_index (`int`, *optional*, defaults to -100):
            Label value ignored by the loss; image-token positions are set to it.

    Example:

    ```python
    >>> from transformers import LlamaConfig, Pix2StructVisionConfig
    >>> from chartwiz_hf import ChartWizConfig, ChartWizForConditionalGeneration

    >>> vision_config = Pix2StructVisionConfig(
    ...     hidden_size=32, num_hidden_layers=1, num_attention_heads=2, d_ff=64, d_kv=16
    ... )
    >>> text_config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                           num_attention_heads=2, num_key_value_heads=2)
    >>> configuration = ChartWizConfig(vision_config, text_config, image_token_id=3, max_patches=16)
    >>> model = ChartWizForConditionalGeneration(configuration)
    >>> model.config.projector_type
    'mlp2x_gelu'
    ```"""

    model_type = "chartwiz"
    sub_configs = {"text_config": AutoConfig, "vision_config": Pix2StructVisionConfig}

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        projector_type: str = "mlp2x_gelu",
        image_token_id: int | None = None,
        max_patches: int = 512,
        multimodal_projector_bias: bool = True,
        ignore_index: int = -100,
        **kwargs,
    ):
        projector_depth(projector_type)
        if not isinstance(max_patches, int) or max_patches < 1:
            raise ValueError(f"max_patches must be a positive integer, got {max_patches!r}.")
        self.projector_type = projector_type
        self.image_token_id = image_token_id
        self.max_patches = max_patches
        self.multimodal_projector_bias = multimodal_projector_bias
        self.ignore_index = ignore_index

        if isinstance(vision_config, dict):
            vision_config = {key: value for key, value in vision_config.items() if key != "model_type"}
            vision_config = Pix2StructVisionConfig(**vision_config)
        elif vision_config is None:
            vision_config = Pix2StructVisionConfig()
        elif not isinstance(vision_config, Pix2StructVisionConfig):
            raise TypeError(f"vision_config must be a Pix2StructVisionConfig or a dict, got {type(vision_config)}.")
        self.vision_config = vision_config

        if isinstance(text_config, dict):
            text_config = dict(text_config)
            model_type = text_config.pop("model_type", "llama")
            if model_type not in CONFIG_MAPPING:
                raise ValueError(f"text_config has model_type {model_type!r}, which AutoConfig does not know.")
            text_config = CONFIG_MAPPING[model_type](**text_config)
        elif text_config is None:
            text_config = CONFIG_MAPPING["llama"]()
        elif not isinstance(text_config, PretrainedConfig):
            raise TypeError(f"text_config must be a PretrainedConfig or a dict, got {type(text_config)}.")
        self.text_config = text_config

        if max_patches >= vision_config.seq_len:
            raise ValueError(
                f"max_patches={max_patches} needs vision_config.seq_len > max_patches (row and column ids run up to "
                f"max_patches), got seq_len={vision_config.seq_len}."
            )
        if projector_type == "identity" and vision_config.hidden_size != text_config.hidden_size:
            raise ValueError(
                "projector_type='identity' needs equal hidden sizes, got vision "
                f"{vision_config.hidden_size} and text {text_config.hidden_size}."
            )
        # The head is tied to the embeddings exactly when the language model ties them: transformers 4.57 reads the
        # text config for that, 5.x the top-level config.
        kwargs["tie_word_embeddings"] = getattr(text_config, "tie_word_embeddings", False)
        super().__init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "ChartWizConfig":
        # A saved config without its parts would silently become the defaults (a random 7B Llama): refuse it. Only
        # this loading path refuses; `ChartWizConfig()` keeps its defaults, which transformers builds to diff against.
        parts = {"vision_config": "the encoder's config", "text_config": "the language model's config"}
        missing = [f"{key} ({part})" for key, part in parts.items() if not config_dict.get(key)]
        if missing:
            raise ValueError(
                f"The ChartWiz config has no {' and no '.join(missing)}: it was not saved by ChartWiz, whose "
                "`compose`, `init-tiny` and `save_pretrained` write both."
            )
        return super().from_dict(config_dict, **kwargs)


__all__ = ["ChartWizConfig"]
