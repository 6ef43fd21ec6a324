"""Uploaded files as chart images, with the demo's limits: file size, image pixels, PDF pages."""

import io
import warnings

from PIL import Image, UnidentifiedImageError

from ..pdf import crop_fraction, is_pdf


# Server-side limits of the demo (also passed to Streamlit as server.maxUploadSize by `chartwiz demo`).
MAX_UPLOAD_MB = 20
MAX_IMAGE_PIXELS = 40_000_000
MAX_PDF_PAGES = 50
IMAGE_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "gif")


def check_upload_size(data: bytes) -> None:
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        raise ValueError(f"The file is {len(data) / 2**20:.1f} MB; at most {MAX_UPLOAD_MB} MB is accepted.")


def open_chart_image(data: bytes) -> Image.Image:
    """
    The uploaded bytes as an RGB image (transparency on white). Refuses what is not an image and decompression
    bombs: the pixel count is checked from the header, before anything is decoded.
    """
    check_upload_size(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ValueError(
                        f"The image is {image.width}x{image.height} pixels; at most {MAX_IMAGE_PIXELS // 1_000_000} "
                        "million pixels are accepted."
                    )
                image.load()
                if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                    image = image.convert("RGBA")
                    background = Image.new("RGBA", image.size, "white")
                    return Image.alpha_composite(background, image).convert("RGB")
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"The image is too large to open safely ({error}).") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"The file is not an image that can be read ({error}).") from None


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
