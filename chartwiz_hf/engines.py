"""The interface of the engines `chartwiz infer` and `chartwiz evaluate` generate with."""

from collections.abc import Callable, Sequence


class InferenceEngine:
    """
    What `run_inference` generates with: `answer` takes the jobs of a pass (questions with their context, checked to
    fit the context) and yields, as answers come, `(errors, answered)`: `(question, kind, reason)` triples and
    `(job, chart type or None, answer)` triples. `config` is the model's config, `name_or_path` where it was loaded
    from, `wait_seconds` the time generation waited for inputs.
    """

    config = None
    name_or_path = None
    wait_seconds = 0.0

    def answer(self, jobs: Sequence, load_image: Callable, max_new_tokens: int, **generate_kwargs):
        raise NotImplementedError

    def close(self) -> None:
        """Frees what the engine holds (processes, devices); nothing to do for a model in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


__all__ = ["InferenceEngine"]
