"""Processor for ChartWiz: the image processor, the tokenizer and the chat template in one object."""

import json
import os
import re
import unicodedata
from itertools import zip_longest
from typing import Optional, Union

from transformers import processing_utils
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ImagesKwargs, MultiModalData, ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import TextInput
from transformers.utils import IMAGE_PROCESSOR_NAME


# Korean written in decomposed jamo (NFD: macOS file names, some editors) is other, and more, tokens than the composed
# syllables (NFC) the model was trained on: every prompt is read in NFC, whoever built it.
TEXT_NORMAL_FORM = "NFC"


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


def _as_conversations(text) -> Optional[list[list[dict]]]:
    """`text` as a list of conversations where it is one (a list of messages) or a list of them, else `None`."""
    if not isinstance(text, (list, tuple)) or not text:
        return None
    if all(isinstance(message, dict) for message in text):
        return [list(text)]
    if all(isinstance(sample, (list, tuple)) and all(isinstance(m, dict) for m in sample) for sample in text):
        return [list(sample) for sample in text]
    return None


def _message_texts(message: dict) -> list[str]:
    """The text a message holds: its content string, or the `text` of its text items."""
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    return [item["text"] for item in content or [] if isinstance(item, dict) and item.get("type") == "text"]


def _restored_offsets(entries: list[dict], prompt: str, expanded: str, restore: dict) -> list[dict]:
    """
    `entries` of `_expand_image_tokens` moved from the text with stand-ins (`prompt`, `expanded`) to the text with
    the strings they stand for: each stand-in before a position widens the text by its string's length less one.
    """
    if not restore:
        return entries

    def moved(text: str, position: int) -> int:
        return position + sum(len(restore[character]) - 1 for character in text[:position] if character in restore)

    return [
        {
            **entry,
            "span": tuple(moved(prompt, position) for position in entry["span"]),
            "new_span": tuple(moved(expanded, position) for position in entry["new_span"]),
        }
        for entry in entries
    ]


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
    # transformers 5 loads each part through the Auto class of its modality and warns that naming the class here is
    # deprecated; 4.x needs the name.
    if not hasattr(processing_utils, "MODALITY_TO_AUTOPROCESSOR_MAPPING"):
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
        text: Union[TextInput, list[TextInput], list[dict], list[list[dict]]] = None,
        audio=None,
        videos=None,
        **kwargs: Unpack[ChartWizProcessorKwargs],
    ) -> BatchFeature:
        """
        Prepares text and images for the model.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a list or a list of lists of them):
                The images, in the order of the `<image>` placeholders; a list per sample is accepted.
            text (`str`, `list[str]`, a conversation or a list of conversations):
                The prompts, each `<image>` matching one image; or conversations (lists of `{"role", "content"}`
                messages, each `{"type": "image"}` item matching one image), rendered with the chat template. Given
                conversations and no images, each image of the prompt stays one `<image>` token, as vLLM takes it
                and as prompt lengths are counted. Prompts are tokenized in Unicode NFC (Korean in composed
                syllables, as the model was trained), whatever form they came in.
            add_generation_prompt (`bool`, *optional*, defaults to `False`):
                With conversations: end the prompt with the assistant's turn, as the chat template writes it.
            split_special_tokens_in_messages (`bool`, *optional*, defaults to `False`):
                With conversations: special-token strings in the messages' text (`<|endoftext|>`, `<image>`...
                typed by a user) are tokenized as plain text, while the special tokens the chat template writes (the
                image placeholder, the end of an answer) stay special, so a question cannot end a turn, pad or add
                an image. Where no message holds such a string, the ids are the tokenizer's own for the prompt, what
                training saw. Off by default: training prompts are rendered as they are.
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
        # vLLM asks for the replacements with this flag, and the two conversation options are ChartWiz's own;
        # transformers 4.57's kwargs merging knows none of them.
        return_text_replacement_offsets = kwargs.pop("return_text_replacement_offsets", False)
        add_generation_prompt = kwargs.pop("add_generation_prompt", False)
        split_special_tokens_in_messages = kwargs.pop("split_special_tokens_in_messages", False)
        output_kwargs = self._merge_kwargs(
            ChartWizProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        return_tensors = output_kwargs["text_kwargs"].pop("return_tensors", None)
        output_kwargs["images_kwargs"].pop("return_tensors", None)

        if text is None:
            return BatchFeature(
                data=dict(self.image_processor(images, **output_kwargs["images_kwargs"])), tensor_type=return_tensors
            )
        conversations = _as_conversations(text)
        if conversations is not None:
            pattern = self._special_token_pattern() if split_special_tokens_in_messages else None
            rendered = [self._render(conversation, add_generation_prompt, pattern) for conversation in conversations]
            text, restorations = [prompt for prompt, _ in rendered], [restore for _, restore in rendered]
        elif split_special_tokens_in_messages:
            raise ValueError(
                "split_special_tokens_in_messages needs the text as messages (a conversation or a list of them), so "
                "that the processor tells the messages' text from what the chat template writes."
            )
        elif isinstance(text, str):
            text, restorations = [text], [{}]
        elif isinstance(text, (list, tuple)) and all(isinstance(sample, str) for sample in text):
            restorations = [{}] * len(text)
        else:
            raise TypeError("text must be a string, a list of strings, or a conversation or a list of them.")
        text = [unicodedata.normalize(TEXT_NORMAL_FORM, sample) for sample in text]

        placeholder_counts = [sample.count(self.image_token) for sample in text]
        unexpanded = conversations is not None and images is None
        if not unexpanded:
            self._check_image_count(images, placeholder_counts)

        image_inputs = {}
        image_seq_length = 1 if unexpanded else self.image_seq_length
        if images is not None and sum(placeholder_counts) > 0:
            image_inputs = dict(self.image_processor(images, **output_kwargs["images_kwargs"]))
            image_seq_length = len(image_inputs["pixel_values"][0])
        prompt_strings, replacement_offsets = self._expand_image_tokens(text, image_seq_length)
        if any(restorations):
            text_inputs = self._tokenize_protected(
                text, restorations, pattern, image_seq_length, output_kwargs["text_kwargs"]
            )
            replacement_offsets = [
                _restored_offsets(entries, prompt, expanded, restore)
                for entries, prompt, expanded, restore in zip(replacement_offsets, text, prompt_strings, restorations)
            ]
        else:
            text_inputs = self.tokenizer(prompt_strings, **output_kwargs["text_kwargs"], return_tensors=None)
        # Stand-ins still in place for the messages' special-token strings: the placeholders are the template's.
        self._check_special_mm_tokens(prompt_strings, text_inputs, modalities=["image"])
        outputs = BatchFeature(data={**text_inputs, **image_inputs}, tensor_type=return_tensors)
        if return_text_replacement_offsets:
            # Added after the conversion to tensors, which a list of dicts would not survive on transformers 4.57.
            outputs["text_replacement_offsets"] = replacement_offsets
        return outputs

    def _special_token_pattern(self) -> Optional[re.Pattern]:
        """A regex matching any special token of the tokenizer (longest first), in a group so that `split` keeps it."""
        tokens = {token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special}
        if not tokens:
            return None
        return re.compile("(" + "|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True)) + ")")

    def _render(
        self, conversation: list[dict], add_generation_prompt: bool, pattern: Optional[re.Pattern]
    ) -> tuple[str, dict]:
        """
        The prompt of `conversation` from the chat template and, given the `pattern` of the special tokens, what
        restores the messages' special-token strings: while the template renders, a private-use character stands in
        for each of them, so that the special tokens left in the prompt are the template's own
        (`_tokenize_protected` puts them back as plain text). Without such strings the prompt is rendered as it is
        and nothing needs restoring.
        """
        texts = [text for message in conversation for text in _message_texts(message)]
        found = sorted({match for text in texts for match in pattern.findall(text)}) if pattern else []
        if not found:
            return self.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt), {}
        used = set("".join(texts)) | set(self.chat_template or "")
        free = (chr(code) for code in range(0xF0000, 0xFFFFE) if chr(code) not in used)
        stand_ins = {token: next(free) for token in found}

        def stand_in(text: str) -> str:
            return pattern.sub(lambda match: stand_ins[match.group()], text)

        protected = []
        for message in conversation:
            content = message.get("content")
            if isinstance(content, str):
                content = stand_in(content)
            elif isinstance(content, (list, tuple)):
                content = [
                    {**item, "text": stand_in(item["text"])} if item.get("type") == "text" else item
                    for item in content
                ]
            protected.append({**message, "content": content})
        prompt = self.apply_chat_template(protected, add_generation_prompt=add_generation_prompt)
        return prompt, {character: token for token, character in stand_ins.items()}

    def _tokenize_protected(
        self,
        prompts: list[str],
        restorations: list[dict],
        pattern: re.Pattern,
        image_seq_length: int,
        text_kwargs: dict,
    ) -> dict:
        """
        The ids of prompts rendered by `_render`, padded as `text_kwargs` ask. A prompt with stand-ins is cut at the
        special tokens the template wrote; each piece between them is tokenized alone with the tokenizer's
        `split_special_tokens`, after the stand-ins become the strings again, and the tokenizer's own additions (a
        BOS...) go around the whole. The tokenizer cuts a text at its special tokens before anything else, so each
        piece tokenizes as it does inside the whole prompt: only the messages' special-token strings change.
        """
        if text_kwargs.get("truncation") not in (None, False, "do_not_truncate"):
            raise ValueError("truncation is not supported with split_special_tokens_in_messages: pass no max_length.")
        add_special_tokens = text_kwargs.get("add_special_tokens", True)
        # The tokenizer's warning about sequences longer than the model's maximum, as `verbose` asks for it.
        verbose = text_kwargs.get("verbose", True)
        input_ids = []
        for prompt, restore in zip(prompts, restorations):
            if not restore:
                ids = self.tokenizer(prompt, add_special_tokens=add_special_tokens, verbose=verbose)["input_ids"]
            else:
                pieces = pattern.split(prompt)
                table = str.maketrans(restore)
                texts = [text.translate(table) for text in pieces[0::2]]
                ids = self._encode_pieces(texts, pieces[1::2], add_special_tokens, verbose)
            expanded = []
            for token in ids:
                expanded += [token] * (image_seq_length if token == self.image_token_id else 1)
            input_ids.append(expanded)
        padding = {
            name: text_kwargs[name]
            for name in ("max_length", "pad_to_multiple_of", "padding_side")
            if name in text_kwargs
        }
        return self.tokenizer.pad(
            {"input_ids": input_ids},
            padding=text_kwargs.get("padding", False),
            return_attention_mask=text_kwargs.get("return_attention_mask"),
            verbose=verbose,
            **padding,
        ).data

    def _encode_pieces(
        self, texts: list[str], specials: list[str], add_special_tokens: bool = True, verbose: bool = True
    ) -> list[int]:
        """
        The ids of `texts[0] + specials[0] + texts[1] + ...`: each of `specials` one special token, the texts as plain
        text (special-token strings in them split), and with `add_special_tokens` the tokenizer's own additions.
        """
        tokenizer = self.tokenizer
        if tokenizer.is_fast:
            plain = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=verbose)
            control = tokenizer(specials, add_special_tokens=False, verbose=verbose).encodings if specials else []
            pieces = [piece for pair in zip_longest(plain.encodings, control) for piece in pair if piece is not None]
            # `tokenizers.Encoding.merge`, reached through the encodings at hand (remote code imports only
            # transformers); the backend's post-processor then adds exactly what `tokenizer(text)` adds, whatever
            # its kind (a BOS, an EOS...).
            merged = type(pieces[0]).merge(pieces, growing_offsets=True)
            return tokenizer.backend_tokenizer.post_process(merged, add_special_tokens=add_special_tokens).ids
        # transformers 4.57's slow tokenizers drop `split_special_tokens` from a batch call: one text at a time.
        plain = [
            tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=verbose)["input_ids"]
            for text in texts
        ]
        control = tokenizer.convert_tokens_to_ids(specials)
        ids = []
        for text_ids, special_id in zip_longest(plain, control):
            ids.extend(text_ids or [])
            if special_id is not None:
                ids.append(special_id)
        return tokenizer.build_inputs_with_special_tokens(ids) if add_special_tokens else ids

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
