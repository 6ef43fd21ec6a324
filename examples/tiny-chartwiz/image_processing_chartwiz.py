"""Image processor for ChartWiz: Pix2Struct's variable-resolution patches with an offline, cached DePlot header."""

import functools
import math
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_transforms import to_pil_image
from transformers.image_utils import ImageInput, make_flat_list_of_images, valid_images
from transformers.utils import TensorType, cached_file


try:
    # transformers 5: the PIL Pix2Struct module; its `image_processing_pix2struct` imports torchvision.
    from transformers.models.pix2struct.image_processing_pil_pix2struct import render_text
except ImportError:  # transformers 4
    from transformers.models.pix2struct.image_processing_pix2struct import render_text


DEPLOT_HEADER_TEXT = "Generate underlying data table of the figure below:"
DEFAULT_FONT_FILENAME = "NanumGothic.ttf"
# Charts above 8192 x 8192 pixels are refused: processing one takes about 25 bytes per pixel (1.6 GB at the cap),
# and far larger files are usually decompression bombs rather than charts.
MAX_IMAGE_PIXELS = 8192 * 8192
_HEADER_CACHE_SIZE = 256
_ACCEPTED_ARRAYS = (
    "images are PIL images or arrays of shape (height, width, channels) or (channels, height, width) with 1 or 3 "
    "channels, one by one, in a list or as a 4D batch (convert other arrays with PIL.Image.fromarray)."
)
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision", "subfolder")
_HIGH_BIT_DEPTH_RANGES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


_thread_buffers = threading.local()
_LARGEST_KEPT_BUFFER = 16 << 20  # elements: charts up to about 2300 x 2300 reuse their buffers


def scratch_array(name: str, shape: tuple, dtype=np.float32) -> np.ndarray:
    """
    A reusable per-thread array of `shape`: a fresh ~10 MB array per image costs more in page faults than the
    arithmetic done in it. Its contents are undefined, and it is valid until the same thread asks for `name` again.
    """
    size = math.prod(shape)
    if size > _LARGEST_KEPT_BUFFER:
        return np.empty(shape, dtype=dtype)
    buffer = getattr(_thread_buffers, name, None)
    if buffer is None or buffer.size < size or buffer.dtype != dtype:
        buffer = np.empty(size, dtype=dtype)
        setattr(_thread_buffers, name, buffer)
    return buffer[:size].reshape(shape)


def bundled_font_path() -> Optional[str]:
    """Path of the OFL Hangul font shipped with the `chartwiz_hf` package, or None outside of it."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fonts", DEFAULT_FONT_FILENAME)
    return path if os.path.isfile(path) else None


def to_rgb(image: Image.Image) -> Image.Image:
    """
    RGB like Pix2Struct's `convert_to_rgb`, except that transparent pixels are composited on white (a transparent PNG
    often stores them as black; transformers 5 composites too) and 16-bit and float images are scaled to 8 bits
    instead of clipped.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    if image.mode in _HIGH_BIT_DEPTH_RANGES or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = _HIGH_BIT_DEPTH_RANGES.get(image.mode) or max(float(values.max()), 1.0)
        if image.mode in ("I", "F") and top <= 255.0:
            top = 255.0
        scaled = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    return image.convert("RGB")


def check_image_size(width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS, name: str = "The image") -> None:
    """Raises `ValueError` naming `name` when a `width` x `height` image is empty or has more than `max_pixels`."""
    if width < 1 or height < 1:
        raise ValueError(f"{name} has an empty size ({width} x {height}).")
    if width * height > max_pixels:
        raise ValueError(
            f"{name} is {width} x {height} = {width * height / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.1f} megapixels ({max_pixels:,} pixels); scale it down first."
        )


