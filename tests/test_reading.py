"""
Does training teach ChartWiz to read the image? End to end through the recipe script: a control whose reading is
trivial (the answer is the colour the image is filled with) must be learnt within the recipe's steps, and the pixels
a training batch carries for a chart are those every entry point builds for it.
"""

import os
import random

import pytest
import torch
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from chartwiz.inference import answer_questions, load_chart_image, load_chartwiz, prepare_inputs
from chartwiz.models.tiny import make_tiny_chartwiz

from .test_recipes import FINETUNE, parse, sft


pytestmark = pytest.mark.usefixtures("full_precision_training")


COLOURS = {"빨강": (210, 40, 40), "초록": (40, 170, 60), "파랑": (40, 70, 210), "노랑": (225, 205, 40)}
QUESTION = "이 그림은 무슨 색인가요?"
FEATURES = Features(
    {
        "id": Value("string"),
        "image": Image(),
        "chart_type": Value("string"),
        "task": Value("string"),
        "prompt": List({"role": Value("string"), "content": Value("string")}),
        "completion": List({"role": Value("string"), "content": Value("string")}),
    }
)


def colour_image(colour: tuple, rng: random.Random) -> PILImage.Image:
    """A plain image of `colour`, its shade and size drawn at random, so that no two rows share their pixels."""
    shade = tuple(min(255, max(0, channel + rng.randint(-20, 20))) for channel in colour)
    return PILImage.new("RGB", (rng.randint(160, 320), rng.randint(120, 240)), shade)


def colour_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        name = list(COLOURS)[index % len(COLOURS)]
        rows.append(
            {
                "id": f"colour-{seed}-{index}",
                "image": colour_image(COLOURS[name], rng),
                "chart_type": name,
                "task": "qa",
                "prompt": [{"role": "user", "content": QUESTION}],
                "completion": [{"role": "assistant", "content": f"{name}입니다."}],
            }
        )
    return rows


def write_control_dataset(folder, train_rows: list[dict], test_rows: list[dict]) -> str:
    """A dataset folder in the layout `chartwiz data build` writes (one `finetune` config), images embedded."""
    os.makedirs(os.path.join(folder, "finetune"), exist_ok=True)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        Dataset.from_list(rows, features=FEATURES).to_parquet(os.path.join(folder, "finetune", f"{split}.parquet"))
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as card:
        card.write(
            "---\nconfigs:\n- config_name: finetune\n  data_files:\n"
            "  - split: train\n    path: finetune/train.parquet\n"
            "  - split: test\n    path: finetune/test.parquet\n---\n"
        )
    return str(folder)


def accuracy(answers: list[str], rows: list[dict]) -> float:
    return sum(answer.startswith(row["chart_type"]) for answer, row in zip(answers, rows)) / len(rows)


@pytest.mark.slow
def test_the_recipe_learns_to_read_an_image_whose_reading_is_trivial(tmp_path):
    """
    The image path end to end (processor, TRL's collator, the trainer's batches, the projector, the `<image>`
    positions, generation): four colours, one word each, learnt by the stage-2 recipe from a random tiny model. Images
    scrambled between rows, dropped, or placed where the language model cannot see them leave the answers at chance,
    which the blank and shuffled ablations show.
    """
    model_dir = tmp_path / "model"
    make_tiny_chartwiz(str(model_dir), seed=0, max_patches=16)
    data = write_control_dataset(tmp_path, colour_rows(320, seed=1), colour_rows(40, seed=2))
    script_args, training_args, model_args = parse(
        FINETUNE,
        model_name_or_path=str(model_dir),
        dataset_name=data,
        dataset_config="finetune",
        output_dir=str(tmp_path / "trained"),
        max_steps=160,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        max_eval_samples=8,
        logging_steps=40,
        save_strategy="no",
    )
    sft.main(script_args, training_args, model_args)

    model, processor = load_chartwiz(str(tmp_path / "trained"))
    test_rows = colour_rows(40, seed=2)
    images = [row["image"] for row in test_rows]
    blank = [PILImage.new("RGB", image.size, "white") for image in images]
    shuffled = images[len(COLOURS) // 2 :] + images[: len(COLOURS) // 2]  # each row shown a row of another colour

    def answers(shown):
        return answer_questions(model, processor, shown, [QUESTION] * len(shown), max_new_tokens=6)

    read = accuracy(answers(images), test_rows)
    assert read >= 0.9, f"the trained model names the colour of {read:.0%} of the held-out images"
    for name, shown in (("blank", blank), ("shuffled", shuffled)):
        ablated = accuracy(answers(shown), test_rows)
        assert ablated <= 0.5, f"{name} images: {ablated:.0%} named right, so the answers do not come from the image"


def test_a_training_batch_carries_the_pixels_every_entry_point_builds(chart_data, tmp_path):
    """The recipe's collator, fed dataset rows, gives each chart exactly the pixels `ask`, `infer` and the demo do."""
    model_dir = tmp_path / "model"
    make_tiny_chartwiz(str(model_dir), seed=0, max_patches=64)
    script_args, training_args, model_args = parse(
        FINETUNE, model_name_or_path=str(model_dir), dataset_name=chart_data, output_dir=str(tmp_path / "run")
    )
    trainer, _ = sft.build_trainer(script_args, training_args, model_args)
    dataset = trainer.train_dataset
    indices = list(range(0, len(dataset), max(1, len(dataset) // 6)))
    rows = [dict(dataset[index]) for index in indices]
    batch = trainer.data_collator([{key: row[key] for key in ("image", "prompt", "completion")} for row in rows])
    paths = dataset.cast_column("image", Image(decode=False)).select(indices)["image"]
    charts = [load_chart_image(path["path"]) for path in paths]
    expected = prepare_inputs(trainer.processing_class, charts, ["질문"] * len(charts))
    assert batch["pixel_values"].shape == expected["pixel_values"].shape
    for index in range(len(rows)):
        assert torch.equal(batch["pixel_values"][index], expected["pixel_values"][index]), f"row {indices[index]}"
        assert torch.equal(batch["pixel_attention_mask"][index], expected["pixel_attention_mask"][index])
