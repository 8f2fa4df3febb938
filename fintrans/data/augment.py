"""Per-example training augmentations, keyed on (seed, epoch, index) so a resumed run sees the same examples.

The pipeline (fintrans.data.pipeline) gives example `index` of training epoch `epoch` the generator
`np.random.default_rng([seed, epoch, index])`: the augmentation is a pure function of those three numbers,
not of the order in which batches were produced, so restoring the iterator's state reproduces it exactly,
and every epoch augments an example differently. Evaluation batches are never augmented, and only the
train split is.

Image augmentations (images [H, W, C] under the batch key "inputs"), named in the data config's `augment`:
  none                 no augmentation (the default: existing configs are unchanged)
  crop                 random crop of the image padded by `crop_padding` on each side ("reflect"/"constant")
  flip                 horizontal flip with probability 1/2
  crop_flip            crop, then flip
  resized_crop         random resized crop (area 8%..100%, aspect 3/4..4/3, bilinear back to H x W)
  resized_crop_flip    resized crop, then flip
A dataset offers them by adding `IMAGE_FIELDS` to its config fields and `image_augmentation` as its
spec's `augmentation` (digits does).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fintrans.data.spec import Field
from fintrans.registry import Registry

PAD_MODES = ("reflect", "constant")

# augmentation name -> the per-image operations it applies, in order
AUGMENTATIONS: Registry[tuple[str, ...]] = Registry("augmentation")
for _name, _ops in (("none", ()), ("crop", ("crop",)), ("flip", ("flip",)), ("crop_flip", ("crop", "flip")),
                    ("resized_crop", ("resized_crop",)), ("resized_crop_flip", ("resized_crop", "flip"))):
    AUGMENTATIONS.register(_name, _ops)


def crop_window(image: np.ndarray, top: int, left: int, padding: int, mode: str = "reflect") -> np.ndarray:
    """np.pad(image, padding, mode)[top:top + H, left:left + W] for images [H, W, C], without padding it.

    (np.pad alone costs ~70 us on an 8x8 image; gathering the rows and columns costs a few.)"""
    h, w = image.shape[:2]
    rows, cols = np.arange(h) + top - padding, np.arange(w) + left - padding
    if mode == "constant":
        out = np.zeros_like(image)
        r, c = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
        out[np.ix_(r, c)] = image[np.ix_(rows[r], cols[c])]
        return out
    if padding >= min(h, w):  # reflections of reflections: leave them to numpy
        return np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=mode)[top:top + h, left:left + w]
    reflect = lambda i, n: np.where(np.abs(i) >= n, 2 * (n - 1) - np.abs(i), np.abs(i))  # noqa: E731 (edge once)
    return image[np.ix_(reflect(rows, h), reflect(cols, w))]


def random_crop(image: np.ndarray, rng: np.random.Generator, padding: int, mode: str = "reflect") -> np.ndarray:
    """The image [H, W, C] padded by `padding` on each side, then cropped back to H x W at a random offset."""
    if padding == 0:
        return image
    top, left = (rng.random(2) * (2 * padding + 1)).astype(int)  # (rng.integers costs ~20 us a call)
    return crop_window(image, int(top), int(left), padding, mode)


def horizontal_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image mirrored left-right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def _resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of [h, w, C] to [height, width, C] (pixel centres aligned, edges clamped)."""
    h, w = image.shape[:2]
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = image.astype(np.float64)
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bottom = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(image.dtype)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Inception-style crop: a box of a random area fraction and aspect ratio, resized back to H x W.

    Ten tries for a box that fits, else the whole image (as torchvision's fallback, simplified)."""
    h, w = image.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
        if 0 < ch <= h and 0 < cw <= w:
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            return _resize_bilinear(image[top:top + ch, left:left + cw], h, w)
    return image


class ImageAugmentation:
    """Batch-level callable for the pipeline: augment(batch, rngs) with one generator per example."""

    def __init__(self, ops: Sequence[str], *, key: str = "inputs", crop_padding: int = 0, pad_mode: str = "reflect"):
        self.ops, self.key, self.crop_padding, self.pad_mode = tuple(ops), key, crop_padding, pad_mode

    def _one(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for op in self.ops:
            if op == "crop":
                image = random_crop(image, rng, self.crop_padding, self.pad_mode)
            elif op == "flip":
                image = horizontal_flip(image, rng)
            else:
                image = random_resized_crop(image, rng)
        return image

    def __call__(self, batch: dict[str, np.ndarray], rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        images = batch[self.key]
        batch[self.key] = np.stack([self._one(image, rng) for image, rng in zip(images, rngs)]) if len(images) \
            else images
        return batch

    def __repr__(self) -> str:
        return f"ImageAugmentation({self.ops}, crop_padding={self.crop_padding}, pad_mode={self.pad_mode!r})"


IMAGE_FIELDS = {
    "augment": Field(f"training augmentation of the train split: one of {list(AUGMENTATIONS.names())}",
                         kind=str, choices=AUGMENTATIONS.names(), default="none"),
    "crop_padding": Field("pixels of padding on each side before a random crop", minimum=0, default=1),
    "pad_mode": Field(f"padding of the random crop: one of {list(PAD_MODES)}", kind=str, choices=PAD_MODES,
                      default="reflect"),
}


def image_augmentation(fields: Mapping[str, Any]) -> Callable | None:
    """The ImageAugmentation of validated data config fields (IMAGE_FIELDS), or None for 'none'."""
    ops = AUGMENTATIONS.get(fields["augment"])
    if not ops:
        return None
    return ImageAugmentation(ops, crop_padding=fields["crop_padding"], pad_mode=fields["pad_mode"])