def _image_shape(image, index: int) -> tuple[int, int]:
    """(width, height) of a PIL image or an array image; raises `ValueError` naming the accepted array shapes."""
    if isinstance(image, Image.Image):
        return image.size
    shape = tuple(image.shape)
    # The channel axis as transformers infers it: first if it can be, else last.
    if len(shape) == 3 and shape[0] in (1, 3):
        return shape[2], shape[1]
    if len(shape) == 3 and shape[-1] in (1, 3):
        return shape[1], shape[0]
    raise ValueError(f"Image {index} is an array of shape {shape}; {_ACCEPTED_ARRAYS}")


@functools.lru_cache(maxsize=_HEADER_CACHE_SIZE)
def _drawn_header(text: str, font_path: str, width: Optional[int]) -> Image.Image:
    # One cache for every processor and thread: lru_cache is thread-safe, its keys and values are never mutated,
    # and it keeps the most recently used widths (they vary with the images) within a fixed size.
    if width is None:
        return render_text(text, font_path=font_path)
    drawn = _drawn_header(text, font_path, None)
    # Same rounding as Pix2Struct's render_header
    height = int(drawn.height * (width / drawn.width))
    return drawn.resize((width, height))


def find_checkpoint_file(pretrained_model_name_or_path, filename: str, **kwargs) -> str:
    """`filename` itself if it exists, else the file of that name in a local or Hub checkpoint, else `filename`."""
    if os.path.isabs(filename) or os.path.isfile(filename):
        return filename
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}
    resolved = cached_file(
        pretrained_model_name_or_path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )
    return resolved or filename


