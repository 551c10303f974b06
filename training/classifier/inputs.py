"""Classifier inputs for training and validation, built exactly as the serving pipeline does.

An input is the display image resized to ``image_size``² with the pipeline's `resize_image`
and replicated to 3 channels with `gray_to_rgb` (``uint8``, not normalised); the model
wrapper normalises it with `ClassifierEnsemble.normalise`, the code serving runs.

The sample order is a pure function of (seed, iteration): an endless stream of per-epoch
permutations of the training set, cut into batches. Flips are drawn from
(seed, iteration) as well. A run resumed at iteration *k* therefore sees the same batches
as an uninterrupted one, whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from spinexr.pipeline.classifier import ClassifierEnsemble
from spinexr.pipeline.devices import resolve_device
from spinexr.pipeline.preprocess import gray_to_rgb, resize_image
from spinexr.training.data import DisplayCache, ImageRecord

_MEMBER = "member"


class ClassifierInputs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Records → ``(uint8 (3, S, S) image, float label)`` pairs.

    Parameters
    ----------
    records : sequence of ImageRecord
        The images.
    cache : DisplayCache
        Where display images come from.
    image_size : int
        Side S of the square input.
    from_display : bool
        Resize the cache's `DisplayCache.get` image (shrunk to its ``max_side``) instead of
        taking `DisplayCache.get_resized` (full resolution resized once, as serving does).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        cache: DisplayCache,
        image_size: int,
        *,
        from_display: bool = False,
    ) -> None:
        self.records = list(records)
        self.cache = cache
        self.size = (int(image_size), int(image_size))
        self.from_display = from_display

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> npt.NDArray[np.uint8]:
        """Return the ``uint8`` (S, S, 3) input of one record."""
        record = self.records[index]
        if self.from_display:
            gray = resize_image(self.cache.get(record)[0], self.size)
        else:
            gray = self.cache.get_resized(record, self.size)
        return gray_to_rgb(gray)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        chw = np.ascontiguousarray(self.image(index).transpose(2, 0, 1))
        label = torch.tensor(float(self.records[index].abnormal), dtype=torch.float32)
        return torch.from_numpy(chw), label


def epoch_permutation(n: int, seed: int, epoch: int) -> npt.NDArray[np.int64]:
    """Sample order of one pass over the training set.

    Parameters
    ----------
    n : int
        Training set size.
    seed, epoch : int
        The permutation depends on these only.

    Returns
    -------
    numpy.ndarray
        A permutation of ``range(n)``.
    """
    return np.random.default_rng([int(seed), 0x5EED, int(epoch)]).permutation(n)


class StreamBatchSampler(Sampler[list[int]]):
    """Batches ``start .. stop - 1`` of the endless epoch-permutation stream.

    Parameters
    ----------
    n : int
        Training set size (> 0).
    batch_size : int
        Samples per batch.
    seed : int
        Seed of the permutations.
    start, stop : int
        First iteration and one past the last.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        if n < 1:
            raise ValueError("cannot sample from an empty training set")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        cached: dict[int, npt.NDArray[np.int64]] = {}
        for iteration in range(self.start, self.stop):
            batch = []
            for position in range(iteration * self.batch_size, (iteration + 1) * self.batch_size):
                epoch, offset = divmod(position, self.n)
                if epoch not in cached:
                    cached.clear()  # batches only move forwards: keep the current epoch
                    cached[epoch] = epoch_permutation(self.n, self.seed, epoch)
                batch.append(int(cached[epoch][offset]))
            yield batch


def flip_mask(seed: int, iteration: int, batch_size: int) -> torch.Tensor:
    """Which images of a batch are flipped horizontally (p = 0.5, from seed and iteration).

    Parameters
    ----------
    seed, iteration : int
        The draw depends on these only.
    batch_size : int
        Images in the batch.

    Returns
    -------
    torch.Tensor
        ``bool`` ``(batch_size,)``.
    """
    draws = np.random.default_rng([int(seed), 0xF11B, int(iteration)]).random(batch_size)
    return torch.from_numpy(draws < 0.5)


def member_wrapper(model: torch.nn.Module) -> ClassifierEnsemble:
    """Wrap one model as serving does, for its input normalisation and inference path.

    Parameters
    ----------
    model : torch.nn.Module
        A single-logit classifier (shared, not copied).

    Returns
    -------
    ClassifierEnsemble
        One-member ensemble; it puts `model` in eval mode.
    """
    return ClassifierEnsemble({_MEMBER: model})


def predict_logits(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    cache: DisplayCache,
    *,
    image_size: int = 224,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    workers: int = 0,
    from_display: bool = False,
) -> npt.NDArray[np.float32]:
    """Logits of one model for records, through the serving pipeline's inference path.

    Parameters
    ----------
    model : torch.nn.Module
        Single-logit classifier. It is moved to `device`; its train/eval mode is restored.
    records : sequence of ImageRecord
        Images, in the order of the result.
    cache : DisplayCache
        Where display images come from.
    image_size : int
        Input side (serving: 224).
    batch_size : int
        Images per forward pass.
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``... or a device.
    workers : int
        DataLoader worker processes.
    from_display : bool
        See `ClassifierInputs`.

    Returns
    -------
    numpy.ndarray
        ``float32`` ``(len(records),)`` logits (probability = sigmoid).
    """
    if not records:
        return np.zeros(0, dtype=np.float32)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    was_training = model.training
    wrapper = member_wrapper(model).to(dev)
    loader = DataLoader(
        ClassifierInputs(records, cache, image_size, from_display=from_display),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
    )
    chunks = []
    try:
        for images, _ in loader:
            chunks.append(wrapper.predict(images).logits[_MEMBER].numpy())
    finally:
        model.train(was_training)
    return np.concatenate(chunks).astype(np.float32)
