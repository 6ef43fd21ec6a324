import io
import math
import os
import struct
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import transformers
from PIL import Image

import chartwiz_hf.image_processing_chartwiz as chartwiz_image_processing
from chartwiz_hf import ChartWizImageProcessor
from chartwiz_hf.image_processing_chartwiz import DEPLOT_HEADER_TEXT, bundled_font_path

from .conftest import draw_chart, pix2struct_image_processor


def varied_images():
    rng = np.random.default_rng(0)
    images = [
        draw_chart(w, h, tuple(rng.integers(1, 10, 4)), seed=i)
        for i, (w, h) in enumerate([(800, 600), (1200, 500), (300, 900), (640, 480), (1500, 1000), (90, 60)])
    ]
    images.append(Image.fromarray(rng.integers(0, 255, (333, 777, 3), dtype=np.uint8)))
    images.append(draw_chart(400, 300).convert("L"))
    images.append(draw_chart(400, 300).convert("RGBA"))
    return images


# transformers 5's Pix2StructImageProcessorPil drops a font_path passed to its call (with a header it would download
# Arial); its render_header takes one.
_NO_FONT_PATH = hasattr(transformers, "Pix2StructImageProcessorPil")


def pix2struct_with_font(**kwargs):
    """transformers' Pix2Struct image processor drawing its header with the bundled font, and the call's kwargs."""
    if not _NO_FONT_PATH:
        return pix2struct_image_processor(**kwargs), {"font_path": bundled_font_path()}

    class WithFont(transformers.Pix2StructImageProcessorPil):
        def render_header(self, image, header, font_bytes=None, font_path=None):
            return super().render_header(image, header, font_path=bundled_font_path())

    return WithFont(**kwargs), {}


@pytest.mark.parametrize("is_vqa", [True, False])
@pytest.mark.parametrize("max_patches", [64, 512])
def test_same_values_as_pix2struct_for_the_same_font(is_vqa, max_patches):
    images = varied_images()
    reference, font_kwargs = pix2struct_with_font(is_vqa=is_vqa, max_patches=max_patches)
    ours = ChartWizImageProcessor(is_vqa=is_vqa, max_patches=max_patches)
    kwargs = {"header_text": DEPLOT_HEADER_TEXT, **font_kwargs} if is_vqa else {}
    expected = reference(images, return_tensors="np", **kwargs)
    actual = ours(images, return_tensors="np")
    np.testing.assert_array_equal(actual["pixel_values"], expected["flattened_patches"])
    np.testing.assert_array_equal(actual["pixel_attention_mask"], expected["attention_mask"])


def unusual_images():
    chart = draw_chart(400, 300)
    return {
        "odd-size": draw_chart(333, 211, seed=3),
        "tiny": Image.new("RGB", (3, 2), "red"),
        "wide": draw_chart(2000, 50),
        "tall": draw_chart(200, 1200),
        "wider-than-the-header": draw_chart(1301, 707, seed=5),
        "rgba": chart.convert("RGBA"),
        "grayscale": chart.convert("L"),
        "palette": chart.convert("P"),
        "cmyk": chart.convert("CMYK"),
        "array": np.asarray(draw_chart(257, 129, seed=7)),
    }


@pytest.mark.parametrize(
    "is_vqa, max_patches, patch_size",
    [
        (True, 512, {"height": 16, "width": 16}),
        (False, 1, {"height": 16, "width": 16}),
        pytest.param(True, 7, {"height": 8, "width": 12}, marks=pytest.mark.slow),
        pytest.param(False, 2048, {"height": 16, "width": 16}, marks=pytest.mark.slow),
    ],
    ids=["header-512", "1-patch", "7-non-square-patches", "2048"],
)
def test_one_image_per_call_same_values_as_pix2struct(is_vqa, max_patches, patch_size):
    # One image per call, as `chartwiz ask` and a server call it, over the shapes and modes the patch layout and the
    # row and column ids must get right.
    reference, font_kwargs = pix2struct_with_font(is_vqa=is_vqa, max_patches=max_patches, patch_size=patch_size)
    ours = ChartWizImageProcessor(is_vqa=is_vqa, max_patches=max_patches, patch_size=patch_size)
    kwargs = {"header_text": DEPLOT_HEADER_TEXT, **font_kwargs} if is_vqa else {}
    for name, image in unusual_images().items():
        expected = reference(image, return_tensors="np", **kwargs)
        actual = ours(image, return_tensors="np")
        assert actual["pixel_values"].shape == (1, max_patches, 2 + 3 * patch_size["height"] * patch_size["width"])
        np.testing.assert_array_equal(actual["pixel_values"], expected["flattened_patches"], err_msg=name)
        np.testing.assert_array_equal(actual["pixel_attention_mask"], expected["attention_mask"], err_msg=name)


