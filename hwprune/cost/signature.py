"""The key a latency is measured and looked up under: one op's full configuration.

Two layers with the same signature cost the same on a device, so a lookup table measures each
signature once (HALP keys its table the same way: batch, c_in, c_out, feature map, kernel,
stride, groups).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}
COPY_OPS = ("gather", "slice")
ATTENTION = "attention"
CONV_OPS = ("conv2d", "conv_transpose2d")
LATER_FIELDS = ("output_padding", "causal", "epilogue")


@dataclass(frozen=True)
class OpSignature:
    """One op: ``conv2d`` or ``conv_transpose2d`` (h, w = input map), ``linear`` (h = rows per batch
    item, w = 1), a channel copy in front of an unconstrained reader: ``gather`` (scattered
    channels) or ``slice`` (one run), c_out of c_in channels of an h x w map; or ``attention``, the
    core of one attention module, softmax(Q K^T / sqrt(D)) V: batch = B, c_in = c_out = its query
    heads H (heads are its channels, each reading only its own, as a depthwise conv's do), h = the
    query length, w = the key length, kernel = D, the head width (fixed: only whole heads go), causal = 1
    when each query reads only the keys up to its own position (a decoder's mask: onnxruntime's softmax
    over the masked scores measured 6x slower here than over unmasked ones of the same shape).

    ``epilogue`` (conv2d, conv_transpose2d, linear): the per-channel constant Mul/Add ops that alone read the
    layer's output, in order, joined by ``_`` (``mul_add``: a BatchNorm a converter wrote as Mul then Add; ``mul``:
    a layer scale). They shrink with the layer's output channels, so they are timed with the layer."""

    op: str
    batch: int
    c_in: int
    c_out: int
    h: int
    w: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    dtype: str = "fp32"
    sparsity: str = "dense"
    output_padding: int = 0  # conv_transpose2d only
    causal: int = 0  # attention only
    epilogue: str = ""  # conv2d, conv_transpose2d, linear: e.g. "mul_add"

    def key(self) -> str:
        """Fields added after tables were first written are left out at their default, so those
        tables' keys stay valid."""
        return "|".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                        if f.name not in LATER_FIELDS or getattr(self, f.name) != f.default)

    @classmethod
    def from_key(cls, key: str) -> OpSignature:
        values = dict(part.split("=", 1) for part in key.split("|"))
        kinds = {f.name: f.type for f in fields(cls)}
        return cls(**{name: (value if kinds[name] == "str" else int(value)) for name, value in values.items()})

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def out_hw(self) -> tuple[int, int]:
        span = self.dilation * (self.kernel - 1) + 1
        if self.op == "conv_transpose2d":
            return ((self.h - 1) * self.stride - 2 * self.padding + span + self.output_padding,
                    (self.w - 1) * self.stride - 2 * self.padding + span + self.output_padding)
        if self.op != "conv2d":
            return self.h, self.w
        return ((self.h + 2 * self.padding - span) // self.stride + 1,
                (self.w + 2 * self.padding - span) // self.stride + 1)

    def flops(self) -> int:
        """Multiply-adds counted as two FLOPs, as torch.utils.flop_counter does (copies: none)."""
        if self.op in COPY_OPS:
            return 0
        if self.op == ATTENTION:  # Q K^T and then the weights times V: B x H x h x w x D multiply-adds each
            return 2 * 2 * self.batch * self.c_out * self.h * self.w * self.kernel
        if self.op == "conv_transpose2d":  # every input position scatters into k x k outputs per channel
            return 2 * self.batch * self.c_in * self.h * self.w * (self.c_out // self.groups) * self.kernel ** 2
        oh, ow = self.out_hw
        per_output = (self.c_in // self.groups) * self.kernel * self.kernel
        return 2 * self.batch * self.c_out * oh * ow * per_output

    def bytes_moved(self) -> int:
        """Input + weights + output, each touched once: the roofline's memory traffic (a copy reads
        and writes only what it selects)."""
        if self.op in COPY_OPS:
            return 2 * self.batch * self.c_out * self.h * self.w * BYTES_PER_ELEMENT[self.dtype]
        if self.op == ATTENTION:  # Q and the output (h rows), K and V (w rows); the h x w scores written by
            # the first matmul, read and written by the softmax, read by the second (no fused kernel assumed)
            per_head = 2 * (self.h + self.w) * self.kernel + 4 * self.h * self.w
            return self.batch * self.c_out * per_head * BYTES_PER_ELEMENT[self.dtype]
        oh, ow = self.out_hw
        weights = self.c_out * (self.c_in // self.groups) * self.kernel * self.kernel
        elements = self.batch * self.c_in * self.h * self.w + weights + self.batch * self.c_out * oh * ow
        return elements * BYTES_PER_ELEMENT[self.dtype]

    def epilogue_ops(self) -> tuple[str, ...]:
        """The epilogue's ops in order (``mul``, ``add``: ``graph.epilogue``), none for a bare layer."""
        return tuple(self.epilogue.split("_")) if self.epilogue else ()

    def epilogue_bytes(self) -> int:
        """The epilogue's memory traffic, each op run on its own: it reads and writes the layer's output and
        reads its c_out constants (not in ``bytes_moved``: a runtime that folds the ops into the layer moves none
        of it, and an unfused op's traffic does not overlap the layer's compute)."""
        oh, ow = self.out_hw
        per_op = 2 * self.batch * self.c_out * oh * ow + self.c_out
        return len(self.epilogue_ops()) * per_op * BYTES_PER_ELEMENT[self.dtype]

    def with_channels(self, c_in: int, c_out: int) -> OpSignature:
        """The same op with other channel counts (a depthwise conv keeps groups == channels)."""
        groups = c_out if self.groups == self.c_in == self.c_out and self.groups > 1 else self.groups
        return replace(self, c_in=c_in, c_out=c_out, groups=groups)
