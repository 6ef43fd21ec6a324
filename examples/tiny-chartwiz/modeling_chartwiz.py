"""PyTorch ChartWiz model: a Pix2Struct (DePlot) encoder, a projector and a causal language model.

One module, not several: it is the modeling file a checkpoint carries as remote code, and transformers' model folders
keep a model's classes in one `modeling_*.py` that imports nothing of its package but the configuration.
"""

import functools
import inspect
from dataclasses import dataclass, fields
from typing import Optional, Union

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, Pix2StructVisionModel, PreTrainedModel, masking_utils
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple

from .configuration_chartwiz import ChartWizConfig, projector_depth


# The name outputs give the key/value cache: `past_key_values` up to transformers 5.19, `cache` since (the old name
# is still accepted there, with a warning). ChartWiz's outputs use the running library's name.
CACHE_OUTPUT_NAME = "cache" if "cache" in {f.name for f in fields(BaseModelOutputWithPast)} else "past_key_values"

# transformers 5 tells `prepare_inputs_for_generation` which call is the prefill; 4.57 passes `cache_position` instead.
_GENERATION_MARKS_FIRST_ITERATION = (
    "is_first_iteration" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
)

# Built-in language models whose SDPA attention masks are transformers' causal mask and nothing else when all their
# layers attend fully; for them a padded batch's mask can be handed over ready-made (see `expanded_attention_mask`).
_FULL_ATTENTION_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma")


def builds_sdpa_masks_with_vmap() -> bool:
    """
    Whether transformers builds a padded batch's SDPA mask with nested `vmap`s at every generation step (4.57 does;
    5.x broadcasts unless asked for `use_vmap`, which is what `expanded_attention_mask` does itself).
    """
    return "use_vmap" not in inspect.signature(masking_utils.sdpa_mask).parameters


_READY_MASK = builds_sdpa_masks_with_vmap()

# The attention implementation vLLM's Transformers backend sets on the text config: every request of a step packed
# into one row, positions and the key/value cache handled by vLLM.
PACKED_ATTENTION = "vllm"


def _attends_fully(text_config) -> bool:
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is not None:
        return all(layer_type == "full_attention" for layer_type in layer_types)
    return getattr(text_config, "sliding_window", None) is None


def submodel_no_split_modules(*submodels) -> list[str]:
    """
    The layer classes the sub-models themselves keep whole (`Pix2StructVisionLayer`, `LlamaDecoderLayer`...): FSDP's
    transformer wrapping and device maps read them from the top model, and the language model's layer class is only
    known once the config has chosen it.
    """
    names = []
    for submodel in submodels:
        for name in getattr(submodel, "_no_split_modules", None) or ():
            if name not in names:
                names.append(name)
    return names


def expanded_attention_mask(
    attention_mask: Optional[torch.Tensor],
    text_config,
    past_key_values: Optional[Cache],
    query_length: int,
) -> Optional[torch.Tensor]:
    """
    The `[batch, 1, query, key]` boolean causal-and-padding mask of a padded batch, built by broadcasting, for the
    language models where it equals the SDPA mask transformers would build; otherwise `attention_mask` unchanged.
    transformers 4.57 builds that mask with nested `vmap`s at every generation step, which costs more than a small
    model's whole decoding step and erases the gain of batching; it takes a ready 4D mask as it is. Where
    transformers builds the mask by broadcasting itself (5.x), the mask is left to transformers.
    """
    if (
        not _READY_MASK
        or attention_mask is None
        or attention_mask.dim() != 2
        or text_config._attn_implementation != "sdpa"
        or text_config.model_type not in _FULL_ATTENTION_MODEL_TYPES
        or not _attends_fully(text_config)
        or not (past_key_values is None or type(past_key_values) is DynamicCache)
        or bool(attention_mask.all())
    ):
        return attention_mask
    key_length = attention_mask.shape[-1]
    # The cache's length is read from its tensors' shapes, so no position tensor waits on the GPU.
    past_length = past_key_values.get_seq_length() if past_key_values is not None else key_length - query_length
    positions = torch.arange(past_length, past_length + query_length, device=attention_mask.device)
    # [query, key]: a query sees the keys at or before its own position
    causal = torch.arange(key_length, device=attention_mask.device)[None, :] <= positions[:, None]
    # [batch, 1, query, key]
    return causal[None, None, :, :] & attention_mask.bool()[:, None, None, :]


