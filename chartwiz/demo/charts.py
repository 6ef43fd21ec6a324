"""Uploaded files as chart images, with the demo's limits: file size, image pixels, PDF pages."""

from PIL import Image

from chartwiz.errors import ChartWizValueError
from chartwiz.inference.images import load_chart_image
from chartwiz.inference.pdf import crop_fraction, is_pdf


# Server-side limits of the demo (also passed to Streamlit as server.maxUploadSize by `chartwiz demo`).
MAX_UPLOAD_MB = 20
MAX_IMAGE_PIXELS = 40_000_000
MAX_PDF_PAGES = 50
IMAGE_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "gif")


def check_upload_size(data: bytes) -> None:
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        raise ChartWizValueError(f"The file is {len(data) / 2**20:.1f} MB; at most {MAX_UPLOAD_MB} MB is accepted.")


def open_chart_image(data: bytes) -> Image.Image:
    """
    The uploaded bytes as the chart the model is shown, read as every entry point reads images (`load_chart_image`:
    upright by EXIF, transparency on white), within the demo's limits: file size, and pixels from the header.
    """
    check_upload_size(data)
    return load_chart_image(data, max_pixels=MAX_IMAGE_PIXELS, name="The uploaded image")


__all__ = [
    "IMAGE_TYPES",
    "MAX_IMAGE_PIXELS",
    "MAX_PDF_PAGES",
    "MAX_UPLOAD_MB",
    "check_upload_size",
    "crop_fraction",
    "is_pdf",
    "open_chart_image",
]
