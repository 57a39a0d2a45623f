"""Record intermediate outputs of any model by module path (forward hooks).

A :class:`FeatureRecorder` is given a root module and ``{name: "dotted.module.path"}``;
paths are resolved with ``root.get_submodule`` when the recorder is built, so a wrong path
fails at once, naming the path and the closest valid ones. Hooks exist only inside
:meth:`FeatureRecorder.recording` (one forward): the model is never edited, and nothing
stays registered on it between steps or after the recorder is gone.

Works on any ``nn.Module`` (timm, SpeechBrain, torch, HuggingFace): tap what
``named_modules()`` lists. A module called several times in one recording keeps its last
output; a module whose output is a tuple (e.g. ``nn.MultiheadAttention``) records the first
element. In-place operations after a tapped module (``ReLU(inplace=True)``) change the
recorded tensor too: tap the in-place module instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["FeatureRecorder", "TapSpec", "parse_tap", "resolve_module"]


@dataclass(frozen=True)
class TapSpec:
    """One named feature: a module path and whether its output is channels-last."""

    path: str
    #: move the last axis to position 1 (``[B, L, C] -> [B, C, L]``, transformer tokens)
    channels_last: bool = False


def parse_tap(name: str, spec: str | Mapping, where: str) -> TapSpec:
    """A feature spec from a config: ``"path"`` or ``{path: ..., channels_last: bool}``."""
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, Mapping) or set(spec) - {"path", "channels_last"} or "path" not in spec:
        raise ValueError(
            f"{where}.{name} must be a module path string or {{path: ..., channels_last: "
            f"bool}}, got {spec!r}"
        )
    path = spec["path"]
    if not isinstance(path, str) or not path or path == "???":
        raise ValueError(
            f"{where}.{name} is not set ({path!r}): give a module path such as "
            f"encoder.backbone.layer3 (see 'Tapping features' in docs/architecture.md)"
        )
    return TapSpec(path, bool(spec.get("channels_last", False)))


def resolve_module(root: nn.Module, path: str, where: str = "feature path") -> nn.Module:
    """``root.get_submodule(path)``; an unknown path raises one line naming it and the
    closest valid paths."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        valid = [name for name, _ in root.named_modules() if name]
        close = difflib.get_close_matches(path, valid, n=5, cutoff=0.5)
        hint = f"close valid paths: {close}" if close else f"valid paths start with: {valid[:8]}"
        raise ValueError(f"{where}: no module at path {path!r}; {hint}") from None


class FeatureRecorder:
    """Outputs of named submodules of ``root`` during one forward.

    Args:
        root: the module the paths are relative to.
        taps: ``{name: path}`` or ``{name: TapSpec}``.
        where: config location named in errors (e.g. ``distill.features.student``).

    Usage::

        recorder = FeatureRecorder(model, {"l3": "backbone.layer3"})
        with recorder.recording() as features:
            model(x)
        features["l3"]  # [B, C, H, W], in the autograd graph of the forward
    """

    def __init__(
        self, root: nn.Module, taps: Mapping[str, str | TapSpec], where: str = "features"
    ) -> None:
        self.where = where
        self.specs: dict[str, TapSpec] = {
            name: spec if isinstance(spec, TapSpec) else parse_tap(name, spec, where)
            for name, spec in taps.items()
        }
        self.modules: dict[str, nn.Module] = {
            name: resolve_module(root, spec.path, f"{where}.{name}")
            for name, spec in self.specs.items()
        }

    def __bool__(self) -> bool:
        return bool(self.specs)

    @contextmanager
    def recording(self) -> Iterator[dict[str, Tensor]]:
        """Hooks on the tapped modules for the duration of the block; the yielded dict
        fills during the forward. Every tap must have fired when the block ends."""
        features: dict[str, Tensor] = {}
        handles = [
            module.register_forward_hook(self._hook(name, features))
            for name, module in self.modules.items()
        ]
        try:
            yield features
        finally:
            for handle in handles:
                handle.remove()
        silent = [f"{n} ({self.specs[n].path})" for n in self.specs if n not in features]
        if silent:
            raise RuntimeError(
                f"{self.where}: {silent} produced no output in this forward (the module is "
                "not called by the model's forward); tap a module the forward runs"
            )

    def _hook(self, name: str, features: dict[str, Tensor]):
        spec = self.specs[name]

        def record(_module: nn.Module, _inputs, output) -> None:
            if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
                output = output[0]
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"{self.where}.{name}: module {spec.path!r} returned "
                    f"{type(output).__name__}, not a tensor; tap a submodule that returns one"
                )
            features[name] = output.movedim(-1, 1) if spec.channels_last else output

        return record
