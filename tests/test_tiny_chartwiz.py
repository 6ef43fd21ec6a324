"""The tiny ChartWiz shipped in `examples/tiny-chartwiz`: a checkpoint that loads as users load one, and reads."""

import inspect
import json
import os
import re

import pytest
from PIL import Image

from chartwiz.evaluation.table_metrics import rms
from chartwiz.inference import answer_questions, load_chart_image, load_chartwiz
from chartwiz.names import INSTRUCTIONS
from dataset_builder.aihub import image_dir, table_text, text_dir
from dataset_builder.synth import FOLDER_OF_TYPE, MANIFEST_NAME, described_chart_type, generate


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "examples", "tiny-chartwiz")
HELD_OUT = 20


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """
    20 charts of the quickstart's draw (seed 0), which the shipped model never saw: (images, manifest entries), each
    entry with its reference table (`table`), as `chartwiz data build` writes it from the chart's label file.
    """
    root = str(tmp_path_factory.mktemp("held-out"))
    generate(root, HELD_OUT, seed=0, test_fraction=0.0, progress=False)
    with open(os.path.join(root, MANIFEST_NAME), encoding="utf-8") as file:
        entries = [json.loads(line) for line in file]
    images = []
    for entry in entries:
        folder, stem = FOLDER_OF_TYPE[entry["chart_type"]], entry["stem"]
        images.append(load_chart_image(os.path.join(image_dir(root, entry["split"], folder), f"{stem}.jpg")))
        with open(os.path.join(text_dir(root, entry["split"], folder), f"{stem}.json"), encoding="utf-8") as file:
            entry["table"] = table_text(json.load(file), folder)
    return images, entries


@pytest.fixture(scope="module")
def shipped():
    return load_chartwiz(SHIPPED)


def test_a_small_safetensors_checkpoint_with_its_code_and_a_card_that_says_how_it_was_made():
    files = set(os.listdir(SHIPPED))
    assert {"model.safetensors", "config.json", "modeling_chartwiz.py", "README.md"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files), "weights are safetensors only"
    assert not any(name.startswith(("optimizer", "scheduler", "rng_state", "trainer_state")) for name in files)
    size = sum(os.path.getsize(os.path.join(SHIPPED, name)) for name in files)
    assert size < 10 * 1024 * 1024, f"{size / 2**20:.1f} MiB"
    card = open(os.path.join(SHIPPED, "README.md"), encoding="utf-8").read()
    prose = " ".join(card.split())  # the card's paragraphs are wrapped at any space
    assert "python examples/train_tiny_chartwiz.py" in prose and "`chartwiz synth --seed" in prose
    assert re.search(r"in \d+(\.\d+)? hours", prose), "the card gives the time it took"
    curve = card.split("## Learning curve")[1]
    assert len(re.findall(r"^\| \d+ \|", curve, flags=re.MULTILINE)) >= 3, "a learning curve of several points"


@pytest.mark.slow
def test_it_names_the_chart_type_of_most_held_out_charts_and_not_of_blank_images(shipped, held_out):
    model, processor = shipped
    images, entries = held_out
    question = INSTRUCTIONS["description"][0]

    def types_named(shown):
        descriptions = answer_questions(model, processor, shown, [question] * len(shown), max_new_tokens=64)
        return sum(described_chart_type(text) == entry["chart_type"] for text, entry in zip(descriptions, entries))

    named = types_named(images)
    blank = types_named([Image.new("RGB", image.size, "white") for image in images])
    # Ten chart types: a model that does not look names about one in ten, and a blank image tells it nothing.
    assert named > len(entries) / 2, f"{named} of {len(entries)} chart types named"
    assert blank <= len(entries) / 5, f"{blank} of {len(entries)} named from blank images"


@pytest.mark.slow
def test_it_reads_held_out_charts_into_tables_far_better_than_from_blank_or_another_chart(shipped, held_out):
    model, processor = shipped
    images, entries = held_out
    references = [entry["table"] for entry in entries]
    question = INSTRUCTIONS["table"][0]

    def scores(shown):
        tables = answer_questions(model, processor, shown, [question] * len(shown), max_new_tokens=160)
        return rms(references, tables)

    read = scores(images)
    blank = scores([Image.new("RGB", image.size, "white") for image in images])
    shuffled = scores(images[1:] + images[:1])
    # The margin over both ablations is what reading is: a model that answers from the question alone scores the
    # same on all three, whatever its figure.
    for ablation in (blank, shuffled):
        assert read["rms_f1"] >= ablation["rms_f1"] + 10, (read, ablation)
    assert read["title_match"] > 50 and blank["title_match"] < 20 and shuffled["title_match"] < 20, (read, blank)


# A checkpoint carries the model package's files as remote code: its `auto_map` names them, so it loads through the
# Auto classes with this package installed (its registered classes) and without it (the files it carries).
def describe(folder, paths, question, **options):
    """Greedy answers through the Auto classes alone, as the README's example; run here and, by its source, in an
    interpreter without this package."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder, **options).eval()
    processor = AutoProcessor.from_pretrained(folder, **options)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    images = [Image.open(path).convert("RGB") for path in paths]
    inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answers = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return {"answers": answers, "module": type(model).__module__}


def test_the_checkpoint_loads_with_the_package_and_with_its_remote_code_alone_to_the_same_answers(held_out, tmp_path):
    from .conftest import run_without_chartwiz

    configs = ("config.json", "processor_config.json")
    maps = [json.load(open(os.path.join(SHIPPED, name)))["auto_map"] for name in configs]
    named = {reference.split(".")[0] + ".py" for auto_map in maps for reference in auto_map.values()}
    assert named <= set(os.listdir(SHIPPED)), "every module the auto_map names travels with the checkpoint"

    images, _ = held_out
    paths = [str(tmp_path / f"chart-{index}.png") for index in range(2)]
    for image, path in zip(images, paths):
        image.save(path)
    question = INSTRUCTIONS["description"][0]
    call = f"describe({SHIPPED!r}, {paths!r}, {question!r}, trust_remote_code=True)"
    remote = run_without_chartwiz(f"import json\n{inspect.getsource(describe)}\nprint(json.dumps({call}))", tmp_path)
    assert not remote["module"].startswith("chartwiz"), "the checkpoint's own files, not this package"

    import chartwiz_hf  # noqa: F401  (registers the classes: no remote code)

    package = describe(SHIPPED, paths, question)
    assert package["module"] == "chartwiz_hf.modeling_chartwiz"
    assert remote["answers"] == package["answers"] and any(answer.strip() for answer in package["answers"])
