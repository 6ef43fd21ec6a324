"""Chart images read one way for every entry point: size checked before decoding, upright, transparency on white."""

import io
import os
from typing import Optional, Union

from PIL import Image, ImageOps, UnidentifiedImageError

from chartwiz.errors import ChartWizFileNotFoundError, ChartWizValueError
from chartwiz_hf.image_processing_chartwiz import MAX_IMAGE_PIXELS, check_image_size, to_rgb


ImageSource = Union[str, os.PathLike, bytes, bytearray]


def load_chart_image(
    source: ImageSource, max_pixels: int = MAX_IMAGE_PIXELS, name: Optional[str] = None
) -> Image.Image:
    """
    Opens and fully decodes a chart image (a file, or its bytes) as the model is shown it: an RGB image, upright by
    the EXIF orientation a camera or phone records, with transparent pixels on white (a transparent PNG often stores
    them as black), and 16-bit images scaled rather than clipped.

    Raises an error naming the file (or `name`) if it is missing, corrupt or truncated, or if it has more than
    `max_pixels` pixels (8192 x 8192 by default), which is checked from the file's header before decoding.
    """
    from_bytes = isinstance(source, (bytes, bytearray))
    name = name or ("the image" if from_bytes else os.fspath(source))
    try:
        image = Image.open(io.BytesIO(bytes(source)) if from_bytes else source)
    except FileNotFoundError as error:
        raise ChartWizFileNotFoundError(f"{name}: no such image file") from error
    except Image.DecompressionBombError as error:
        raise ChartWizValueError(f"{name}: the image is above the limit of {max_pixels:,} pixels ({error})") from error
    except UnidentifiedImageError as error:
        # PIL's message names the buffer it read (`<_io.BytesIO object at 0x...>`), which tells a user nothing.
        raise ChartWizValueError(
            f"{name}: cannot decode the image: it is not a PNG, JPEG or other image file, whatever its name says"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ChartWizValueError(f"{name}: cannot decode the image ({error})") from error
    with image:
        try:
            check_image_size(image.width, image.height, max_pixels, name=name)
        except ValueError as error:  # the image processor's own check, which stays a plain ValueError in remote code
            raise ChartWizValueError(str(error)) from None
        try:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError) as error:
            raise ChartWizValueError(f"{name}: cannot decode the image ({error})") from error


__all__ = ["ImageSource", "load_chart_image"]