@functools.cache
def cache_argument_name(module_class: type) -> str:
    """The name a module class's `forward` takes the key/value cache under: `cache` (transformers 5.20+) or
    `past_key_values` (earlier releases, and language models shipped as remote code for them)."""
    return "cache" if "cache" in inspect.signature(module_class.forward).parameters else "past_key_values"


@dataclass
class ChartWizModelOutputWithPast(BaseModelOutputWithPast):
    """
    Base class for ChartWiz outputs, with the projected image features.

    image_hidden_states (`torch.FloatTensor` of shape `(num_images, max_patches, hidden_size)`, *optional*):
        Image features after the projector.
    """

    image_hidden_states: Optional[torch.FloatTensor] = None


@dataclass
class ChartWizCausalLMOutputWithPast(CausalLMOutputWithPast):
    """
    Base class for ChartWiz causal language model outputs: transformers' `CausalLMOutputWithPast` (loss on the text
    positions only; the cache under the running transformers' name) with the projected image features.

    image_hidden_states (`torch.FloatTensor`, *optional*): image features after the projector.
    """

    image_hidden_states: Optional[torch.FloatTensor] = None


class ChartWizMultiModalProjector(nn.Module):
    """`linear_1 -> act -> linear_2 -> ... -> linear_N` (Llava's names), or nothing for `identity`."""

    def __init__(self, config: ChartWizConfig):
        super().__init__()
        self.depth = projector_depth(config.projector_type)
        vision_size, text_size = config.vision_config.hidden_size, config.text_config.hidden_size
        for index in range(1, self.depth + 1):
            in_features = vision_size if index == 1 else text_size
            linear = nn.Linear(in_features, text_size, bias=config.multimodal_projector_bias)
            setattr(self, f"linear_{index}", linear)
        if self.depth > 1:
            self.act = ACT2FN["gelu"]

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden_states = image_features
        for index in range(1, self.depth + 1):
            if index > 1:
                hidden_states = self.act(hidden_states)
            hidden_states = getattr(self, f"linear_{index}")(hidden_states)
        return hidden_states


