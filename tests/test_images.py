"""One image reader for every entry point: a transparent, EXIF-rotated PNG reaches the processor upright on white."""

import io
import json
import os

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image as PILImage
from PIL import ImageOps
from streamlit.testing.v1 import AppTest

import chartwiz.demo
from chartwiz.commands.cli import main
from chartwiz.evaluation.prediction import predict_dataset
from chartwiz.inference import load_chart_image, load_chartwiz
from chartwiz_hf import ChartWizImageProcessor
from dataset_builder.builder import FEATURES


ROTATED = 6  # EXIF orientation: shown after a 90-degree clockwise turn


def transparent_photo() -> PILImage.Image:
    """64 x 48, transparent pixels stored as (0, 0, 0, 0) (as many PNG writers do), a blue bar, a half-red square."""
    image = PILImage.new("RGBA", (64, 48), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (4, 4, 20, 44))
    image.paste((255, 0, 0, 128), (30, 10, 50, 30))
    return image


def on_white(image: PILImage.Image) -> PILImage.Image:
    """The reference: alpha compositing over white by hand."""
    rgba = np.asarray(image, dtype=np.float64)
    alpha = rgba[..., 3:] / 255.0
    return PILImage.fromarray(np.round(rgba[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8))


def on_white_upright(image: PILImage.Image) -> np.ndarray:
    """The reference on white, then the EXIF turn."""
    return np.asarray(on_white(image).transpose(PILImage.Transpose.ROTATE_270))


def png_bytes(image: PILImage.Image, orientation=ROTATED) -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    return buffer.getvalue()


@pytest.fixture()
def shown(monkeypatch):
    """Every image handed to the ChartWiz image processor, as it was handed."""
    images = []
    preprocess = ChartWizImageProcessor.preprocess

    def recording(self, batch, *args, **kwargs):
        images.extend(batch if isinstance(batch, list) else [batch])
        return preprocess(self, batch, *args, **kwargs)

    monkeypatch.setattr(ChartWizImageProcessor, "preprocess", recording)
    return images


def assert_upright_on_white(images, count=None):
    expected = on_white_upright(transparent_photo())
    assert images and (count is None or len(images) == count)
    for image in images:
        assert isinstance(image, PILImage.Image) and image.mode == "RGB"
        assert image.size == (48, 64), "turned upright by its EXIF orientation"
        np.testing.assert_allclose(np.asarray(image, dtype=int), expected, atol=1)


def test_the_reader_puts_transparency_on_white_and_turns_photos_upright(tmp_path):
    data = png_bytes(transparent_photo())
    (tmp_path / "photo.png").write_bytes(data)
    assert_upright_on_white([load_chart_image(tmp_path / "photo.png"), load_chart_image(data)])
    # A palette image with a transparent index and a grey image with alpha are flattened the same way.
    palette = transparent_photo().convert("RGB").quantize(4)
    palette.info["transparency"] = palette.getpixel((0, 0))
    flat = load_chart_image(png_bytes(palette, orientation=1))
    assert flat.mode == "RGB" and flat.getpixel((0, 0)) == (255, 255, 255)
    grey = PILImage.new("LA", (8, 8), (0, 0))
    assert load_chart_image(png_bytes(grey, orientation=1)).getpixel((3, 3)) == (255, 255, 255)
    with pytest.raises(ValueError, match="the image: cannot decode the image"):
        load_chart_image(b"not an image")


def test_the_processor_composites_transparency_on_white(tiny):
    # An image passed to the processor directly (the Auto-class way in) gets the reader's rule too, which is also
    # transformers 5's `convert_to_rgb`; 4.x's drops the alpha channel and shows the model a black chart.
    _, processor = tiny
    image = transparent_photo()
    by_chartwiz = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    flattened = processor.image_processor([on_white(image)], return_tensors="pt")["pixel_values"]
    black = processor.image_processor([image.convert("RGB")], return_tensors="pt")["pixel_values"]
    assert (by_chartwiz == flattened).all() and not (by_chartwiz == black).all()


def test_ask_and_infer_read_the_image_upright_on_white(tiny_dir, tmp_path, shown, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "photo.png").write_bytes(png_bytes(transparent_photo()))
    assert main(["ask", "--model", tiny_dir, str(images / "photo.png"), "값은?", "--max-new-tokens", "2"]) == 0
    assert_upright_on_white(shown, count=1)

    shown.clear()
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"id": "a", "image": "photo.png", "text": "값은?"}) + "\n", encoding="utf-8")
    argv = ["infer", "--model", tiny_dir, "--questions", str(questions), "--image-folder", str(images)]
    argv += ["--answers", str(tmp_path / "answers.jsonl"), "--max-new-tokens", "2", "--no-progress"]
    assert main([*argv, "--background", "on"]) == 0
    assert_upright_on_white(shown, count=1)


