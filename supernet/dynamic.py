"""Sliceable layers: the primitives of the weight-sharing supernet, after Once-for-All.

Every layer owns the weights of its *largest* configuration and, on each call, runs only the
*active* sub-configuration chosen by `set_active(...)`: the first channels of the largest
weights (or the channel sets of `picodet_nas.models.channels`) and, for depthwise
convolutions, the centre of the largest kernel (a 3x3 kernel is the centre of the 5x5 one).
Each starts at its largest configuration. `SLICEABLE` passes them to the blocks of
`picodet_nas.models`, which are defined once and choose their layers' slices in their own
`set_active`; so the supernet is `PicoDet` built of these layers.

The static network of the active configuration is read off these layers by one path:
`active_state_dict(module)`, the state dict the static module of the active size would have
(the active slice of every weight and BN statistic), which `Supernet.extract` loads into
`build_model(arch)`.

Batch norm
----------
In training mode a `DynamicBatchNorm2d` normalises with the batch statistics of the active
channels and updates the running statistics of the active channels only (the running buffers
are sliced as views, so `F.batch_norm` updates them in place); in eval mode it uses the running
statistics of the active channels. BN channels are always a prefix: a BN follows a conv whose
output channels are a prefix in every layer of this network.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

import torch
from torch import nn
from torch.nn import functional as F

from picodet_nas.models.channels import Channels, Ranges, as_ranges, prefix, width
from picodet_nas.models.layers import Layers


@dataclass(frozen=True, eq=False)
class _ConvSlice:
    """One active configuration of a `DynamicConv2d`, with what its forward needs."""

    in_ranges: Ranges
    out_ranges: Ranges
    kernel: int
    out_sel: slice | torch.Tensor | None  # rows of the weight: all, a slice, or an index
    in_sel: slice | torch.Tensor | None  # columns (dense convs only)
    crop: int  # offset of the active kernel in the largest one
    padding: int
    groups: int


class DynamicConv2d(nn.Conv2d):
    """A `Conv2d` that holds the largest weights and runs a slice of them.

    Built as `conv2d` of `picodet_nas.models.layers` builds a static one (padding (k - 1) / 2),
    at the largest size. Dense (`groups=1`): weight `[max_out, max_in, K, K]`; the active conv
    uses the rows `out_channels` and the columns `in_channels`. Depthwise (`groups` = channels):
    weight `[C, 1, K, K]`; the active conv runs on the channels `in_channels` (output channels
    are the same set). In both, an active kernel `k < K` is the centre `k x k` of the largest
    kernel, with padding `(k - 1) // 2`.

    A one-range channel set is taken as a slice (a view); a split one with `index_select` on
    an index tensor built once per configuration and kept on the weight's device (one op
    forward and one backward, cheaper than concatenating slices).

    The parameters are named as in `nn.Conv2d` (`weight`, `bias`), so a supernet built of
    these has the same state-dict keys as the static network.
    """

    def __init__(self, max_in: int, max_out: int, max_kernel: int = 1, stride: int = 1, groups: int = 1,
                 bias: bool = False):
        if groups != 1 and not groups == max_in == max_out:
            raise ValueError(f"a conv is dense or depthwise, got groups={groups} for {max_in} -> {max_out}")
        super().__init__(max_in, max_out, max_kernel, stride, (max_kernel - 1) // 2, groups=groups, bias=bias)
        self.depthwise = groups != 1
        self.max_kernel = max_kernel
        self._slices: dict[tuple, _ConvSlice] = {}
        self.set_active()

    def set_active(self, in_channels: Channels | None = None, out_channels: Channels | None = None,
                   kernel_size: int | None = None) -> None:
        """Choose the active slice; `None` keeps a dimension at its largest. For a depthwise
        conv give `in_channels` only (the outputs are the same channels). Each distinct
        configuration is worked out once and cached (training switches subnets every step)."""
        key = (in_channels, out_channels, kernel_size)
        active = self._slices.get(key)
        if active is None:
            active = self._slices[key] = self._make_slice(in_channels, out_channels, kernel_size)
        self._active = active

    def _make_slice(self, in_channels: Channels | None, out_channels: Channels | None,
                    kernel_size: int | None) -> "_ConvSlice":
        in_ranges = as_ranges(self.in_channels if in_channels is None else in_channels, self.in_channels)
        if self.depthwise:
            if out_channels is not None and as_ranges(out_channels, self.out_channels) != in_ranges:
                raise ValueError("a depthwise conv's output channels are its input channels")
            out_ranges = in_ranges
        else:
            out_ranges = as_ranges(self.out_channels if out_channels is None else out_channels, self.out_channels)
        k = self.max_kernel if kernel_size is None else kernel_size
        if not (1 <= k <= self.max_kernel and k % 2 == 1):
            raise ValueError(f"kernel size must be odd and at most {self.max_kernel}, got {k}")
        return _ConvSlice(
            in_ranges=in_ranges,
            out_ranges=out_ranges,
            kernel=k,
            out_sel=self._selector(out_ranges, self.out_channels),
            in_sel=None if self.depthwise else self._selector(in_ranges, self.in_channels),
            crop=(self.max_kernel - k) // 2,
            padding=(k - 1) // 2,
            groups=width(in_ranges) if self.depthwise else 1,
        )

    def _selector(self, ranges: Ranges, max_channels: int) -> slice | torch.Tensor | None:
        """None (all channels), a slice (one range) or an index tensor (split ranges)."""
        if ranges == prefix(max_channels):
            return None
        if len(ranges) == 1:
            return slice(*ranges[0])
        index = [c for start, stop in ranges for c in range(start, stop)]
        return torch.tensor(index, dtype=torch.long, device=self.weight.device)

    def _apply(self, fn, recurse=True):
        """After `.to(device)` / `.cuda()`: rebuild the cached slices, whose index tensors
        must live on the weights' device."""
        super()._apply(fn, recurse)
        active = self._active
        self._slices = {}
        self.set_active(active.in_ranges, None if self.depthwise else active.out_ranges, active.kernel)
        return self

    @property
    def active_in(self) -> Ranges:
        return self._active.in_ranges

    @property
    def active_out(self) -> Ranges:
        return self._active.out_ranges

    @property
    def active_kernel(self) -> int:
        return self._active.kernel

    @staticmethod
    def _select(t: torch.Tensor, dim: int, sel: slice | torch.Tensor) -> torch.Tensor:
        if isinstance(sel, slice):
            return t[sel] if dim == 0 else t[:, sel]
        return t.index_select(dim, sel)

    def active_weight(self) -> torch.Tensor:
        """The active slice of the weight (a view, or a small copy for split channel sets)."""
        a, w = self._active, self.weight
        if a.out_sel is not None:
            w = self._select(w, 0, a.out_sel)
        if a.in_sel is not None:
            w = self._select(w, 1, a.in_sel)
        if a.crop:
            c, k = a.crop, a.kernel
            w = w[:, :, c:c + k, c:c + k]
        return w

    def active_bias(self) -> torch.Tensor | None:
        sel = self._active.out_sel
        if self.bias is None or sel is None:
            return self.bias
        return self._select(self.bias, 0, sel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._active
        return F.conv2d(x, self.active_weight(), self.active_bias(), self.stride, a.padding, 1, a.groups)

    def active_state(self) -> dict[str, torch.Tensor]:
        """State dict of the static `nn.Conv2d` of the active size (detached copies)."""
        state = {"weight": self.active_weight().detach().clone()}
        if self.bias is not None:
            state["bias"] = self.active_bias().detach().clone()
        return state


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """A `BatchNorm2d` over the largest width that normalises the first `active_features`
    channels (affine, tracked running statistics; PyTorch's momentum and eps)."""

    def __init__(self, max_features: int):
        super().__init__(max_features)
        self.active_features = max_features

    def set_active(self, channels: int | None = None) -> None:
        c = self.num_features if channels is None else channels
        if not 1 <= c <= self.num_features:
            raise ValueError(f"BN channels must be in [1, {self.num_features}], got {c}")
        self.active_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.active_features
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0
        if self.training:  # the bookkeeping of nn.BatchNorm2d (momentum None = cumulative average)
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, factor, self.eps)

    def active_state(self) -> dict[str, torch.Tensor]:
        """State dict of the static `nn.BatchNorm2d` of the active size (detached copies)."""
        c = self.active_features
        return {
            "weight": self.weight[:c].detach().clone(),
            "bias": self.bias[:c].detach().clone(),
            "running_mean": self.running_mean[:c].clone(),
            "running_var": self.running_var[:c].clone(),
            "num_batches_tracked": self.num_batches_tracked.clone(),
        }


