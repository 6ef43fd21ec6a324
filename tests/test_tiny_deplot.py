"""The tiny pretrained DePlot shipped in `examples/tiny-deplot`: what it is, that it reads charts, and that ChartWiz
takes it as its encoder the way it takes `google/deplot`."""

import json
import os

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    Pix2StructConfig,
    Pix2StructForConditionalGeneration,
)

from chartwiz.commands.cli import main as chartwiz
from chartwiz.evaluation.metrics import rms
from chartwiz_hf.compose import load_pix2struct_encoder
from chartwiz_hf.image_processing_chartwiz import ChartWizImageProcessor
from dataset_builder.synth import make_chart, render_chart

from .conftest import pix2struct_image_processor


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DEPLOT = os.path.join(REPO, "examples", "tiny-deplot")
# Seed 0 is the quickstart's: charts the encoder never saw in pretraining (it was drawn with other seeds).
HELD_OUT_SEED = 0
# transformers' own class for the saved settings (its PIL one on 5.x).
PIX2STRUCT_IMAGE_PROCESSOR = type(pix2struct_image_processor())


def held_out_charts(tmp_path, count: int, size=(640, 480), name="chart"):
    """The first `count` quickstart charts (one of each type per ten), drawn at `size`: (images, reference tables)."""
    images, tables = [], []
    for index in range(count):
        chart = make_chart(index, HELD_OUT_SEED, test_fraction=0.05)
        path = tmp_path / f"{name}-{index}-{size[0]}.jpg"
        render_chart(chart, str(path), size=size)
        images.append(Image.open(path).convert("RGB"))
        tables.append(chart.expected_table)
    return images, tables


@pytest.fixture(scope="module")
def image_processor():
    # ChartWiz's own image processor with the shipped checkpoint's patch settings, as `chartwiz compose` builds it.
    reference = PIX2STRUCT_IMAGE_PROCESSOR.from_pretrained(TINY_DEPLOT)
    return ChartWizImageProcessor(max_patches=reference.max_patches, is_vqa=reference.is_vqa)


@pytest.fixture(scope="module")
def deplot():
    return Pix2StructForConditionalGeneration.from_pretrained(TINY_DEPLOT, dtype=torch.float32).eval()


def test_a_pix2struct_checkpoint_of_deplots_kind_under_five_megabytes(deplot):
    assert os.path.getsize(os.path.join(TINY_DEPLOT, "model.safetensors")) < 5 * 1024 * 1024
    with open(os.path.join(TINY_DEPLOT, "config.json"), encoding="utf-8") as file:
        config = json.load(file)
    assert config["model_type"] == "pix2struct" and config["architectures"] == ["Pix2StructForConditionalGeneration"]
    assert isinstance(deplot.config, Pix2StructConfig) and deplot.config.is_vqa
    processor = PIX2STRUCT_IMAGE_PROCESSOR.from_pretrained(TINY_DEPLOT)
    assert processor.is_vqa and processor.patch_size == {"height": 16, "width": 16}
    # Every tensor of the saved file is a weight of the model: nothing left out, nothing random at load.
    saved = load_file(os.path.join(TINY_DEPLOT, "model.safetensors"))
    assert set(saved) == set(deplot.state_dict())
    readme = open(os.path.join(TINY_DEPLOT, "README.md"), encoding="utf-8").read()
    assert "examples/pretrain_tiny_deplot.py" in readme


@pytest.mark.slow
@torch.no_grad()
def test_it_reads_held_out_charts_into_their_tables(deplot, image_processor, tmp_path):
    images, references = held_out_charts(tmp_path, 20)
    tokenizer = AutoTokenizer.from_pretrained(TINY_DEPLOT)

    def tables(pictures):
        inputs = image_processor(images=pictures, return_tensors="pt")
        output = deplot.generate(
            flattened_patches=inputs["pixel_values"],
            attention_mask=inputs["pixel_attention_mask"],
            max_new_tokens=256,
            do_sample=False,
        )
        return tokenizer.batch_decode(output, skip_special_tokens=True)

    read = rms(references, tables(images))
    blank = rms(references, tables([Image.new("RGB", image.size, "white") for image in images]))
    # Measured: RMS F1 22.1 read against 0.6 from blank charts (19.5 on the 240 held-out charts of its own draw).
    assert read["rms_f1"] >= 15 and read["rms_f1"] >= blank["rms_f1"] + 15, (read, blank)


