"""Varied synthetic chart images for the benchmarks, rendered in memory."""

import io

from PIL import Image

from dataset_builder.synth import make_chart, render_chart


SIZES = [(640, 480), (800, 600), (1024, 768), (1200, 800), (600, 900), (1400, 600), (960, 540), (720, 720)]


def chart_images(count: int = 48, seed: int = 0) -> list[Image.Image]:
    """`count` charts cycling through all ten chart types and eight sizes."""
    images = []
    for index in range(count):
        buffer = io.BytesIO()
        render_chart(make_chart(index, seed, 0.1), buffer, size=SIZES[index % len(SIZES)])
        buffer.seek(0)
        image = Image.open(buffer)
        image.load()
        images.append(image)
    return images
