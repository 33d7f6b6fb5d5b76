"""The weight-sharing supernet of a search space: the largest PicoDet of the space, built of
dynamic layers, that runs any subnet of the space with the corresponding slice of its weights.

Elastic dimensions (all those a space may search):

* backbone: per ES block, the mid width (`Arch.mid_channels`, from the channel ratio) and the
  depthwise kernel (the centre of the largest kernel);
* neck width `neck_channels`: every neck conv, the head towers and the inputs of the head
  output convs;
* head depth `head_convs`: the first `d` depthwise + pointwise repeats of each level's tower;
* input size: the network is fully convolutional; the caller feeds images of `arch.input_size`.

The module tree and parameter names are those of `picodet_nas.models.PicoDet` built for the
largest architecture, so `Supernet.state_dict()` loads into `build_model(space.largest())`
unchanged, and the weights of a subnet sit at the same keys as in `build_model(arch)`.
`extract(arch)` returns exactly that static network, carrying the sliced weights and BN
running statistics.

Typical use (one training step; `SubnetSampler` gives the same archs on every DDP rank)::

    for arch in sampler.archs_for_step(step):
        outs = supernet(images_at(arch.input_size), arch)
        loss(*flatten_outputs(outs, num_classes), ...).backward()   # gradients accumulate
    optimizer.step(); optimizer.zero_grad()

Only the active slices receive gradient; layers a subnet does not use at all (head tower
repeats beyond its depth) get none, so DDP needs `find_unused_parameters=True`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from picodet_nas.arch import NUM_BLOCKS, REG_MAX, STEM_CHANNELS, STRIDES, Arch, block_is_downsample, block_stage
from picodet_nas.checkpoint import apply_state
from picodet_nas.models.channels import stacked_prefixes
from picodet_nas.models.detector import HEAD_KERNEL, NECK_KERNEL, PicoDet, build_model, flatten_outputs
from picodet_nas.models.esnet import OUT_BLOCKS, Stem
from picodet_nas.models.layers import ConvBN, channel_shuffle
from picodet_nas.space import SearchSpace

from .dynamic import DynamicBatchNorm2d, DynamicConv2d, DynamicConvBN, DynamicDPModule, DynamicSE


# ---- backbone ------------------------------------------------------------------------------
class SuperESBlock(nn.Module):
    """Stride-1 ES block (as `ESBlock`) with elastic mid width and depthwise kernel.

    The SE and the final 1x1 conv read `cat[a, b]` (each `m/2` of at most `M/2` channels), so
    their active input channels are `[0, m/2) U [M/2, M/2 + m/2)` of the largest layout."""

    def __init__(self, channels: int, max_mid: int, max_kernel: int):
        super().__init__()
        half, max_mid_half = channels // 2, max_mid // 2
        self.max_mid_half = max_mid_half
        self.pw = DynamicConvBN(half, max_mid_half, 1)
        self.dw = DynamicConvBN(max_mid_half, max_mid_half, max_kernel, depthwise=True, act=False)
        self.se = DynamicSE(max_mid)
        self.linear = DynamicConvBN(max_mid, half, 1)

    def set_active(self, mid: int, kernel_size: int) -> None:
        mid_half = mid // 2
        both = stacked_prefixes(mid_half, self.max_mid_half)
        self.pw.set_active(out_channels=mid_half)
        self.dw.set_active(mid_half, kernel_size=kernel_size)
        self.se.set_active(both)
        self.linear.set_active(in_channels=both)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        a = self.pw(x2)
        y = self.linear(self.se(torch.cat([a, self.dw(a)], dim=1)))
        return channel_shuffle(torch.cat([x1, y], dim=1), 2)


class SuperESBlockDS(nn.Module):
    """Stride-2 ES block (as `ESBlockDS`) with elastic mid width (branch 2) and depthwise
    kernel (all three depthwise convs: `dw1`, `dw2`, `dw_mv1`)."""

    def __init__(self, cin: int, cout: int, max_mid: int, max_kernel: int):
        super().__init__()
        half, max_mid_half = cout // 2, max_mid // 2
        self.dw1 = DynamicConvBN(cin, cin, max_kernel, 2, depthwise=True, act=False)
        self.linear1 = ConvBN(cin, half, 1)
        self.pw2 = DynamicConvBN(cin, max_mid_half, 1)
        self.dw2 = DynamicConvBN(max_mid_half, max_mid_half, max_kernel, 2, depthwise=True, act=False)
        self.se = DynamicSE(max_mid_half)
        self.linear2 = DynamicConvBN(max_mid_half, half, 1)
        self.dw_mv1 = DynamicConvBN(cout, cout, max_kernel, depthwise=True)
        self.pw_mv1 = ConvBN(cout, cout, 1)

    def set_active(self, mid: int, kernel_size: int) -> None:
        mid_half = mid // 2
        self.dw1.set_active(kernel_size=kernel_size)
        self.pw2.set_active(out_channels=mid_half)
        self.dw2.set_active(mid_half, kernel_size=kernel_size)
        self.se.set_active(mid_half)
        self.linear2.set_active(in_channels=mid_half)
        self.dw_mv1.set_active(kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.linear1(self.dw1(x))
        b2 = self.linear2(self.se(self.dw2(self.pw2(x))))
        return self.pw_mv1(self.dw_mv1(torch.cat([b1, b2], dim=1)))


class SuperESNet(nn.Module):
    """ESNet of the largest architecture (as `ESNet`); the stem is static."""

    def __init__(self, largest: Arch):
        super().__init__()
        c = largest.stage_out_channels
        self.out_channels = c
        self.stem = Stem()
        blocks = []
        for i in range(NUM_BLOCKS):
            stage, mid, k = block_stage(i), largest.mid_channels[i], largest.kernel_size[i]
            if block_is_downsample(i):
                cin = STEM_CHANNELS if stage == 0 else c[stage - 1]
                blocks.append(SuperESBlockDS(cin, c[stage], mid, k))
            else:
                blocks.append(SuperESBlock(c[stage], mid, k))
        self.blocks = nn.ModuleList(blocks)

    def set_active(self, arch: Arch) -> None:
        for block, mid, k in zip(self.blocks, arch.mid_channels, arch.kernel_size):
            block.set_active(mid, k)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in OUT_BLOCKS:
                outs.append(x)
        return outs


# ---- neck ----------------------------------------------------------------------------------
class SuperCSPLayer(nn.Module):
    """`CSPLayer` with elastic width `n` (hidden `n // 2`).

    Its input is the concatenation of two `n`-channel tensors, channels `[0, n) U [N, N + n)`
    of the largest layout; its final conv reads `cat[main, short]`, channels
    `[0, h) U [H, H + h)` with `H = N // 2`."""

    def __init__(self, max_channels: int, kernel_size: int = 5):
        super().__init__()
        n, h = max_channels, max_channels // 2
        self.max_channels, self.max_hidden = n, h
        self.main_conv = DynamicConvBN(2 * n, h, 1)
        self.short_conv = DynamicConvBN(2 * n, h, 1)
        self.bottleneck_conv = DynamicConvBN(h, h, 1)
        self.bottleneck_dp = DynamicDPModule(h, kernel_size)
        self.final_conv = DynamicConvBN(2 * h, n, 1)

    def set_active(self, channels: int) -> None:
        h = channels // 2
        inputs = stacked_prefixes(channels, self.max_channels)
        self.main_conv.set_active(inputs, h)
        self.short_conv.set_active(inputs, h)
        self.bottleneck_conv.set_active(h, h)
        self.bottleneck_dp.set_active(h)
        self.final_conv.set_active(stacked_prefixes(h, self.max_hidden), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.bottleneck_dp(self.bottleneck_conv(self.main_conv(x)))
        return self.final_conv(torch.cat([main, self.short_conv(x)], dim=1))


class SuperCSPPAN(nn.Module):
    """`CSPPAN` with elastic width: every conv of the neck runs on the first `n` channels."""

    def __init__(self, in_channels: tuple[int, int, int], max_channels: int, kernel_size: int = 5):
        super().__init__()
        n = max_channels
        self.trans = nn.ModuleList(DynamicConvBN(c, n, 1) for c in in_channels)
        self.top_down = nn.ModuleList(SuperCSPLayer(n, kernel_size) for _ in range(2))
        self.downsample = nn.ModuleList(DynamicDPModule(n, kernel_size, 2) for _ in range(2))
        self.bottom_up = nn.ModuleList(SuperCSPLayer(n, kernel_size) for _ in range(2))
        self.extra_in = DynamicDPModule(n, kernel_size, 2)
        self.extra_out = DynamicDPModule(n, kernel_size, 2)

    def set_active(self, channels: int) -> None:
        for conv in self.trans:
            conv.set_active(out_channels=channels)
        for m in (*self.top_down, *self.downsample, *self.bottom_up, self.extra_in, self.extra_out):
            m.set_active(channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        t3, t4, t5 = (conv(f) for conv, f in zip(self.trans, feats))
        i4 = self.top_down[0](torch.cat([F.interpolate(t5, scale_factor=2.0, mode="nearest"), t4], dim=1))
        i3 = self.top_down[1](torch.cat([F.interpolate(i4, scale_factor=2.0, mode="nearest"), t3], dim=1))
        p4 = self.bottom_up[0](torch.cat([self.downsample[0](i3), i4], dim=1))
        p5 = self.bottom_up[1](torch.cat([self.downsample[1](p4), t5], dim=1))
        p6 = self.extra_in(t5) + self.extra_out(p5)
        return [i3, p4, p5, p6]


# ---- head ----------------------------------------------------------------------------------
class SuperPicoHead(nn.Module):
    """`PicoHead` with elastic width (towers and output-conv inputs) and elastic depth: each
    level's tower holds the largest number of repeats and runs the first `head_convs`."""

    def __init__(self, max_channels: int, num_classes: int, max_convs: int, kernel_size: int = 5,
                 num_levels: int = len(STRIDES), reg_max: int = REG_MAX):
        super().__init__()
        n = max_channels
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.towers = nn.ModuleList(
            nn.Sequential(*[
                layer
                for _ in range(max_convs)
                for layer in (DynamicConvBN(n, n, kernel_size, depthwise=True), DynamicConvBN(n, n, 1))
            ])
            for _ in range(num_levels)
        )
        self.outputs = nn.ModuleList(
            DynamicConv2d(n, num_classes + 4 * (reg_max + 1), bias=True) for _ in range(num_levels)
        )
        self._active_layers: tuple[tuple[nn.Module, ...], ...] = tuple(tuple(t) for t in self.towers)

    def set_active(self, channels: int, num_convs: int) -> None:
        self._active_layers = tuple(tuple(tower)[:2 * num_convs] for tower in self.towers)
        for layers in self._active_layers:
            for dw, pw in zip(layers[::2], layers[1::2]):
                dw.set_active(channels)
                pw.set_active(channels, channels)
        for out in self.outputs:
            out.set_active(in_channels=channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for f, layers, out in zip(feats, self._active_layers, self.outputs):
            for layer in layers:
                f = layer(f)
            outs.append(out(f))
        return outs


# ---- the supernet --------------------------------------------------------------------------
class Supernet(nn.Module):
    """The largest network of `space` with elastic layers; runs any architecture of the space.

    `set_active(arch)` (or `forward(x, arch)`) chooses the subnet; `forward` returns the raw
    per-level outputs of `PicoDet.forward`, so `flatten_outputs`, the losses and the
    post-processing apply unchanged. Weights start as those of `build_model(space.largest())`
    (the builder's initialisation), and the largest architecture is active after construction.
    """

    strides = STRIDES
    reg_max = REG_MAX

    def __init__(self, space: SearchSpace, num_classes: int = 80):
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        largest = space.largest()
        self.backbone = SuperESNet(largest)
        self.neck = SuperCSPPAN(largest.stage_out_channels, largest.neck_channels, NECK_KERNEL)
        self.head = SuperPicoHead(largest.neck_channels, num_classes, largest.head_convs, HEAD_KERNEL)
        # The static builder's initialisation; a strict load also proves the trees match.
        self.load_state_dict(build_model(largest, num_classes).state_dict())
        self._active: Arch | None = None
        self.set_active(largest)

    @property
    def arch(self) -> Arch:
        """The active architecture (the name `PicoDet` uses for its own)."""
        return self._active

    def set_active(self, arch: Arch) -> None:
        """Make `arch` the active subnet; a `SpaceError` if it is not in the space."""
        if arch == self._active:
            return
        self.space.encode(arch)
        self.backbone.set_active(arch)
        self.neck.set_active(arch.neck_channels)
        self.head.set_active(arch.neck_channels, arch.head_convs)
        self._active = arch

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> list[torch.Tensor]:
        if arch is not None:
            self.set_active(arch)
        return self.head(self.neck(self.backbone(x)))

    def flatten(self, outs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As `PicoDet.flatten`: (cls_logits, reg_logits, priors)."""
        return flatten_outputs(outs, self.num_classes)

    def active_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict of `build_model(self.arch)` holding the active slice of every weight
        and BN statistic (copies): static layers as they are, dynamic ones sliced, unused head
        repeats left out."""
        depth = 2 * self._active.head_convs
        sliced = {}
        for name, module in self.named_modules():
            if isinstance(module, (DynamicConv2d, DynamicBatchNorm2d)) and not _is_unused_head_layer(name, depth):
                sliced.update({f"{name}.{k}": v for k, v in module.active_state().items()})
        return {k: sliced[k] if k in sliced else v.detach().clone()
                for k, v in self.state_dict().items() if not _is_unused_head_layer(k, depth)}

    def extract(self, arch: Arch) -> PicoDet:
        """The static `build_model(arch, num_classes)` carrying this supernet's weights and BN
        running statistics for `arch` (copies), on the supernet's device, in its train/eval mode.
        Makes `arch` active."""
        self.set_active(arch)
        p = next(self.parameters())
        model = build_model(arch, self.num_classes).to(device=p.device, dtype=p.dtype)
        model.load_state_dict(self.active_state_dict())  # strict: same keys and shapes as the builder
        return model.train(self.training)

    # ---- checkpoints -------------------------------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        """What a supernet checkpoint records beside `state_dict()` (plain data)."""
        return {"kind": "supernet", "space": self.space.ref(), "num_classes": self.num_classes}

    def load_checkpoint_state(self, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any], source: str) -> None:
        """Load weights saved with `checkpoint_meta()`; a `SpaceError`/`CheckpointError` (one
        line, naming `source`) when they belong to another space or network."""
        self.space.check_fingerprint((meta.get("space") or {}).get("fingerprint"), f"{source}: supernet checkpoint")
        apply_state(self, state, source)


def _is_unused_head_layer(key: str, depth: int) -> bool:
    """`head.towers.<level>.<index>.…` (a state-dict key or the name of a module inside a
    tower layer) with `index >= depth`: a tower layer the subnet lacks."""
    parts = key.split(".")
    return parts[:2] == ["head", "towers"] and int(parts[3]) >= depth