@pytest.mark.skipif(
    not _NO_FONT_PATH, reason="transformers 4.57 lane: test_same_values_as_pix2struct_... with a header"
)
def test_header_canvas_equals_pix2structs_on_transformers_5():
    reference = pix2struct_image_processor(is_vqa=True)
    ours = ChartWizImageProcessor()
    font = bundled_font_path()
    for image in varied_images()[:7]:
        image = image.convert("RGB")
        # [channels, height, width] uint8: the header drawn by transformers' render_text and pasted above the image
        expected = reference.render_header(np.asarray(image).transpose(2, 0, 1), DEPLOT_HEADER_TEXT, font_path=font)
        actual = ours._with_header(image, DEPLOT_HEADER_TEXT, font, np.uint8)
        np.testing.assert_array_equal(actual.transpose(2, 0, 1), expected)


def test_korean_header_renders_with_the_bundled_font():
    from fontTools.ttLib import TTFont

    cmap = TTFont(bundled_font_path()).getBestCmap()
    header = "아래 차트의 데이터 표를 만들어 주세요:"
    assert all(ord(character) in cmap for character in header if not character.isspace())
    processor = ChartWizImageProcessor()
    korean = np.asarray(processor.rendered_header(header).convert("L"))
    other = np.asarray(processor.rendered_header("아래 차트의 값을 알려 주세요:").convert("L"))
    assert (korean < 128).sum() > 500, "the Hangul header should have ink"
    assert korean.shape != other.shape or not np.array_equal(korean, other)


def test_header_is_drawn_once_and_never_downloaded(monkeypatch):
    calls = []
    real_render_text = chartwiz_image_processing.render_text

    def counting_render_text(*args, **kwargs):
        calls.append(args)
        return real_render_text(*args, **kwargs)

    def no_download(*args, **kwargs):
        raise AssertionError("the header font must not be downloaded")

    monkeypatch.setattr(chartwiz_image_processing, "render_text", counting_render_text)
    # render_text downloads Arial when given no font: through `hf_hub_download` (transformers 4) or `hf_api()` (5).
    render_text_module = sys.modules[real_render_text.__module__]
    for name in ("hf_hub_download", "hf_api"):
        if hasattr(render_text_module, name):
            monkeypatch.setattr(render_text_module, name, no_download)
    chartwiz_image_processing._drawn_header.cache_clear()
    processor = ChartWizImageProcessor(max_patches=32)
    processor([draw_chart(300 + 10 * i, 200) for i in range(6)])
    processor([draw_chart(320, 240)])
    ChartWizImageProcessor(max_patches=16)([draw_chart(330, 240)])
    assert len(calls) == 1, "one drawing for every processor and width"
    cache = chartwiz_image_processing._drawn_header.cache_info()
    assert cache.currsize <= cache.maxsize == chartwiz_image_processing._HEADER_CACHE_SIZE


def test_font_travels_with_the_checkpoint(tmp_path, monkeypatch):
    processor = ChartWizImageProcessor(max_patches=32)
    processor.save_pretrained(tmp_path)
    assert processor.font_path is None, "saving does not change the processor"
    assert os.path.isfile(tmp_path / os.path.basename(bundled_font_path()))
    image = draw_chart()
    expected = processor(image)["pixel_values"][0]
    monkeypatch.setattr(chartwiz_image_processing, "bundled_font_path", lambda: None)
    loaded = ChartWizImageProcessor.from_pretrained(tmp_path)
    assert os.path.dirname(loaded.resolve_font_path()) == str(tmp_path)
    np.testing.assert_array_equal(loaded(image)["pixel_values"][0], expected)


