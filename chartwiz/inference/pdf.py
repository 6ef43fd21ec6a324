"""PDF pages as chart images, rendered with PDFium (pypdfium2: no system poppler), within size limits."""

import os
import threading
from typing import Union

from PIL import Image

from chartwiz.errors import ChartWizFileNotFoundError, ChartWizValueError


# Enough for any report; a bigger PDF is refused before a page is rendered.
MAX_PAGES = 300
# A page is rendered at `dpi` but never above this many pixels (a huge page size must not exhaust memory).
MAX_PAGE_PIXELS = 16_000_000
DEFAULT_DPI = 150

# PDFium is not thread-safe, and the demo renders from several sessions' threads.
_PDFIUM_LOCK = threading.Lock()

PdfSource = Union[str, os.PathLike, bytes]


def is_pdf(source: PdfSource) -> bool:
    """Whether a path or bytes hold a PDF (by its `%PDF-` signature, not the file name)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:1024]).lstrip().startswith(b"%PDF-")
    try:
        with open(source, "rb") as file:
            return file.read(1024).lstrip().startswith(b"%PDF-")
    except OSError:
        return False


def _name(source: PdfSource) -> str:
    return "the PDF" if isinstance(source, (bytes, bytearray)) else str(source)


def _open(source: PdfSource, max_pages: int):
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise ChartWizValueError(
            "Reading PDFs needs pypdfium2 (a dependency of chartwiz): pip install pypdfium2"
        ) from None

    if not isinstance(source, (bytes, bytearray)) and not os.path.isfile(source):
        raise ChartWizFileNotFoundError(f"{source}: no such PDF file")
    try:
        document = pdfium.PdfDocument(bytes(source) if isinstance(source, bytearray) else source)
    except pdfium.PdfiumError as error:
        if getattr(error, "err_code", None) == pdfium.raw.FPDF_ERR_SUCCESS:
            # PDFium refuses a document with no page while reporting no error ("PDFium: Success").
            raise ChartWizValueError(
                f"{_name(source)} has no pages (PDFium finds no page in it): there is no chart to show"
            ) from None
        raise ChartWizValueError(
            f"{_name(source)}: cannot open the PDF ({error}); is it damaged or password-protected?"
        ) from None
    if len(document) > max_pages:
        count = len(document)
        document.close()
        raise ChartWizValueError(f"{_name(source)} has {count} pages; at most {max_pages} are accepted")
    if len(document) == 0:
        document.close()
        raise ChartWizValueError(f"{_name(source)} has no pages")
    return document


def pdf_page_count(source: PdfSource, max_pages: int = MAX_PAGES) -> int:
    """The number of pages; raises `ValueError` for a file that is not a readable PDF or has over `max_pages`."""
    with _PDFIUM_LOCK:
        document = _open(source, max_pages)
        try:
            return len(document)
        finally:
            document.close()


def _render(document, index: int, dpi: float, max_pixels: int) -> Image.Image:
    page = document[index]
    try:
        width, height = page.get_size()  # in points, 1/72 inch
        scale = dpi / 72
        if width * height * scale * scale > max_pixels:
            scale = (max_pixels / (width * height)) ** 0.5
        return page.render(scale=scale).to_pil().convert("RGB")
    finally:
        page.close()


def render_pdf_page(
    source: PdfSource,
    page: int,
    dpi: float = DEFAULT_DPI,
    max_pixels: int = MAX_PAGE_PIXELS,
    max_pages: int = MAX_PAGES,
) -> Image.Image:
    """
    One page of a PDF as an RGB image.

    Args:
        source (`str`, `os.PathLike` or `bytes`): the PDF file or its bytes.
        page (`int`): 1-based page number.
        dpi (`float`, defaults to 150): rendering resolution; charts stay sharp after a crop.
        max_pixels (`int`, defaults to 16M): a larger page is rendered at a lower resolution to fit.
        max_pages (`int`, defaults to 300): longer PDFs are refused.
    """
    with _PDFIUM_LOCK:
        document = _open(source, max_pages)
        try:
            if not 1 <= page <= len(document):
                raise ChartWizValueError(f"{_name(source)} has {len(document)} pages; there is no page {page}")
            return _render(document, page - 1, dpi, max_pixels)
        finally:
            document.close()


def render_pdf_thumbnails(source: PdfSource, width: int = 160, max_pages: int = MAX_PAGES) -> list[Image.Image]:
    """Every page as a small image `width` pixels wide, to pick a page from."""
    with _PDFIUM_LOCK:
        document = _open(source, max_pages)
        try:
            thumbnails = []
            for index in range(len(document)):
                page_width, _ = document[index].get_size()
                thumbnails.append(_render(document, index, 72 * width / max(page_width, 1), width * width * 4))
            return thumbnails
        finally:
            document.close()


def crop_fraction(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """
    The part of `image` inside `box` = (left, top, right, bottom) given as fractions of its width and height
    (0-1), e.g. `(0, 0.5, 1, 1)` for the lower half.
    """
    left, top, right, bottom = box
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise ChartWizValueError(
            f"A crop box is (left, top, right, bottom) with 0 <= left < right <= 1 and the same for top "
            f"and bottom, got {box}"
        )
    width, height = image.size
    pixels = (round(left * width), round(top * height), round(right * width), round(bottom * height))
    if pixels[2] - pixels[0] < 1 or pixels[3] - pixels[1] < 1:
        raise ChartWizValueError(f"The crop box {box} leaves no pixel of the {width}x{height} image")
    return image.crop(pixels)


__all__ = [
    "DEFAULT_DPI",
    "MAX_PAGES",
    "MAX_PAGE_PIXELS",
    "crop_fraction",
    "is_pdf",
    "pdf_page_count",
    "render_pdf_page",
    "render_pdf_thumbnails",
]