def features(encoder, image_processor, images) -> torch.Tensor:
    inputs = image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(flattened_patches=inputs["pixel_values"], attention_mask=inputs["pixel_attention_mask"])
    mask = inputs["pixel_attention_mask"].bool()
    return hidden.last_hidden_state, mask  # [charts, patches, hidden], [charts, patches]


def distance(first: torch.Tensor, second: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over the real patches of the distance of two feature maps, relative to their size."""
    difference = (first - second)[mask].norm(dim=-1)
    scale = (first[mask].norm(dim=-1) * second[mask].norm(dim=-1)).sqrt()
    return float((difference / scale).mean())


@pytest.mark.slow
def test_the_encoder_tells_charts_apart_and_not_two_drawings_of_one(image_processor, tmp_path):
    encoder = load_pix2struct_encoder(TINY_DEPLOT, dtype=torch.float32).eval()
    # Ten charts, one of each type, and the next ten (the same types, other data), each also drawn a size smaller:
    # the same chart, other pixels (its patch grid stays the same under the header).
    images, _ = held_out_charts(tmp_path, 20)
    redrawn, _ = held_out_charts(tmp_path, 10, size=(600, 450), name="again")
    first, first_mask = features(encoder, image_processor, images[:10])
    others, others_mask = features(encoder, image_processor, images[10:])
    again, again_mask = features(encoder, image_processor, redrawn)
    assert torch.equal(first_mask, again_mask) and torch.equal(first_mask, others_mask)
    same = [distance(first[i], again[i], first_mask[i]) for i in range(10)]
    different = [distance(first[i], others[i], first_mask[i]) for i in range(10)]
    # Every chart is far nearer its own second drawing than another chart of its type.
    # Every chart is nearer its own second drawing than another chart of its type, and on average far nearer
    # (measured: 0.22 against 0.59).
    assert all(d_same < d_other for d_same, d_other in zip(same, different)), (same, different)
    assert sum(different) > 2 * sum(same), (same, different)


def test_chartwiz_compose_takes_it_as_it_takes_deplot(tmp_path, capsys):
    language_model, out = str(tmp_path / "lm"), str(tmp_path / "chartwiz")
    assert chartwiz(["init-tiny", language_model, "--language-model-only", "--hidden-size", "64"]) == 0
    # Its 256 patches, as it was pretrained (DePlot's own checkpoint takes compose's default of 512).
    command = ["compose", "--vision", TINY_DEPLOT, "--text", language_model, "--out", out, "--max-patches", "256"]
    assert chartwiz(command) == 0
    from chartwiz_hf import ChartWizForConditionalGeneration, ChartWizProcessor

    model = ChartWizForConditionalGeneration.from_pretrained(out)
    processor = ChartWizProcessor.from_pretrained(out)
    shipped = load_file(os.path.join(TINY_DEPLOT, "model.safetensors"))
    encoder = model.model.vision_tower.state_dict()
    assert all(torch.equal(tensor, shipped[f"encoder.{key}"].to(tensor.dtype)) for key, tensor in encoder.items())
    assert set(encoder) == {key[len("encoder.") :] for key in shipped if key.startswith("encoder.")}
    # DePlot's kind of patches: the header drawn above the chart, 16 x 16 patches.
    assert processor.image_processor.is_vqa and processor.image_processor.patch_size == {"height": 16, "width": 16}
    assert model.config.text_config.head_dim == 32
