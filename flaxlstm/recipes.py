"""How the parameters are optimised: a ``Recipe`` (Adam, a constant or cosine-decayed
learning rate over all of a run's steps, gradient clipping) and ``LayerRates`` (some layers
at a fraction of the rate), each turned into one optax transformation per run length.

``fit(model, x, y, recipe=Recipe(lr_schedule="cosine", clip_norm=1.0))``; the ``flaxlstm``
commands build theirs from their options (``flaxlstm.config.RecipeOptions``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import jax
import optax


@dataclass(frozen=True)
class Recipe:
    """How the parameters are optimised: Adam at ``learning_rate``, held constant or decayed
    to 0 along a cosine over every training step, with gradients clipped to the global norm
    ``clip_norm`` first (0: no clipping). ``IMDB_RECIPE`` is what made the seeds' IMDB models
    reliable (docs/RESULTS.md)."""

    learning_rate: float = 1e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"
    clip_norm: float = 0.0

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if not self.clip_norm >= 0:
            raise ValueError(f"clip_norm must be >= 0, got {self.clip_norm}")

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """The optax transformation for a run of ``total_steps`` optimizer steps (one object
        per recipe and schedule length, so that compiled train steps are reused)."""
        return _optimizer(self, total_steps if self.lr_schedule == "cosine" else None)


@functools.cache
def _optimizer(recipe: Recipe, total_steps: int | None) -> optax.GradientTransformation:
    rate = recipe.learning_rate
    if total_steps is not None:
        rate = optax.cosine_decay_schedule(recipe.learning_rate, max(total_steps, 1))
    adam = optax.adam(rate)
    if not recipe.clip_norm:
        return adam
    return optax.chain(optax.clip_by_global_norm(recipe.clip_norm), adam)


@dataclass(frozen=True)
class LayerRates(Recipe):
    """A ``Recipe`` in which the parameters under some of the model's top-level layers learn
    at a fraction of the rate: ``scales`` = ((layer name, factor), ...) multiplies their Adam
    updates. With one factor below 1 for pretrained layers it is ULMFiT's discriminative
    fine-tuning (``flaxlstm train imdb --init-from``)."""

    scales: tuple[tuple[str, float], ...] = ()

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        return _layer_rates(self, total_steps if self.lr_schedule == "cosine" else None)


@functools.cache
def _layer_rates(recipe: LayerRates, total_steps: int | None) -> optax.GradientTransformation:
    scales = dict(recipe.scales)

    def labels(params):
        name = lambda path: str(getattr(path[0], "key", path[0]))  # noqa: E731  the layer
        group = lambda path, _: name(path) if name(path) in scales else ""  # noqa: E731
        return jax.tree_util.tree_map_with_path(group, params)

    groups = {"": optax.identity()} | {name: optax.scale(f) for name, f in scales.items()}
    return optax.chain(_optimizer(recipe, total_steps), optax.multi_transform(groups, labels))


IMDB_RECIPE = Recipe(learning_rate=1e-3, lr_schedule="cosine", clip_norm=1.0)
# The layers a classifier fine-tuned from a language model takes from it (models.LmClassifier).
LM_PRETRAINED_LAYERS = ("embed", "lstm")