class ChartWizImageProcessor(BaseImageProcessor):
    r"""
    Constructs a ChartWiz image processor: transformers' 4.x `Pix2StructImageProcessor` with the same arguments and
    the same output values for the same font, that renders the DePlot header offline with a bundled OFL font
    covering Hangul, reuses the rendered header across images, and names its outputs for
    [`ChartWizForConditionalGeneration`]. It is written on `BaseImageProcessor` alone, with PIL, numpy and torch,
    so it runs unchanged on transformers 4 and 5 (whose Pix2Struct processors are built differently) and needs no
    torchvision.

    Args:
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Whether to convert images to RGB (16-bit images are scaled, not clipped).
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to standardize each image by its own mean and standard deviation, as Pix2Struct does.
        patch_size (`dict[str, int]`, *optional*, defaults to `{"height": 16, "width": 16}`):
            The patch size.
        max_patches (`int`, *optional*, defaults to 512):
            Number of patches per image (padded with zeros), which is also the number of image tokens.
        is_vqa (`bool`, *optional*, defaults to `True`):
            Whether to render `header_text` above the image, as DePlot expects.
        header_text (`str`, *optional*, defaults to DePlot's `"Generate underlying data table of the figure below:"`):
            The default header; a `header_text` passed to `preprocess` overrides it.
        font_path (`str`, *optional*):
            A TrueType font for the header. Defaults to the bundled NanumGothic (SIL OFL 1.1); a relative name is
            resolved inside the checkpoint the processor was loaded from, where `save_pretrained` copies the font.
        num_workers (`int`, *optional*, defaults to 2):
            Threads used to process the images of one call (the heavy steps release the GIL).
        max_image_pixels (`int`, *optional*, defaults to `8192 * 8192`):
            Images with more pixels are refused with a `ValueError` instead of taking gigabytes of memory.
    """

    model_input_names = ["pixel_values", "pixel_attention_mask"]

    def __init__(
        self,
        do_convert_rgb: bool = True,
        do_normalize: bool = True,
        patch_size: Optional[dict[str, int]] = None,
        max_patches: int = 512,
        is_vqa: bool = True,
        header_text: Optional[str] = DEPLOT_HEADER_TEXT,
        font_path: Optional[str] = None,
        num_workers: int = 2,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.do_convert_rgb = do_convert_rgb
        self.do_normalize = do_normalize
        self.patch_size = dict(patch_size) if patch_size is not None else {"height": 16, "width": 16}
        self.max_patches = max_patches
        self.is_vqa = is_vqa
        self.header_text = header_text
        self.font_path = font_path
        self.num_workers = num_workers
        self.max_image_pixels = max_image_pixels

    @classmethod
    def get_image_processor_dict(cls, pretrained_model_name_or_path, **kwargs):
        image_processor_dict, kwargs = super().get_image_processor_dict(pretrained_model_name_or_path, **kwargs)
        font_path = image_processor_dict.get("font_path")
        if font_path:
            image_processor_dict["font_path"] = find_checkpoint_file(
                pretrained_model_name_or_path, font_path, **kwargs
            )
        return image_processor_dict, kwargs

    def locate_font(self, pretrained_model_name_or_path, **kwargs):
        """Points a relative `font_path` at the font saved in the checkpoint this processor came from."""
        if self.font_path:
            self.font_path = find_checkpoint_file(pretrained_model_name_or_path, self.font_path, **kwargs)

    def to_dict(self):
        output = super().to_dict()
        # transformers 5 leaves out attributes that are None; no header (`is_vqa=False`) must not reload as DePlot's.
        output["header_text"] = self.header_text
        # Saved checkpoints carry the font beside the config, so store its file name only.
        font = self.font_path or bundled_font_path()
        output["font_path"] = os.path.basename(font) if font else None
        return output

    def save_pretrained(self, save_directory: Union[str, os.PathLike], push_to_hub: bool = False, **kwargs):
        self.save_font(save_directory)
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def save_font(self, save_directory: Union[str, os.PathLike]) -> None:
        """Copies the header font into `save_directory`, where `font_path`'s file name finds it when loading."""
        os.makedirs(save_directory, exist_ok=True)
        font = self.resolve_font_path()
        if font is not None:
            target = os.path.join(save_directory, os.path.basename(font))
            if not os.path.exists(target) or not os.path.samefile(font, target):
                shutil.copyfile(font, target)

    def resolve_font_path(self) -> Optional[str]:
        """The font file the header is drawn with."""
        if self.font_path is None:
            return bundled_font_path()
        if os.path.isfile(self.font_path):
            return self.font_path
        bundled = bundled_font_path()
        if bundled is not None and os.path.basename(bundled) == os.path.basename(self.font_path):
            return bundled
        raise FileNotFoundError(
            f"Header font {self.font_path!r} not found. Load the processor with AutoProcessor.from_pretrained or "
            "ChartWizImageProcessor.from_pretrained (they fetch the font saved with the checkpoint), or pass "
            "font_path= a TrueType file that covers Hangul."
        )

    def rendered_header(self, text: str, width: Optional[int] = None, font_path: Optional[str] = None) -> Image.Image:
        """
        The header image drawn by transformers' `render_text` (resized to `width` if given), cached per text, font
        and width in one cache shared by all processors and threads. The image is shared: do not modify it.
        """
        font_path = font_path or self.resolve_font_path()
        if font_path is None:
            raise FileNotFoundError(
                "No font to render the DePlot header: this copy of the image processor has no bundled font; pass "
                "font_path= a TrueType file."
            )
        return _drawn_header(text, font_path, width)

    def _check_size(self, index: int, width: int, height: int, header_text: Optional[str], font_path: Optional[str]):
        check_image_size(width, height, self.max_image_pixels, name=f"Image {index}")
        if header_text is None:
            return
        # Under the header, a narrow image is scaled up to the header's width: a 10 x 10000 image would become
        # 869 x 869000 pixels. What is processed is that canvas, so it is what the limit bounds.
        header = self.rendered_header(header_text, None, font_path)
        new_width = max(header.width, width)
        canvas = new_width * (int(height * new_width / width) + int(header.height * new_width / header.width))
        if canvas > self.max_image_pixels:
            advice = "pad it to a wider shape" if width < header.width else "scale it down"
            raise ValueError(
                f"Image {index} ({width} x {height}) would be {new_width} pixels wide under the {header.width}-pixel "
                f"header, {canvas / 1e6:.1f} megapixels in all, above the limit of {self.max_image_pixels / 1e6:.1f} "
                f"megapixels ({self.max_image_pixels:,} pixels); {advice} first."
            )

    def _with_header(self, image: Image.Image, header_text: str, font_path: Optional[str], dtype) -> np.ndarray:
        # Same geometry as Pix2Struct's render_header, without redrawing the header or pasting into a canvas.
        header = self.rendered_header(header_text, None, font_path)
        new_width = max(header.width, image.width)
        new_height = int(image.height * (new_width / image.width))
        header = self.rendered_header(header_text, new_width, font_path)
        if image.size != (new_width, new_height):
            image = image.resize((new_width, new_height))
        # [header_height + height, width, 3], written once in the dtype the next step needs
        pixels = scratch_array("pixels", (header.height + new_height, new_width, 3), dtype)
        pixels[: header.height] = np.asarray(header)
        pixels[header.height :] = np.asarray(image)
        return pixels

    @staticmethod
    def _standardize(image: np.ndarray) -> np.ndarray:
        """
        Pix2Struct's per-image standardization, `(image - mean) / max(std, 1 / sqrt(size))` over a float32 image,
        with the float32 operations numpy's `mean` and `std` perform, sharing their sum and reusing the buffers.
        """
        count = image.size
        # [1, 1, 1] float32: the mean as np.mean and np.std compute it
        mean = np.true_divide(np.add.reduce(image, axis=None, keepdims=True), count, casting="unsafe")
        centered = np.subtract(image, mean, out=image)
        squared = np.square(centered, out=scratch_array("squared", image.shape))
        variance = np.add.reduce(squared, axis=None)
        std = np.sqrt(variance.dtype.type(variance / count))
        centered /= np.float32(max(std, 1.0 / math.sqrt(count)))
        return centered

    @staticmethod
    def _flattened_patches(image: np.ndarray, max_patches: int, patch_size: dict) -> np.ndarray:
        """
        Pix2Struct's `extract_flattened_patches` for an HWC image (float32, or uint8 when not normalized, which torch
        interpolates with its own rounding, as Pix2Struct's does), the layout written directly.
        """
        patch_height, patch_width = patch_size["height"], patch_size["width"]
        height, width, channels = image.shape
        scale = math.sqrt(max_patches * (patch_height / height) * (patch_width / width))
        rows = max(min(math.floor(scale * height / patch_height), max_patches), 1)
        columns = max(min(math.floor(scale * width / patch_width), max_patches), 1)
        # The same strided (channels-last) tensor transformers interpolates, so the same kernel and values.
        tensor = torch.from_numpy(image.transpose(2, 0, 1)).unsqueeze(0)
        resized = torch.nn.functional.interpolate(
            tensor,
            size=(rows * patch_height, columns * patch_width),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        depth = patch_height * patch_width * channels
        result = np.zeros((max_patches, 2 + depth), dtype=np.float32)
        result[: rows * columns, 0] = np.repeat(np.arange(1, rows + 1, dtype=np.float32), columns)
        result[: rows * columns, 1] = np.tile(np.arange(1, columns + 1, dtype=np.float32), rows)
        # [channels, rows, patch_h, columns, patch_w] copied once into its place in the result, seen as
        # [rows, columns, patch_h, patch_w, channels]: a view, since only the axes of a strided 2D slice are split
        target = result[: rows * columns, 2:].reshape(rows, columns, patch_height, patch_width, channels)
        source = resized[0].numpy().reshape(channels, rows, patch_height, columns, patch_width)
        target[...] = source.transpose(1, 3, 2, 4, 0)
        return result

    def _process_one(self, image, header_text, do_convert_rgb, do_normalize, max_patches, patch_size, font_path):
        if not isinstance(image, Image.Image):
            image = to_pil_image(image)
        if do_convert_rgb:
            image = to_rgb(image)
        dtype = np.float32 if do_normalize else np.uint8
        if header_text is not None:
            pixels = self._with_header(image, header_text, font_path, dtype)
        elif do_normalize:
            pixels = scratch_array("pixels", (image.height, image.width, 3))
            pixels[...] = np.asarray(image)
        else:
            pixels = np.asarray(image)
        if do_normalize:
            pixels = self._standardize(pixels)
        patches = self._flattened_patches(pixels, max_patches, patch_size)
        return patches, (patches.sum(axis=-1) != 0).astype(np.float32)

    def preprocess(
        self,
        images: ImageInput,
        header_text: Optional[Union[str, list[str]]] = None,
        do_convert_rgb: Optional[bool] = None,
        do_normalize: Optional[bool] = None,
        max_patches: Optional[int] = None,
        patch_size: Optional[dict[str, int]] = None,
        return_tensors: Optional[Union[str, TensorType]] = None,
        font_path: Optional[str] = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Turns one image or a batch into `pixel_values` (`(num_images, max_patches, 2 + 3 * patch_h * patch_w)`
        flattened patches with row and column ids) and `pixel_attention_mask` (`(num_images, max_patches)`).

        Args:
            images (`ImageInput`): a PIL image, array or tensor, or a (nested) list of them.
            header_text (`str` or `list[str]`, *optional*): header(s) to render when `is_vqa`; defaults to the
                processor's `header_text`.
            font_path (`str`, *optional*): overrides the processor's font for this call.
            Other arguments: as transformers' `Pix2StructImageProcessor.preprocess`.
        """
        do_normalize = do_normalize if do_normalize is not None else self.do_normalize
        do_convert_rgb = do_convert_rgb if do_convert_rgb is not None else self.do_convert_rgb
        patch_size = patch_size if patch_size is not None else self.patch_size
        max_patches = max_patches if max_patches is not None else self.max_patches
        if kwargs.get("data_format") is not None:
            raise ValueError("data_format is not accepted: the outputs are flattened patches.")

        try:
            images = make_flat_list_of_images(images)
        except ValueError:
            # transformers' message prints the whole array; say what is accepted instead.
            shape = f"an array of shape {tuple(images.shape)}" if hasattr(images, "shape") else "this input"
            raise ValueError(f"Cannot read images from {shape}; {_ACCEPTED_ARRAYS}") from None
        if not valid_images(images):
            raise ValueError("Invalid image type: expected PIL.Image.Image, numpy.ndarray or torch.Tensor images.")
        header_texts = [None] * len(images)
        if self.is_vqa:
            header_text = header_text if header_text is not None else self.header_text
            if header_text is None:
                raise ValueError("A header text must be provided for VQA models (is_vqa=True).")
            header_texts = [header_text] * len(images) if isinstance(header_text, str) else list(header_text)
            if len(header_texts) != len(images):
                raise ValueError(f"Got {len(header_texts)} header texts for {len(images)} images.")
            font_path = font_path or self.resolve_font_path()
            for text in dict.fromkeys(header_texts):
                # Drawn once here so that the worker threads find it cached instead of each drawing it (the cache
                # itself is safe either way).
                self.rendered_header(text, None, font_path)
        for index, image in enumerate(images):
            # Checked before any pixel is touched: an oversized image would take gigabytes in the steps below.
            self._check_size(index, *_image_shape(image, index), header_texts[index], font_path)

        def process(index):
            return self._process_one(
                images[index], header_texts[index], do_convert_rgb, do_normalize, max_patches, patch_size, font_path
            )

        if self.num_workers > 1 and len(images) > 1:
            with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
                results = list(pool.map(process, range(len(images))))
        else:
            results = [process(index) for index in range(len(images))]

        return BatchFeature(
            data={
                "pixel_values": [patches for patches, _ in results],
                "pixel_attention_mask": [m for _, m in results],
            },
            tensor_type=return_tensors,
        )


__all__ = ["MAX_IMAGE_PIXELS", "ChartWizImageProcessor", "check_image_size"]