class DynamicSequential(nn.Sequential):
    """An `nn.Sequential` that runs its first `active_depth` layers (elastic depth)."""

    def __init__(self, *layers: nn.Module):
        super().__init__(*layers)
        self.active_depth = len(self)

    def set_active(self, depth: int | None = None) -> None:
        d = len(self) if depth is None else depth
        if not 0 <= d <= len(self):
            raise ValueError(f"depth must be in [0, {len(self)}], got {d}")
        self.active_depth = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in islice(self, self.active_depth):
            x = layer(x)
        return x


SLICEABLE = Layers(DynamicConv2d, DynamicBatchNorm2d, DynamicSequential, initialise=False)


def active_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the static module of the active size, for a module built of
    `SLICEABLE` layers: every sliceable leaf's active state (copies), leaving out the layers
    a `DynamicSequential` does not run."""
    def key(name: str, child: object) -> str:
        return f"{name}.{child}" if name else str(child)

    idle = tuple(key(name, f"{i}.") for name, m in module.named_modules() if isinstance(m, DynamicSequential)
                 for i in range(m.active_depth, len(m)))
    state = {}
    for name, m in module.named_modules():
        if isinstance(m, (DynamicConv2d, DynamicBatchNorm2d)) and not key(name, "").startswith(idle):
            state.update({key(name, k): v for k, v in m.active_state().items()})
    return state
