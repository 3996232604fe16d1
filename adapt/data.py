"""The data sets adapters learn from and are measured on, as (image, text, group) triples.

``group`` says which texts match which images: each catalog product is its own group (instance level:
one title, one photo), a Fashion-MNIST class is one group (class level: ten prompts, many photos). The
training loss and the metrics read nothing else, so one trainer serves both.
"""

from __future__ import annotations

import gzip
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from demo.catalog import generate_catalog, render_product_image
from vitrine.catalog import Product

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` installs the four IDX files."""

FASHION_MNIST_CLASSES = (
    "t-shirt",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
PROMPT = "a photo of a {}"


class DataError(RuntimeError):
    """A data set is missing or unreadable; the message says how to get it."""


@dataclass(frozen=True)
class Split:
    """Images, the texts they are paired with and their groups; ``texts[i]`` describes ``images[i]``.

    ``images`` are decoded PIL images (features are computed from them through the served transform).
    """

    name: str
    images: Sequence[Image.Image]
    texts: Sequence[str]
    groups: np.ndarray  # [n] int64

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Dataset:
    name: str
    level: str  # "instance" (one text per image) or "class" (one prompt per class)
    train: Split
    val: Split
    test: Split
    description: str
    products: tuple[Product, ...] = ()
    """Catalog data sets only: every product, in split order (train, val, test)."""


# ---- the demo catalog: (photo, title) per product, split by product ------------------------------------


def product_split(
    n: int, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.25
) -> dict[str, list[int]]:
    """Positions of ``n`` products in the train, val and test splits (seeded, disjoint)."""
    order = list(range(n))
    random.Random(seed + 12).shuffle(order)
    n_test, n_val = int(n * test_fraction), int(n * val_fraction)
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def catalog_pairs(
    n: int, seed: int = 0, image_size: int = 224, val_fraction: float = 0.15, test_fraction: float = 0.25
) -> Dataset:
    """The seeded demo catalog's products, each its photo and its title, split by product.

    Photos are rendered at ``image_size`` (the served transform resizes to 224 anyway), so no product's
    photo or title is seen in two splits.
    """
    products, images = [], []
    for product, spec in generate_catalog(n, seed, image_size):
        products.append(product)
        images.append(render_product_image(*spec))
    parts = product_split(n, seed, val_fraction, test_fraction)

    def split(name: str) -> Split:
        idx = parts[name]
        return Split(
            name, [images[i] for i in idx], [products[i].title for i in idx], np.asarray(idx, np.int64)
        )

    ordered = tuple(products[i] for part in ("train", "val", "test") for i in parts[part])
    return Dataset(
        name=f"demo catalog (n={n}, seed {seed})",
        level="instance",
        train=split("train"),
        val=split("val"),
        test=split("test"),
        description=(
            f"{n} synthetic products (seed {seed}): each title paired with its rendered photo; "
            f"products split {len(parts['train'])}/{len(parts['val'])}/{len(parts['test'])} "
            "train/val/test"
        ),
        products=ordered,
    )


# ---- Fashion-MNIST (Debian dataset-fashion-mnist) -----------------------------------------------------


def _idx(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(
            f"{path} not found: install Debian's Fashion-MNIST (apt-get install -y dataset-fashion-mnist)"
        )
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fmnist(kind: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    return _idx(root / f"{kind}-images-idx3-ubyte.gz"), _idx(root / f"{kind}-labels-idx1-ubyte.gz")


def _balanced(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices drawn evenly over the classes (seeded), so a small subset still has every class."""
    per = max(1, n // len(FASHION_MNIST_CLASSES))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in range(len(FASHION_MNIST_CLASSES))]
    return np.sort(np.concatenate(picks))


def fashion_mnist(
    n_train: int, n_test: int, seed: int = 0, val_fraction: float = 0.15, root: Path = FASHION_MNIST_DIR
) -> Dataset:
    """Class-balanced subsets: adapters train on the official train split (less a validation part) and
    are measured on the official test split. Each 28x28 grayscale image is stored as a PNG-equivalent
    PIL image and upscaled to 224 by the served transform, exactly as a served upload would be."""
    rng = np.random.default_rng(seed)
    train_x, train_y = _fmnist("train", root)
    test_x, test_y = _fmnist("t10k", root)
    pool = _balanced(train_y, int(n_train / (1 - val_fraction)), rng)
    pool = rng.permutation(pool)
    n_val = int(len(pool) * val_fraction)
    val_idx, train_idx = np.sort(pool[:n_val]), np.sort(pool[n_val:])
    test_idx = _balanced(test_y, n_test, rng)

    def split(name: str, x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
        labels = y[idx].astype(np.int64)
        return Split(
            name,
            [_as_upload(x[i]) for i in idx],
            [PROMPT.format(FASHION_MNIST_CLASSES[c]) for c in labels],
            labels,
        )

    return Dataset(
        name="Fashion-MNIST",
        level="class",
        train=split("train", train_x, train_y, train_idx),
        val=split("val", train_x, train_y, val_idx),
        test=split("test", test_x, test_y, test_idx),
        description=(
            f"Debian dataset-fashion-mnist: {len(train_idx)}/{n_val} train/val images from the official "
            f"train split, {len(test_idx)} from the official test split (class-balanced, seed {seed}); "
            "28x28 grayscale upscaled to 224 by the served pre-processing; prompts 'a photo of a <class>'"
        ),
    )


def _as_upload(pixels: np.ndarray) -> Image.Image:
    """A 28x28 grayscale array as a decoded PNG upload would arrive (mode L, lossless)."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


def class_prompts() -> list[str]:
    return [PROMPT.format(c) for c in FASHION_MNIST_CLASSES]


def fashion_mnist_available(root: Path = FASHION_MNIST_DIR) -> bool:
    return all((root / f).is_file() for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"))