class ChartWizPreTrainedModel(PreTrainedModel):
    config_class = ChartWizConfig
    config: ChartWizConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        # The encoder and the language model initialize their own modules; what is ChartWiz's own (the projector's
        # linears and the language modeling head) takes the language model's initialization.
        std = getattr(self.config.get_text_config(), "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()


class ChartWizModel(ChartWizPreTrainedModel):
    """The ChartWiz model without a language modeling head."""

    # No `_keys_to_ignore_on_load_unexpected` for the head's weights, which `AutoModel` on a full checkpoint does not
    # use: vLLM's Transformers backend builds this class and drops every checkpoint weight matching those patterns,
    # its own language modeling head's included, which would then answer from uninitialized memory.

    def __init__(self, config: ChartWizConfig):
        super().__init__(config)
        # Pix2Struct's encoder only has its own (eager) attention; the text model uses what the user asked for.
        config.vision_config._attn_implementation = "eager"
        self.vision_tower = Pix2StructVisionModel(config.vision_config)
        self.multi_modal_projector = ChartWizMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self._no_split_modules = submodel_no_split_modules(self.vision_tower, self.language_model)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def set_decoder(self, decoder):
        self.language_model = decoder

    def get_decoder(self):
        return self.language_model

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        pixel_attention_mask: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[torch.FloatTensor, BaseModelOutputWithPooling]:
        """
        Encodes Pix2Struct flattened patches and projects them to the language model's width.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, max_patches, 2 + 3 * patch_h * patch_w)`):
                Flattened patches with their row and column ids, as `ChartWizImageProcessor` returns them.
            pixel_attention_mask (`torch.Tensor` of shape `(num_images, max_patches)`, *optional*):
                1 for real patches, 0 for padding patches.
            return_dict (`bool`, *optional*):
                Return a `BaseModelOutputWithPooling` (the encoder's `last_hidden_state`, and the projected features
                as `pooler_output`, one entry per image: what vLLM's Transformers backend reads) instead of the
                projected features alone.

        Returns:
            `torch.FloatTensor` of shape `(num_images, max_patches, text_hidden_size)`, or with `return_dict=True` a
            `BaseModelOutputWithPooling` holding it as `pooler_output`.
        """
        if pixel_values.dim() != 3:
            raise ValueError(
                "pixel_values must be (num_images, max_patches, patch_dim) flattened patches, "
                f"got shape {tuple(pixel_values.shape)}."
            )
        vision_dtype = self.vision_tower.embeddings.patch_projection.weight.dtype
        if pixel_attention_mask is not None:
            pixel_attention_mask = pixel_attention_mask.to(vision_dtype)
        # [num_images, max_patches, vision_hidden]
        vision_outputs = self.vision_tower(
            flattened_patches=pixel_values.to(vision_dtype), attention_mask=pixel_attention_mask
        )
        # [num_images, max_patches, text_hidden]
        image_features = self.multi_modal_projector(vision_outputs.last_hidden_state)
        if not return_dict:
            return image_features
        return BaseModelOutputWithPooling(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=image_features,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )

    def get_placeholder_mask(self, input_ids: Optional[torch.LongTensor], inputs_embeds: torch.FloatTensor):
        """Boolean mask of the `<image>` positions, from `input_ids` or, without them, from the embeddings."""
        if input_ids is None:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            return (inputs_embeds == image_embedding).all(-1)
        return input_ids == self.config.image_token_id

    @can_return_tuple
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        pixel_values: Optional[torch.FloatTensor] = None,
        pixel_attention_mask: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Cache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        use_cache: Optional[bool] = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Union[tuple, ChartWizModelOutputWithPast]:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(num_images, max_patches, 2 + 3 * patch_h * patch_w)`, *optional*):
            Flattened patches with their row and column ids, as [`ChartWizImageProcessor`] returns them, one image
            per `<image>` run in `input_ids`, in order.
        pixel_attention_mask (`torch.Tensor` of shape `(num_images, max_patches)`, *optional*):
            1 for real patches, 0 for padding patches.

        The other arguments are those of the language model's forward (`cache_position` where it takes one); the
        key/value cache comes as `past_key_values` or, as transformers 5.20+ names it, `cache`. `return_dict=False`
        gives a tuple.
        """
        if past_key_values is None:
            past_key_values = kwargs.pop("cache", None)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds.")
        if self.config.image_token_id is None:
            raise ValueError("config.image_token_id is not set; compose the model with a tokenizer that has <image>.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        # vLLM's attention packs every scheduled request into one row of `inputs_embeds` and splices the image
        # features in itself (`get_image_features`), so the checks below, written for one padded sequence per row,
        # would refuse its batches and kill its engine.
        packed = self.config.text_config._attn_implementation == PACKED_ATTENTION
        if not packed:
            self._check_context_length(inputs_embeds, past_key_values)

        image_features = None
        if pixel_values is not None:
            image_mask = self.get_placeholder_mask(input_ids, inputs_embeds)
            image_features = self.get_image_features(pixel_values, pixel_attention_mask)
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            n_image_tokens = int(image_mask.sum())
            n_image_features = image_features.shape[0] * image_features.shape[1]
            if n_image_tokens != n_image_features:
                raise ValueError(
                    f"Image features and image tokens do not match: tokens: {n_image_tokens}, features "
                    f"{n_image_features} ({image_features.shape[0]} images x {image_features.shape[1]} patches)."
                )
            # [batch, seq, hidden] with the image features written at the <image> positions, in order
            inputs_embeds = inputs_embeds.masked_scatter(
                image_mask.unsqueeze(-1).expand_as(inputs_embeds), image_features
            )
        elif not packed and (past_key_values is None or past_key_values.get_seq_length() == 0):
            image_mask = self.get_placeholder_mask(input_ids, inputs_embeds)
            if bool(image_mask.any()):
                raise ValueError(
                    f"The input has {int(image_mask.sum())} <image> tokens but no pixel_values were given; "
                    "pass the image through the processor."
                )

        attention_mask = expanded_attention_mask(
            attention_mask, self.config.text_config, past_key_values, inputs_embeds.shape[1]
        )
        kwargs[cache_argument_name(type(self.language_model))] = past_key_values
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return ChartWizModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_OUTPUT_NAME: outputs.get(CACHE_OUTPUT_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )

    def _check_context_length(self, inputs_embeds: torch.Tensor, past_key_values: Optional[Cache]):
        # The guard of direct `model(...)` and `generate` calls, at every step. The entry points check the prompt and
        # the new tokens before generating with `chartwiz.inference.fit_in_context`; this file travels with
        # checkpoints and imports nothing from the package, so it keeps its own check of the sequence it is given.
        context = getattr(self.config.text_config, "max_position_embeddings", None)
        # Lengths from shapes only: reading a position tensor would wait on the GPU at every decoding step.
        if context is None or not (past_key_values is None or type(past_key_values) is DynamicCache):
            return
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        length = past_length + inputs_embeds.shape[1]
        if length > context:
            raise ValueError(
                f"The sequence is {length} tokens long (each image takes {self.config.max_patches}), longer than "
                f"the language model's context of {context} tokens (text_config.max_position_embeddings). "
                "Shorten the question or the generation length."
            )


class ChartWizForConditionalGeneration(ChartWizPreTrainedModel, GenerationMixin):
    """ChartWiz with a language modeling head: answers questions about charts."""

    # Head -> the weight it is tied to when the language model ties them; transformers 4.57 reads the keys alone.
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: ChartWizConfig):
        super().__init__(config)
        self.model = ChartWizModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self._no_split_modules = list(self.model._no_split_modules)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:
            # Remote code: map every auto class users call to its class, not just the registered one. `AutoModel`
            # builds the base model (vLLM's Transformers backend loads it so); `AutoModelForVision2Seq` exists on
            # transformers 4 only, and the entry is ignored where it does not.
            module = type(self).__module__.split(".")[-1]
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            for auto_class in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
                auto_map.setdefault(auto_class, f"{module}.{type(self).__name__}")
            auto_map.setdefault("AutoModel", f"{module}.{ChartWizModel.__name__}")
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def set_decoder(self, decoder):
        self.model.set_decoder(decoder)

    def get_decoder(self):
        return self.model.get_decoder()

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        pixel_attention_mask: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ):
        return self.model.get_image_features(pixel_values, pixel_attention_mask, return_dict=return_dict, **kwargs)

    @property
    def language_model(self):
        return self.model.language_model

    @property
    def vision_tower(self):
        return self.model.vision_tower

    @property
    def multi_modal_projector(self):
        return self.model.multi_modal_projector

    @can_return_tuple
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        pixel_values: Optional[torch.FloatTensor] = None,
        pixel_attention_mask: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Cache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Union[tuple, ChartWizCausalLMOutputWithPast]:
        r"""
        pixel_values, pixel_attention_mask:
            The images' flattened patches and their mask, as for [`ChartWizModel.forward`].
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Labels for the language modeling loss. Positions holding `<image>` tokens are ignored whatever their label.
        logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0):
            Compute the logits of the last `logits_to_keep` positions only (0: all), or of the given positions.

        The other arguments are those of the language model's forward; `return_dict=False` gives a tuple.

        Example:

        ```python
        >>> from PIL import Image
        >>> from transformers import AutoModelForImageTextToText, AutoProcessor

        >>> model = AutoModelForImageTextToText.from_pretrained("path/to/chartwiz")
        >>> processor = AutoProcessor.from_pretrained("path/to/chartwiz")
        >>> messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "가장 큰 값은?"}]}]
        >>> prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        >>> inputs = processor(images=Image.open("chart.png"), text=prompt, return_tensors="pt")
        >>> output_ids = model.generate(**inputs, max_new_tokens=64)
        >>> processor.decode(output_ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        ```"""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            pixel_attention_mask=pixel_attention_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        # Only compute the logits that are needed, and do not upcast them unless computing the loss
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            if input_ids is not None:
                labels = labels.masked_fill(input_ids == self.config.image_token_id, self.config.ignore_index)
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.text_config.vocab_size,
                ignore_index=self.config.ignore_index,
                **kwargs,
            )

        return ChartWizCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_OUTPUT_NAME: outputs.get(CACHE_OUTPUT_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, pixel_attention_mask=None, **kwargs):
        # The image is encoded once, on the step that fills the cache (or on every step without a cache). transformers
        # 5 says which step that is (`is_first_iteration`); 4.57 gives the step's positions (`cache_position`).
        if _GENERATION_MARKS_FIRST_ITERATION:
            first_step = bool(kwargs.get("is_first_iteration", False))
        else:
            cache_position = kwargs.get("cache_position")
            first_step = cache_position is None or bool(cache_position[0] == 0)
        model_inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        if first_step or not kwargs.get("use_cache", True):
            model_inputs["pixel_values"] = pixel_values
            model_inputs["pixel_attention_mask"] = pixel_attention_mask
        else:
            model_inputs.pop("pixel_values", None)
            model_inputs.pop("pixel_attention_mask", None)
        return model_inputs


__all__ = [
    "ChartWizForConditionalGeneration",
    "ChartWizModel",
    "ChartWizPreTrainedModel",
    "ChartWizMultiModalProjector",
]
