"""
`ChartWizSFTTrainer`, TRL's `SFTTrainer` with the projector's own learning rate, a length-grouped sampler that draws
the same order on every rank and after a resume, and a model card that describes the stage.
"""

import os
from typing import Optional

import torch
from huggingface_hub import ModelCard
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from trl import SFTTrainer

from .card import add_chartwiz_sections, hub_repo_id


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """
    transformers' `LengthGroupedSampler` with each epoch's order drawn from `(seed, epoch)` instead of the global
    random state, so that every rank and a resumed run draw the same order as the first run did.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class ChartWizSFTTrainer(SFTTrainer):
    """
    `SFTTrainer` with what ChartWiz training needs on top: the projector's own learning rate, length grouping of
    vision rows that resumes and shards deterministically, and a model card describing the stage.

    Args:
        projector_learning_rate (`float`, *optional*):
            Learning rate of the projector's parameters; `args.learning_rate` for everything else.
        card_details (`dict`, *optional*):
            What the model card says about the run: `stage`, `tune`, `base_model`, `dataset_name`,
            `dataset_config`, `train_rows`, `eval_rows`, `lora`.
    """

    def __init__(self, *args, projector_learning_rate: Optional[float] = None, card_details=None, **kwargs):
        self.projector_learning_rate = projector_learning_rate
        self.card_details = dict(card_details or {})
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        # TRL keeps only the conversation and image columns of a vision dataset; the sampler reads the lengths.
        if self.args.group_by_length and self.args.length_column_name not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, self.args.length_column_name]

    def _get_train_sampler(self, train_dataset=None):
        if not self.args.group_by_length:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # Sorted in groups of whole optimizer steps, so the rows of a step do not depend on how many processes
        # share it: accelerate deals each process its slice of the same order.
        step_size = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthGroupedSampler(
            step_size * self.args.world_size,
            lengths=dataset[self.args.length_column_name],
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def create_optimizer(self):
        optimizer = super().create_optimizer()
        if self.projector_learning_rate is None or any(g.get("name") == "projector" for g in optimizer.param_groups):
            return optimizer
        # transformers gives every group `args.learning_rate`: move the projector's parameters to groups of their
        # own (same weight decay split) before the scheduler records each group's initial rate.
        named = self.model.named_parameters()
        projector = {id(p) for name, p in named if "multi_modal_projector" in name and p.requires_grad}
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in projector]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in projector]
                settings = {key: value for key, value in group.items() if key != "params"}
                optimizer.add_param_group(
                    {**settings, "params": moved, "lr": self.projector_learning_rate, "name": "projector"}
                )
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    def create_model_card(
        self,
        model_name: Optional[str] = None,
        dataset_name: Optional[str] = None,
        tags: Optional[list[str]] = None,
        **kwargs,
    ):
        """
        Writes `README.md` in `output_dir` (main process only): TRL's card (metadata, framework versions, tracking
        links, citations) with ChartWiz's own parts in it, see `add_chartwiz_sections`.
        """
        if not self.is_world_process_zero():
            return
        name = model_name or os.path.basename(os.path.normpath(self.args.output_dir))
        dataset = hub_repo_id(dataset_name or self.card_details.get("dataset_name"))
        chartwiz_tags = ["chartwiz", "chart-question-answering", f"tune-{self.card_details.get('tune')}"]
        super().create_model_card(model_name=name, dataset_name=dataset, tags=[*chartwiz_tags, *(tags or [])])
        path = os.path.join(self.args.output_dir, "README.md")
        add_chartwiz_sections(ModelCard.load(path), self, name).save(path)


__all__ = ["ChartWizSFTTrainer", "SeededLengthGroupedSampler"]
