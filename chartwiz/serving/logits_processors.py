"""
A vLLM logits processor that keeps ChartWiz from generating its image placeholder, installed as a plugin.

vLLM's Transformers backend computes the logits with its own language modeling head, so nothing in the
checkpoint's code can take a token out of them, and vLLM reads no `suppress_tokens` from `generation_config.json`.
The `vllm.logits_processors` entry point of this package makes every vLLM engine started where ChartWiz is installed
(`vllm serve`, the API server, `LLM`, `chartwiz infer --engine vllm`) load this processor; it acts on ChartWiz
models only and leaves every other model's logits alone.
"""

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor


CHARTWIZ_MODEL_TYPE = "chartwiz"


class NoImagePlaceholderLogitsProcessor(LogitsProcessor):
    """
    Sets the logit of `<image>` (`config.image_token_id`) to `-inf` for every request of a ChartWiz model: the
    placeholder marks where a chart's features go in the prompt, and an answer holding it would read as another
    chart in the next turn.
    """

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        config = vllm_config.model_config.hf_config
        is_chartwiz = getattr(config, "model_type", None) == CHARTWIZ_MODEL_TYPE
        self.image_token_id = getattr(config, "image_token_id", None) if is_chartwiz else None

    def is_argmax_invariant(self) -> bool:
        # Greedy requests skip argmax-invariant processors; this one changes the argmax whenever it acts.
        return self.image_token_id is None

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Nothing per request: the same token is taken out of every request's logits."""

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.image_token_id is not None:
            logits[:, self.image_token_id] = float("-inf")
        return logits


__all__ = ["NoImagePlaceholderLogitsProcessor"]
