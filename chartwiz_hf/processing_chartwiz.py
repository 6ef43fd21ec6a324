"""Processor for ChartWiz: the image processor, the tokenizer and the chat template in one object."""

import json
import os
from typing import Optional, Union

from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ImagesKwargs, MultiModalData, ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import TextInput
from transformers.utils import IMAGE_PROCESSOR_NAME


def readable_by_both_majors(tokenizer_settings: dict, tokenizer) -> bool:
    """
    Rewrites, in place, what transformers 5 writes in `tokenizer_config.json` and 4.57 cannot read, and says whether
    anything changed: 5's generic `TokenizersBackend` class becomes `PreTrainedTokenizerFast` (5 reads that name as
    the same class), and 5's list of `extra_special_tokens` becomes 4.57's form, a dict of the named multimodal tokens
    (`image_token`) beside the list as `additional_special_tokens`, which 5 also reads.
    """
    changed = False
    if tokenizer_settings.get("tokenizer_class") == "TokenizersBackend":
        tokenizer_settings["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed = True
    extra = tokenizer_settings.get("extra_special_tokens")
    if isinstance(extra, list):
        # transformers 5 extends the instance's SPECIAL_TOKENS_ATTRIBUTES with the named tokens it was given.
        standard = set(type(tokenizer).SPECIAL_TOKENS_ATTRIBUTES)
        named = [name for name in tokenizer.SPECIAL_TOKENS_ATTRIBUTES if name not in standard]
        tokenizer_settings["extra_special_tokens"] = {
            name: tokenizer_settings[name] for name in named if isinstance(tokenizer_settings.get(name), str)
        }
        if extra:
            tokenizer_settings.setdefault("additional_special_tokens", extra)
        changed = True
    return changed


class ChartWizImagesKwargs(ImagesKwargs, total=False):
    header_text: Optional[Union[str, list[str]]]
    max_patches: Optional[int]
    font_path: Optional[str]


class ChartWizProcessorKwargs(ProcessingKwargs, total=False):
    images_kwargs: ChartWizImagesKwargs
    _defaults = {
        # The model has no token types; some tokenizers return them unless told not to.
        "text_kwargs": {"padding": False, "return_token_type_ids": False},
        "images_kwargs": {},
    }


class ChartWizProcessor(ProcessorMixin):
    r"""
    Constructs a ChartWiz processor from a [`ChartWizImageProcessor`] and a tokenizer: each `<image>` in the text is
    expanded to one token per Pix2Struct patch, and the images become `pixel_values` / `pixel_attention_mask`.

    Args:
        image_processor ([`ChartWizImageProcessor`], *optional*):
            The image processor is a required input.
        tokenizer ([`PreTrainedTokenizerFast`], *optional*):
            The tokenizer is a required input; it must know `image_token` as one token.
        chat_template (`str`, *optional*):
            A Jinja template turning messages into a prompt; `chartwiz_hf.chat_templates` holds the ones ChartWiz
            models were trained with, and `compose` / `init-tiny` set one.
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The placeholder of an image in the text.
    """

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token="<image>", **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        image_token_ids = tokenizer.encode(self.image_token, add_special_tokens=False) if tokenizer else []
        if tokenizer is not None and len(image_token_ids) != 1:
            raise ValueError(
                f"The tokenizer splits the image token {self.image_token!r} into {image_token_ids}; add it as a "
                "special token (chartwiz_hf.compose.add_special_token(tokenizer, '<image>'))."
            )
        self.image_token_id = image_token_ids[0] if image_token_ids else None
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        # AutoImageProcessor builds the image processor from its config alone; the header font sits beside it.
        processor.image_processor.locate_font(pretrained_model_name_or_path, **kwargs)
        return processor

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """
        Saves the processor so that both transformers majors load it: transformers 5 writes the image processor into
        `processor_config.json` only, where 4.57 does not look, so its own `preprocessor_config.json` (and the header
        font) are written too; and 5's generic `TokenizersBackend` is recorded as `PreTrainedTokenizerFast`, the name
        both majors read for a tokenizer defined by its `tokenizer.json` alone (see `readable_by_both_majors`).
        """
        if push_to_hub:
            # Upload the folder as this method completes it, not as transformers alone writes it.
            from huggingface_hub import create_repo, upload_folder

            repo_id = kwargs.pop("repo_id", None) or os.path.basename(os.path.normpath(save_directory))
            token, private = kwargs.pop("token", None), kwargs.pop("private", None)
            result = self.save_pretrained(save_directory, **kwargs)
            repo_id = create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
            upload_folder(repo_id=repo_id, folder_path=save_directory, token=token)
            return result
        result = super().save_pretrained(save_directory, **kwargs)
        if not os.path.isfile(os.path.join(save_directory, IMAGE_PROCESSOR_NAME)):
            self.image_processor.save_pretrained(save_directory)
        self.image_processor.save_font(save_directory)
        tokenizer_config = os.path.join(save_directory, "tokenizer_config.json")
        if os.path.isfile(tokenizer_config):
            with open(tokenizer_config, encoding="utf-8") as file:
                settings = json.load(file)
            if readable_by_both_majors(settings, self.tokenizer):
                with open(tokenizer_config, "w", encoding="utf-8") as file:
                    json.dump(settings, file, ensure_ascii=False, indent=2)
        return result

    @property
    def image_seq_length(self) -> int:
        """Number of tokens one image takes."""
        return self.image_processor.max_patches

    def __call__(
        self,
        images: Optional[ImageInput] = None,
        text: Union[TextInput, list[TextInput]] = None,
        audio=None,
        videos=None,
        **kwargs: Unpack[ChartWizProcessorKwargs],
    ) -> BatchFeature:
        """
        Prepares text and images for the model.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a list or a list of lists of them):
                The images, in the order of the `<image>` placeholders; a list per sample is accepted.
            text (`str` or `list[str]`):
                The prompts. Each `<image>` must match one image.
            return_tensors, padding, padding_side, truncation, max_length, add_special_tokens:
                Passed to the tokenizer.
            return_text_replacement_offsets (`bool`, *optional*, defaults to `False`):
                Also return `text_replacement_offsets`: per text, where each `<image>` was and what it became (see
                `_expand_image_tokens`).

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask`, and when images are given `pixel_values`
            (`(num_images, max_patches, patch_dim)`) and `pixel_attention_mask` (`(num_images, max_patches)`).
        """
        if images is None and text is None:
            raise ValueError("You have to specify at least one of `images` or `text`.")
        # vLLM asks for the replacements with this flag; transformers 4.57's kwargs merging does not know it.
        return_text_replacement_offsets = kwargs.pop("return_text_replacement_offsets", False)
        output_kwargs = self._merge_kwargs(
            ChartWizProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        return_tensors = output_kwargs["text_kwargs"].pop("return_tensors", None)
        output_kwargs["images_kwargs"].pop("return_tensors", None)

        if text is None:
            return BatchFeature(
                data=dict(self.image_processor(images, **output_kwargs["images_kwargs"])), tensor_type=return_tensors
            )
        if isinstance(text, str):
            text = [text]
        elif not (isinstance(text, (list, tuple)) and all(isinstance(sample, str) for sample in text)):
            raise TypeError("text must be a string or a list of strings.")

        placeholder_counts = [sample.count(self.image_token) for sample in text]
        self._check_image_count(images, placeholder_counts)

        image_inputs = {}
        image_seq_length = self.image_seq_length
        if images is not None and sum(placeholder_counts) > 0:
            image_inputs = dict(self.image_processor(images, **output_kwargs["images_kwargs"]))
            image_seq_length = len(image_inputs["pixel_values"][0])
        prompt_strings, replacement_offsets = self._expand_image_tokens(text, image_seq_length)
        text_inputs = self.tokenizer(prompt_strings, **output_kwargs["text_kwargs"], return_tensors=None)
        self._check_special_mm_tokens(prompt_strings, text_inputs, modalities=["image"])
        outputs = BatchFeature(data={**text_inputs, **image_inputs}, tensor_type=return_tensors)
        if return_text_replacement_offsets:
            # Added after the conversion to tensors, which a list of dicts would not survive on transformers 4.57.
            outputs["text_replacement_offsets"] = replacement_offsets
        return outputs

    def _expand_image_tokens(self, text: list[str], image_seq_length: int) -> tuple[list[str], list[list[dict]]]:
        """
        The texts with each `<image>` expanded to `image_seq_length` image tokens, and per text the replacements
        made, in the form of transformers 5's `ProcessorMixin.get_text_with_replacements` (`type`, `span` and
        `new_span` in characters, `text`, `replacement`): vLLM's Transformers backend locates each image's tokens
        from them. Written here because transformers 4.57 has no such helper, and the files must run on both.
        """
        replacement = self.image_token * image_seq_length
        expanded, offsets = [], []
        for sample in text:
            pieces, entries, start, growth = [], [], 0, 0
            while (position := sample.find(self.image_token, start)) != -1:
                end = position + len(self.image_token)
                new_start = position + growth
                entries.append(
                    {
                        "type": "image",
                        "span": (position, end),
                        "new_span": (new_start, new_start + len(replacement)),
                        "text": self.image_token,
                        "replacement": replacement,
                    }
                )
                pieces += [sample[start:position], replacement]
                growth += len(replacement) - len(self.image_token)
                start = end
            expanded.append("".join(pieces) + sample[start:])
            offsets.append(entries)
        return expanded, offsets

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """
        The number of `<image>` tokens each image takes in the prompt: `max_patches` whatever the image size, since
        every Pix2Struct patch slot, padding included, becomes one token.

        Args:
            image_sizes (`list[list[int]]`, *optional*):
                The images' (height, width).
            kwargs:
                Image processor arguments of the call (`max_patches` changes the count).

        Returns:
            `MultiModalData` with `num_image_tokens` and `num_image_patches` (one patch sequence per image).
        """
        vision_data = {}
        if image_sizes is not None:
            images_kwargs = {**ChartWizProcessorKwargs._defaults.get("images_kwargs", {}), **kwargs}
            max_patches = images_kwargs.get("max_patches") or self.image_processor.max_patches
            vision_data["num_image_tokens"] = [max_patches] * len(image_sizes)
            vision_data["num_image_patches"] = [1] * len(image_sizes)
        return MultiModalData(**vision_data)

    def _check_image_count(self, images, placeholder_counts: list[int]):
        if images is None:
            if sum(placeholder_counts) > 0:
                raise ValueError(
                    f"The text has {sum(placeholder_counts)} {self.image_token} placeholders but no images were given."
                )
            return
        is_nested = isinstance(images, (list, tuple)) and any(isinstance(item, (list, tuple)) for item in images)
        if is_nested:
            image_counts = [len(item) if isinstance(item, (list, tuple)) else 1 for item in images]
            if image_counts != placeholder_counts:
                raise ValueError(
                    f"Each image needs one {self.image_token} in its text: the texts have {placeholder_counts} "
                    f"placeholders but {image_counts} images were given per sample."
                )
            return
        num_images = len(images) if isinstance(images, (list, tuple)) else 1
        if num_images != sum(placeholder_counts):
            raise ValueError(
                f"Each image needs one {self.image_token} in the text: got {num_images} images and "
                f"{sum(placeholder_counts)} placeholders ({placeholder_counts} per sample). Write "
                f"{self.image_token} where the chart goes, or use processor.apply_chat_template."
            )


__all__ = ["ChartWizProcessor"]