def test_dataset_rows_read_the_image_upright_on_white_from_bytes_or_path(tiny_dir, tmp_path, shown):
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(transparent_photo()))
    prompt, completion = [{"role": "user", "content": "값은?"}], [{"role": "assistant", "content": "1"}]
    rows = [
        {"id": "bytes", "image": {"bytes": path.read_bytes(), "path": None}},
        {"id": "path", "image": {"bytes": None, "path": str(path)}},
    ]
    dataset = Dataset.from_list(
        [{**row, "chart_type": "pie", "task": "qa", "prompt": prompt, "completion": completion} for row in rows],
        features=FEATURES,
    )
    model, processor = load_chartwiz(tiny_dir)
    summary = predict_dataset(model, processor, dataset, str(tmp_path / "report"), max_new_tokens=2, progress=False)
    assert summary.answered == 2
    assert_upright_on_white(shown, count=2)


def test_the_demo_reads_an_upload_upright_on_white(tiny_dir, monkeypatch, shown):
    monkeypatch.setenv("CHARTWIZ_MODEL", tiny_dir)
    monkeypatch.setenv("CHARTWIZ_MAX_NEW_TOKENS", "2")
    monkeypatch.delenv("CHARTWIZ_ADAPTER", raising=False)
    app = AppTest.from_file(os.path.join(os.path.dirname(chartwiz.demo.__file__), "app.py"), default_timeout=120)
    app.run()
    app.file_uploader[0].set_value(("photo.png", png_bytes(transparent_photo()), "image/png")).run()
    app.chat_input[0].set_value("값은?").run()
    assert not app.exception and not app.error, [error.value for error in app.error]
    assert_upright_on_white(shown, count=1)


def test_exif_rotation_is_applied_before_the_size_limit_and_the_image_is_upright(tmp_path):
    # The reference of the rotation itself: PIL's exif_transpose on an RGB photo.
    photo = transparent_photo().convert("RGB")
    data = png_bytes(photo)
    expected = ImageOps.exif_transpose(PILImage.open(io.BytesIO(data)))
    np.testing.assert_array_equal(np.asarray(load_chart_image(data)), np.asarray(expected))
    with pytest.raises(ValueError, match="above the limit"):
        load_chart_image(data, max_pixels=64 * 47)


def readme_python_example() -> str:
    """The README's first Python example, the one of 'Using a ChartWiz checkpoint'."""
    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md"), encoding="utf-8").read()
    section = readme[readme.index("## Using a ChartWiz checkpoint") :]
    return section[
        section.index("```python\n") + len("```python\n") : section.index("```\n", section.index("```python"))
    ]


def test_the_readme_example_shows_the_model_the_chart_as_every_command_does(tiny_dir, tmp_path, monkeypatch):
    from chartwiz.inference import prepare_inputs

    example = readme_python_example()
    assert "Image.open" not in example, "PIL alone applies neither the EXIF orientation nor white under transparency"
    (tmp_path / "chart.png").write_bytes(png_bytes(transparent_photo()))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(example.replace("path/or/repo", tiny_dir).replace("max_new_tokens=128", "max_new_tokens=2"), namespace)
    _, processor = load_chartwiz(tiny_dir)
    expected = prepare_inputs(processor, [load_chart_image("chart.png")], ["가장 큰 값은 무엇인가요?"])
    assert np.array_equal(namespace["inputs"]["pixel_values"].numpy(), expected["pixel_values"].numpy())
    assert namespace["inputs"]["input_ids"].tolist() == expected["input_ids"].tolist()
