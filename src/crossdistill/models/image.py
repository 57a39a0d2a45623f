"""Image encoder: a timm backbone (global-pooled features) + an embedding layer.

No weights are ever downloaded: ``pretrained=True`` only works when timm finds the weights
in its local cache; otherwise give ``checkpoint_path`` (a local file).

``small_input=True`` adapts ImageNet stems to 32-48 px images (CIFAR-style):

* ResNet family (timm's ``ResNet`` class: ``resnet*``, ``resnet*d``/``t``, ``resnext*``,
  ``seresnet*``, ``wide_resnet*``, ...): a single 7x7/2 stem conv becomes 3x3/1 (a deep
  3x3 stem keeps its convs with stride 1) and the stem max-pool is removed.
* Other CNNs whose first conv (``pretrained_cfg["first_conv"]``) is strided and overlapping
  (EfficientNet, MobileNet, RegNet, ...): that conv's stride is set to 1; any other stem
  pooling is kept.
* Patchify stems (kernel == stride: ViT, Swin, ConvNeXt, ...): not supported (ValueError);
  use ``small_input=False`` and, for ViTs, ``model_kwargs={"img_size": 32, "patch_size": 4}``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.resnet import ResNet
from torch import Tensor, nn

_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module")


def _unknown_model_error(model_name: str) -> ValueError:
    close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Close matches: {close}." if close else ""
    return ValueError(
        f"Unknown timm model_name {model_name!r}.{hint} List valid names with "
        f"`python -c \"import timm; print(timm.list_models('resnet*'))\"` "
        f"(any wildcard pattern works)."
    )


def _get_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def adapt_stem_to_small_input(model: nn.Module, model_name: str) -> None:
    """Make ``model``'s stem keep full resolution for 32-48 px inputs (see module doc)."""
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    conv = _get_submodule(model, first_conv) if isinstance(first_conv, str) else None
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(
            f"small_input=True: cannot find the stem conv of timm model {model_name!r} "
            f"(pretrained_cfg first_conv={first_conv!r}); supported: ResNet family and CNNs "
            f"with a strided first Conv2d. Use small_input=False for this model."
        )
    if tuple(conv.kernel_size) == tuple(conv.stride) and conv.stride[0] > 1:
        raise ValueError(
            f"small_input=True is not supported for patchify stems ({model_name!r}: "
            f"{first_conv} kernel={conv.kernel_size} stride={conv.stride}). Use "
            f"small_input=False (for ViTs e.g. model_kwargs={{'img_size': 32, 'patch_size': 4}})."
        )
    if isinstance(model, ResNet) and conv.kernel_size[0] == 7:
        _set_submodule(
            model,
            first_conv,
            nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None),
        )
    else:
        conv.stride = (1, 1)
    if isinstance(model, ResNet):
        model.maxpool = nn.Identity()


class TimmImageEncoder(nn.Module):
    """timm backbone (``num_classes=0``: global-pooled features) -> Linear -> BatchNorm1d.

    Args:
        model_name: any name in ``timm.list_models()`` (e.g. ``resnet18``, ``resnet10t``).
        embedding_dim: output embedding size ``D``.
        in_chans: input image channels.
        pretrained: let timm load weights from its *local* cache (never the hub here).
        checkpoint_path: local weights, either of this encoder (keys ``backbone.*`` and
            ``embedding.*``, optionally nested under ``state_dict``/``model`` and a prefix
            such as a Lightning module's ``teacher_encoder.``) or of the bare timm backbone
            (its classifier weights are ignored; the embedding layer stays random).
        small_input: adapt the stem to 32-48 px images (see module doc).
        channels: ResNet family only: per-stage widths, e.g. ``[32, 64, 128, 256]`` for a
            half-width resnet18 (stem width = ``channels[0]`` unless ``model_kwargs`` sets
            ``stem_width``).
        drop_rate: dropout on the pooled features (timm ``drop_rate``).
        model_kwargs: extra keyword arguments for ``timm.create_model``.

    Intermediate maps are tapped by module path (``crossdistill.models.taps``), e.g.
    ``backbone.layer3`` (``[B, C, H, W]``) of a ResNet; ``backbone`` is the timm model.
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        embedding_dim: int = 128,
        in_chans: int = 3,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        small_input: bool = True,
        channels: Sequence[int] | None = None,
        drop_rate: float = 0.0,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(model_name):
            raise _unknown_model_error(model_name)
        kwargs = dict(model_kwargs or {})
        if channels is not None:
            kwargs["channels"] = tuple(int(c) for c in channels)
            kwargs.setdefault("stem_width", int(channels[0]))
        try:
            self.backbone = timm.create_model(
                model_name,
                pretrained=pretrained,
                num_classes=0,
                in_chans=in_chans,
                drop_rate=drop_rate,
                **kwargs,
            )
        except TypeError as err:
            raise ValueError(
                f"timm.create_model({model_name!r}) rejected the extra arguments "
                f"{sorted(kwargs)}: {err}. `channels` is only supported for the ResNet family."
            ) from err
        if small_input:
            adapt_stem_to_small_input(self.backbone, model_name)
        self.model_name = model_name
        self.feature_dim: int = self.backbone.num_features
        self.embedding_dim = embedding_dim
        self.embedding = nn.Sequential(
            nn.Linear(self.feature_dim, embedding_dim), nn.BatchNorm1d(embedding_dim)
        )
        if checkpoint_path is not None:
            self.load_checkpoint(checkpoint_path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Load local weights of this encoder or of its bare timm backbone (strict)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint_path {str(path)!r} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=False)
        for key in _STATE_DICT_KEYS:
            if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
                state = state[key]
                break
        if not isinstance(state, Mapping) or not state:
            raise ValueError(
                f"{path}: no state dict found (looked at top level and {_STATE_DICT_KEYS})"
            )
        own = [k for k in state if "backbone." in k]
        if own:  # a checkpoint of this encoder, possibly nested in a bigger module
            prefix = own[0][: own[0].index("backbone.")]
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            target: nn.Module = self
        else:  # bare timm backbone: drop its classifier
            head = self.backbone.pretrained_cfg.get("classifier") or "fc"
            state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
            target = self.backbone
        try:
            target.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise RuntimeError(
                f"{path}: weights do not fit {self.model_name!r} (check model_name, channels, "
                f"small_input, in_chans, embedding_dim): {err}"
            ) from err

    def forward(self, x: Tensor) -> Tensor:
        fmap = self.backbone.forward_features(x)
        return self.embedding(self.backbone.forward_head(fmap, pre_logits=True))
