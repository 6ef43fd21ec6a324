"""
Greedy answers of a saved ChartWiz checkpoint, one question at a time and as one left-padded batch, printed as JSON.

The cross-version tests run this file with the other test lane's interpreter (`CHARTWIZ_OTHER_PYTHON`, which
`make test` sets), so that a checkpoint saved under one transformers major is answered under the other:

    python tests/answer_checkpoint.py CHECKPOINT --images a.png b.png --questions "값?" "합계는?"
    python tests/answer_checkpoint.py CHECKPOINT ... --remote-code   # chartwiz_hf blocked: trust_remote_code only
"""

import argparse
import importlib.abc
import json
import sys


class _BlockChartWiz(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("chartwiz_hf", "dataset_builder"):
            raise ImportError("chartwiz_hf is not installed here")


def answers_with_the_package(checkpoint: str, images, questions, max_new_tokens: int) -> dict:
    """`chartwiz.inference.generation`'s answers: each question alone, then all of them as one left-padded batch."""
    from chartwiz.inference import answer_questions, load_chartwiz

    model, processor = load_chartwiz(checkpoint)
    kwargs = {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens}
    alone = [answer_questions(model, processor, [image], [q], **kwargs)[0] for image, q in zip(images, questions)]
    return {"alone": alone, "batch": answer_questions(model, processor, images, questions, **kwargs)}


def answers_with_remote_code(checkpoint: str, images, questions, max_new_tokens: int) -> dict:
    """The same answers through the Auto classes and the checkpoint's own code, as a user without the package gets."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    if not type(model).__module__.startswith("transformers_modules"):
        raise RuntimeError(f"the model came from {type(model).__module__}, not from the checkpoint's code")

    def generate(batch_images, batch_questions):
        prompts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                add_generation_prompt=True,
            )
            for question in batch_questions
        ]
        inputs = processor(images=batch_images, text=prompts, padding=True, padding_side="left", return_tensors="pt")
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]

    alone = [generate([image], [question])[0] for image, question in zip(images, questions)]
    return {"alone": alone, "batch": generate(images, questions)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("checkpoint")
    parser.add_argument("--images", nargs="+", required=True)
    parser.add_argument("--questions", nargs="+", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--remote-code", action="store_true", help="block chartwiz_hf: trust_remote_code only")
    args = parser.parse_args()
    if args.remote_code:
        sys.meta_path.insert(0, _BlockChartWiz())
    from PIL import Image
    from transformers import __version__

    images = [Image.open(path).convert("RGB") for path in args.images]
    answer = answers_with_remote_code if args.remote_code else answers_with_the_package
    result = answer(args.checkpoint, images, args.questions, args.max_new_tokens)
    print(json.dumps({"transformers": __version__, **result}, ensure_ascii=False))


if __name__ == "__main__":
    main()
