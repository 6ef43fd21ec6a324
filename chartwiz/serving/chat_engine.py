"""
`chartwiz evaluate --engine vllm` for models other than ChartWiz: the prompts of `chat_inputs` (the model's own chat
template and tokenizer) given to vLLM, which expands the chart's placeholder and processes the chart by its own
processing of that model.
"""

from typing import Optional

from chartwiz.errors import ChartWizValueError
from chartwiz.inference.chat_engines import ChatPrompting, load_chat_processor
from chartwiz.inference.chat_inputs import prompt_token_ids

from .engine import VLLMEngine


# vLLM's own implementation of the architecture where it has one, else the model's transformers code run by vLLM
# (what ChartWiz always takes); `transformers` forces the latter.
MODEL_IMPLS = ("auto", "vllm", "transformers")


class VLLMChatEngine(ChatPrompting, VLLMEngine):
    """
    `VLLMEngine` for a model other than ChartWiz: each request is the token ids of the rendered chat prompt, the
    chart's placeholder unexpanded, and the chart.

    Args:
        model (`str`): a checkpoint directory or Hub repo that loads with `AutoModelForImageTextToText`.
        system (`str`, *optional*): a system turn before every conversation (`--instructions`).
        trust_remote_code (`bool`, defaults to `False`): run the checkpoint's own code (processor, model).
        model_impl (`str`, defaults to `"auto"`): one of `MODEL_IMPLS`.
        tensor_parallel_size, data_parallel_size, dtype, max_in_flight, engine_kwargs: as for `VLLMEngine`.
    """

    def __init__(
        self,
        model: str,
        system: Optional[str] = None,
        trust_remote_code: bool = False,
        model_impl: str = "auto",
        **kwargs,
    ):
        if model_impl not in MODEL_IMPLS:
            raise ChartWizValueError(f"--vllm-model-impl must be one of {', '.join(MODEL_IMPLS)}, got {model_impl!r}")
        self.system = system
        processor = load_chat_processor(model, trust_remote_code)
        super().__init__(
            model, processor=processor, trust_remote_code=trust_remote_code, model_impl=model_impl, **kwargs
        )

    def prompt(self, job, image) -> dict:
        ids = prompt_token_ids(self.processor, job.question.question, job.history, self.system)
        return {"prompt_token_ids": ids, "multi_modal_data": {"image": image}}


__all__ = ["MODEL_IMPLS", "VLLMChatEngine"]
