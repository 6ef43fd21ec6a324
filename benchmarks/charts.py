"""Varied synthetic chart images for the benchmarks, rendered in memory."""

import io

from PIL import Image

from dataset_builder.synth import make_chart, render_chart


# Eight questions of the kinds the datasets hold: values, tables, descriptions and summaries.
QUESTIONS = [
    "가장 큰 값은 무엇인가요?",
    "이 차트를 테이블 정보로 변경해줘.",
    "가장 작은 항목은?",
    "두 항목의 차이는 얼마인가요?",
    "이 차트의 내용을 요약해줘.",
    "합계는 얼마인가요?",
    "2021년 값은?",
    "이 차트를 자세히 설명해줘.",
]

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
