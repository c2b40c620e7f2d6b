"""Feature levels: where a network's stride doubles, and timm's ``feature_info`` describing them.

A backbone hands a detector or segmenter one map per resolution. The levels follow the rule of timm's
EfficientNet builder, so ``feature_info`` equals timm's for the same model: the stem (``bn1``) is a level when the
first block downsamples (a stride, or space-to-depth); a stage's output (``blocks.{s}``) is one when it is the last
stage or the next stage starts with a strided block. Channels and reduction (the stride from the input) are
those of the map at that point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flax_dsconv.models.config import MobileNetConfig

# timm's default out_indices for a features_only model: the first five levels.
DEFAULT_OUT_INDICES = (0, 1, 2, 3, 4)


def feature_levels(config: MobileNetConfig) -> tuple[dict[str, Any], ...]:
    """Every feature level of ``config``'s network: dicts with ``module`` (timm's module name), ``num_chs``,
    ``reduction`` and ``stage`` (0 for the stem, ``s + 1`` for stage ``s``), in depth order."""
    stages = [stage for stage in config.stages if stage]
    reduction = config.stem_stride
    levels = []
    first = stages[0][0] if stages else None
    if first is None or first.stride > 1 or getattr(first, "space_to_depth", False):
        levels.append(dict(module="bn1", num_chs=config.stem_channels, reduction=reduction, stage=0))
    for s, stage in enumerate(config.stages):
        for block in stage:
            reduction *= block.stride * (2 if getattr(block, "space_to_depth", False) else 1)
        last = all(not later for later in config.stages[s + 1:])
        nxt = next((later for later in config.stages[s + 1:] if later), None)
        if stage and (last or (nxt is not None and nxt[0].stride > 1)):
            levels.append(dict(module=f"blocks.{s}", num_chs=stage[-1].out_channels, reduction=reduction, stage=s + 1))
    return tuple(levels)


def check_out_indices(out_indices: Sequence[int], count: int, where: str) -> tuple[int, ...]:
    """``out_indices`` as a tuple, after checking each is a level index (negative ones count from the end, as in
    timm) and none repeats."""
    if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Sequence):
        raise TypeError(f"{where}: out_indices must be a sequence of ints, got {out_indices!r}")
    indices = tuple(out_indices)
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"{where}: out_indices must be ints, got {i!r} in {indices}")
        if not -count <= i < count:
            raise ValueError(f"{where}: out_indices {indices}: {i} is out of range; this model has {count} feature "
                             f"levels (indices 0..{count - 1}, or -{count}..-1 from the end)")  # fmt: skip
    if not indices:
        raise ValueError(f"{where}: out_indices is empty; name at least one of the {count} feature levels")
    if len({i % count for i in indices}) != len(indices):
        raise ValueError(f"{where}: out_indices {indices} names a level twice")
    return indices


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """The feature levels of a network and the ones it returns (``out_indices``), with timm's accessors.

    ``channels()``, ``reduction()`` and ``module_name()`` give the value for each returned level (in the order of
    ``out_indices``); with ``idx`` (an int or a list) they give it for those levels, whatever is returned.
    ``len()`` and ``[i]`` reach every level.

    >>> info = create_model("efficientnet_b0", features_only=True, out_indices=(1, 3)).feature_info
    >>> info.channels(), info.reduction(), info.module_name()
    ([24, 112], [4, 16], ['blocks.1', 'blocks.4'])
    """

    info: tuple[dict[str, Any], ...]
    out_indices: tuple[int, ...]

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        return self._at(idx, lambda i: self.info[i][key])

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        return self._at(idx, lambda i: dict(self.info[i]) if keys is None else {k: self.info[i][k] for k in keys})

    def _at(self, idx: int | Sequence[int] | None, value: Callable[[int], Any]) -> Any:
        """``value`` of each returned level (``idx`` None), of level ``idx``, or of each level in ``idx``."""
        if idx is None:
            return [value(i) for i in self.out_indices]
        if isinstance(idx, int):
            return value(idx)
        return [value(i) for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def __len__(self) -> int:
        return len(self.info)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(self.info[i])