def test_missing_font_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(chartwiz_image_processing, "bundled_font_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="font"):
        ChartWizImageProcessor()(draw_chart())


@pytest.mark.parametrize(
    "make_image",
    [
        lambda: draw_chart().convert("RGBA"),
        lambda: draw_chart().convert("L"),
        lambda: draw_chart().convert("CMYK"),
        lambda: draw_chart().convert("P"),
        lambda: draw_chart(4000, 50),
        pytest.param(lambda: draw_chart(50, 4000), marks=pytest.mark.slow, id="50x4000"),  # its header: seconds
        lambda: Image.new("RGB", (1, 1), "red"),
    ],
    ids=["rgba", "grayscale", "cmyk", "palette", "4000x50", "50x4000", "1x1"],
)
@pytest.mark.parametrize("is_vqa", [True, False])
def test_unusual_images_give_valid_patches(make_image, is_vqa):
    processor = ChartWizImageProcessor(max_patches=64, is_vqa=is_vqa)
    output = processor(make_image(), return_tensors="np")
    patches, mask = output["pixel_values"][0], output["pixel_attention_mask"][0]
    assert patches.shape == (64, 2 + 16 * 16 * 3)
    assert np.isfinite(patches).all()
    assert 1 <= mask.sum() <= 64
    rows, cols = patches[mask == 1, 0], patches[mask == 1, 1]
    assert rows.min() >= 1 and cols.min() >= 1 and rows.max() * cols.max() <= 64


def test_sixteen_bit_images_are_scaled_not_clipped():
    gradient = (np.linspace(0, 65535, 256)[None, :].repeat(64, axis=0)).astype(np.uint16)
    image16 = Image.fromarray(gradient)
    assert image16.mode.startswith("I;16")
    image8 = Image.fromarray((gradient / 257).round().astype(np.uint8))
    processor = ChartWizImageProcessor(max_patches=64, is_vqa=False)
    np.testing.assert_allclose(processor(image16)["pixel_values"][0], processor(image8)["pixel_values"][0], atol=1e-5)
    assert chartwiz_image_processing.to_rgb(image16).getextrema()[0] == (0, 255)


def test_header_text_override_and_count_check():
    processor = ChartWizImageProcessor(max_patches=32)
    images = [draw_chart(), draw_chart(200, 200)]
    default = processor(images)["pixel_values"]
    korean = processor(images, header_text="차트의 데이터를 표로 만들어 주세요:")["pixel_values"]
    assert not np.array_equal(default[0], korean[0])
    with pytest.raises(ValueError, match="2 images"):
        processor(images, header_text=["a", "b", "c"])


def test_truncated_file_is_reported_by_the_loader(tmp_path):
    from chartwiz.inference import load_chart_image

    buffer = io.BytesIO()
    draw_chart(640, 480).save(buffer, format="JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="truncated.jpg: cannot decode"):
        load_chart_image(path)
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="garbage.png: cannot decode"):
        load_chart_image(tmp_path / "garbage.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_chart_image(tmp_path / "missing.png")


def yield_at_every_bytecode_of(module):
    """A `threading.settrace` hook making threads give up the GIL at every bytecode of `module`'s own code."""

    def trace(frame, event, arg):
        if frame.f_code.co_filename != module.__file__:
            return None
        frame.f_trace_opcodes = True

        def each_bytecode(frame, event, arg):
            if event == "opcode":
                time.sleep(0)
            return each_bytecode

        return each_bytecode

    return trace


@pytest.mark.slow
def test_header_cache_is_safe_for_concurrent_threads():
    processor = ChartWizImageProcessor()
    font = processor.resolve_font_path()
    drawn = processor.rendered_header(DEPLOT_HEADER_TEXT, None, font)
    # More widths than the cache holds, so entries are evicted while other threads read and add them, and a thread
    # switch between any two steps of the processor's own code: a race in its bookkeeping cannot hide.
    widths = list(range(300, 300 + 2 * chartwiz_image_processing._HEADER_CACHE_SIZE)) * 2
    threading.settrace(yield_at_every_bytecode_of(chartwiz_image_processing))
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            headers = list(pool.map(lambda width: processor.rendered_header(DEPLOT_HEADER_TEXT, width, font), widths))
    finally:
        threading.settrace(None)
    assert [header.size for header in headers] == [(w, int(drawn.height * w / drawn.width)) for w in widths]


@pytest.mark.parametrize(
    "shape",
    [(10,), (5, 10, 7), (40, 40, 2), (4, 40, 40), (1, 2, 3, 40, 40)],
    ids=["1d", "7-channels", "2-channels", "4-channels-first", "5d"],
)
def test_arrays_of_the_wrong_shape_are_refused_naming_what_is_accepted(shape):
    processor = ChartWizImageProcessor(max_patches=16)
    with pytest.raises(ValueError, match=r"\(height, width, channels\) or \(channels, height, width\)") as error:
        processor(np.zeros(shape, dtype=np.uint8))
    assert str(shape) in str(error.value)
    for accepted in [(40, 40, 3), (3, 40, 40), (40, 40, 1), (2, 40, 40, 3)]:
        assert processor(np.zeros(accepted, dtype=np.uint8))["pixel_values"][0].shape == (16, 770)


def test_images_above_the_pixel_cap_are_refused_before_any_work():
    processor = ChartWizImageProcessor(max_patches=16)
    side = int(math.isqrt(chartwiz_image_processing.MAX_IMAGE_PIXELS)) + 1
    # A view of one pixel: no memory behind it, so only the size check can stop it cheaply.
    huge = np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (side, side, 3))
    with pytest.raises(ValueError, match=rf"Image 1 is {side} x {side} = .* megapixels, above the limit"):
        processor([np.zeros((40, 40, 3), dtype=np.uint8), huge])
    strict = ChartWizImageProcessor(max_patches=16, max_image_pixels=10_000, is_vqa=False)
    assert strict(np.zeros((100, 100, 3), dtype=np.uint8))["pixel_values"][0].shape == (16, 770)
    with pytest.raises(ValueError, match=r"Image 0 is 100 x 101 .*\(10,000 pixels\)"):
        strict(np.zeros((101, 100, 3), dtype=np.uint8))


def test_narrow_images_are_refused_when_the_header_would_scale_them_past_the_cap():
    # 20 x 8000 is 160,000 pixels, but under the 869-pixel-wide header it would become 869 x 347,600.
    narrow = np.zeros((8000, 20, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"Image 0 \(20 x 8000\) would be \d+ pixels wide under .* limit"):
        ChartWizImageProcessor(max_patches=16)(narrow)
    assert ChartWizImageProcessor(max_patches=16, is_vqa=False)(narrow)["pixel_values"][0].shape == (16, 770)


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` over the pixel data of a 1 x 1 image: opening it reads the size."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # After the 8-byte signature: IHDR's length, type (offset 12), width and height (16, 20), ..., CRC (29)
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("side", [9000, 20000], ids=["above-the-cap", "decompression-bomb"])
def test_loader_refuses_huge_images_from_the_header(tmp_path, side):
    from chartwiz.inference import load_chart_image

    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming_size(side, side))
    with pytest.raises(ValueError, match=r"huge\.png.* above the limit of"):
        load_chart_image(path)


def test_loader_turns_photos_upright_by_their_exif_orientation(tmp_path):
    from chartwiz.inference import load_chart_image

    chart = draw_chart(320, 240)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned, the picture must be rotated 90 degrees clockwise
    chart.save(tmp_path / "photo.png", exif=exif)
    loaded = load_chart_image(tmp_path / "photo.png")
    assert loaded.size == (240, 320)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(chart.transpose(Image.Transpose.ROTATE_270)))
    chart.save(tmp_path / "upright.png")
    np.testing.assert_array_equal(np.asarray(load_chart_image(tmp_path / "upright.png")), np.asarray(chart))
