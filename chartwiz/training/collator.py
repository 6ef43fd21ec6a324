"""
The batches the model trains on: TRL's vision collator with the tokenizer's own prefix (a BOS) in front, and the
length of each row as that collator will build it, measured from the text alone.
"""

from typing import Optional

import numpy as np
import torch
from trl.data_utils import apply_chat_template, prepare_multimodal_messages
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling


def tokenizer_prefix(tokenizer) -> list[int]:
    """The ids a tokenizer puts before any text it encodes: a BOS for Llama and Mistral tokenizers, none for most
    byte-level BPE ones."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next((index for index in range(len(full)) if full[index : index + len(plain)] == plain), 0)
    return full[:start]


class ChartWizVisionCollator(DataCollatorForVisionLanguageModeling):
    """
    TRL's vision collator, with the tokenizer's own prefix (a BOS) in front of each row. TRL tokenizes prompts without
    special tokens, expecting the chat template to write them; ChartWiz's templates do not, and `chartwiz.inference`
    encodes prompts as the tokenizer does, BOS included, as the original trained: so training rows get it here.
    """

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        prefix = tokenizer_prefix(self.processor.tokenizer)
        if not prefix:
            return batch
        rows = batch["input_ids"].shape[0]
        # [rows, len(prefix)] before the flushed-left rows
        ids = torch.tensor(prefix, dtype=batch["input_ids"].dtype).expand(rows, -1)
        batch["input_ids"] = torch.cat([ids, batch["input_ids"]], dim=1)
        batch["attention_mask"] = torch.cat([torch.ones_like(ids), batch["attention_mask"]], dim=1)
        batch["labels"] = torch.cat([torch.full_like(ids, -100), batch["labels"]], dim=1)
        if self.max_length is not None:
            for key in ("input_ids", "attention_mask", "labels"):
                batch[key] = batch[key][:, : self.max_length]
        return batch


def vision_collator(processor, training_args) -> ChartWizVisionCollator:
    """The collator the recipes train with: TRL's vision one (BOS in front), loss on the completions only."""
    return ChartWizVisionCollator(
        processor=processor,
        max_length=training_args.max_length,
        completion_only_loss=True,
        pad_to_multiple_of=training_args.pad_to_multiple_of,
        dataset_text_field=training_args.dataset_text_field,
        assistant_only_loss=training_args.assistant_only_loss,
    )


class SequenceLengths:
    """
    The token count of each row as TRL's vision collator will build it (chat template, `<image>` expanded to the
    image's tokens), from the text alone: no image is decoded, so it costs one tokenizer pass over the dataset.
    """

    def __init__(self, processor):
        self.tokenizer = processor.tokenizer
        self.prefix_length = len(tokenizer_prefix(processor.tokenizer))
        self.chat_template = processor.chat_template
        self.image_token = processor.image_token
        self.image_seq_length = processor.image_seq_length

    def __call__(self, batch: dict) -> dict:
        prompts, completions, images = [], [], []
        for prompt, completion in zip(batch["prompt"], batch["completion"]):
            # What the collator does, with a stand-in image: the template writes one `<image>` per image entry.
            example = {
                "prompt": prepare_multimodal_messages(prompt, images=[None]),
                "completion": prepare_multimodal_messages(completion),
            }
            texts = apply_chat_template(example, self.tokenizer, chat_template=self.chat_template)
            prompts.append(texts["prompt"])
            completions.append(texts["completion"])
            images.append(texts["prompt"].count(self.image_token))
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        completion_ids = self.tokenizer(completions, add_special_tokens=False)["input_ids"]
        # `<image>` is one token in the text and `image_seq_length` tokens once the processor expands it.
        prompt_lengths = [
            self.prefix_length + len(ids) + count * (self.image_seq_length - 1)
            for ids, count in zip(prompt_ids, images)
        ]
        lengths = [length + len(ids) for length, ids in zip(prompt_lengths, completion_ids)]
        return {"prompt_length": prompt_lengths, "length": lengths}


def add_sequence_lengths(dataset, processor, column: str = "length", num_proc: Optional[int] = None):
    """`dataset` with a `column` of sequence lengths, and the prompts' lengths (image tokens included) apart."""
    measured = dataset.select_columns(["prompt", "completion"]).map(
        SequenceLengths(processor),
        batched=True,
        remove_columns=["prompt", "completion"],
        num_proc=num_proc,
        desc="Measuring sequence lengths",
    )
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, measured["length"]), np.asarray(measured["prompt_length"])


__all__ = ["ChartWizVisionCollator", "SequenceLengths", "add_sequence_lengths", "tokenizer_prefix", "vision_collator"]
