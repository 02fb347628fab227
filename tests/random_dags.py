"""Hypothesis strategy drawing small random DAG CNNs for pruning property tests.

The hand-written zoo (``zoo.py``) covers the coupling kinds we know about; this
module hunts for the ones we did not think of. ``random_dag_models()`` draws
networks whose tensors fan out to several consumers and fan back in through
residual adds and channel concatenations in arbitrary combinations (add of a
cat, cat of an add, BN / depthwise conv applied to a cat, the same tensor used
in several adds, ...), which is where dependency-graph / channel-index
bookkeeping bugs in structured pruning hide. Hypothesis shrinks any failing
network to a minimal op list.

Design: ``RandomDAGNet`` is one generic ``nn.Module`` holding a static list of
op specs plus an ``nn.ModuleList`` of layers and evaluating the specs in order.
The only Python control flow in ``forward`` depends on the (fixed) specs, never
on tensor values, so the graph recorded by autograd / ``torch.fx`` /
``torch.jit.trace`` is the same for every input, and pruning tools that trace
the model through ``grad_fn`` see every op.

Building blocks (all at stride 1 with "same" padding, so every tensor keeps
the input's spatial size and any two tensors can be added / concatenated):

* ``conv``: Conv2d 3x3 or 1x1 with 2..12 output channels, or a depthwise 3x3
  (groups = out = in channels); optional bias; optionally followed by
  BatchNorm2d and/or ReLU;
* ``bn``: standalone BatchNorm2d on any earlier tensor (e.g. on a cat / add);
* ``relu``: standalone ReLU on any earlier tensor;
* ``add``: residual add of two earlier tensors; if their channel counts differ
  a 1x1 projection conv (+ optional BN) maps the second one to the first's;
* ``cat``: torch.cat of 2..3 earlier tensors along channels.

Extra kinds, drawn only when asked for (``extra=EXTRA_KINDS``), carry the couplings real models
add (the analyzer must prune them exactly or refuse them by name):

* ``gate``: a squeeze-excitation gate ``t * sigmoid(mean_hw(t) * alpha + beta)`` whose per-channel
  ``alpha``/``beta`` are buffers outside any layer (as models converted from ONNX hold them);
* ``scale``: ``t * s + b`` with bare per-channel parameters;
* ``smap``: ``t * map`` with a ``(1, 1, H, W)`` buffer, one value per position for every channel: it
  holds no channels, so pruning must leave it whole (never slice its width as if it were channels);
* ``deconv``: a ConvTranspose2d 3x3 (stride 1), optionally with BN and ReLU;
* ``hswap``: the tensor chunked in two along height and concatenated back swapped (dim 2);
* ``cchunk``: a tensor with an even channel count chunked in two along channels and the halves
  added (prunable: both halves keep the same positions, so each kept sum keeps both its terms);
* ``csplit``: a tensor split along channels at sizes written in the code (``t.split([a, c - a], 1)``,
  equal or not) and the pieces concatenated back swapped: the model's code fixes the sizes, so its
  group must be refused by name, never pruned into a model that no longer runs.

The raw input can only feed ``conv`` ops (its 3 channels are not prunable).
Every tensor that nobody consumes is concatenated (in production order) into
the head, so no layer is dead. Head: global average pool -> flatten -> Linear,
or flatten(C*H*W) -> Linear.

The strategy returns ``(model.eval(), example_input)`` with input ``1x3x8x8``;
BatchNorm running stats and affine params are randomised. Weights are seeded
from a drawn integer so a failing example reproduces exactly.

Note for tests that use torch_pruning (1.6.1) as a reference: it mishandles a
``torch.cat`` whose output reaches ``flatten -> Linear`` (the flatten head with
more than one sink, or a cat as the only sink): it cannot infer the cat's
offsets, couples the channels of the different cat inputs, and pruning then
breaks the model -- or ``get_all_groups`` loops forever when the cat closes a
cycle. Draw with ``heads=("gap",)`` when torch_pruning is the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

__all__ = ["EXTRA_KINDS", "OpSpec", "RandomDAGNet", "build_dag_model", "random_dag_models", "random_dag_specs"]

INPUT_SHAPE = (1, 3, 8, 8)
EXTRA_KINDS = ("gate", "scale", "smap", "deconv", "hswap", "cchunk", "csplit")


class BufferGate(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("alpha", torch.rand(1, channels, 1, 1) + 0.5)
        self.register_buffer("beta", torch.randn(1, channels, 1, 1) * 0.3)

    def forward(self, t):
        return t * torch.sigmoid(t.mean((2, 3), keepdim=True) * self.alpha + self.beta)


class BareScale(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.s = nn.Parameter(torch.rand(1, channels, 1, 1) + 0.5)
        self.b = nn.Parameter(torch.randn(1, channels, 1, 1) * 0.3)

    def forward(self, t):
        return t * self.s + self.b


class SpatialMap(nn.Module):
    def __init__(self, spatial: tuple[int, int]):
        super().__init__()
        self.register_buffer("map", torch.rand(1, 1, *spatial) + 0.5)

    def forward(self, t):
        return t * self.map


@dataclass(frozen=True)
class OpSpec:
    """One node of the DAG.

    kind:    "conv" | "bn" | "relu" | "add" | "cat", or one of ``EXTRA_KINDS``
    inputs:  indices into the tensor list (0 = network input, i+1 = output of op i)
    out_channels: channel count of the produced tensor (bookkeeping only)
    kernel, depthwise, bias, with_bn, with_relu: conv options
    proj:    for "add": a projection 1x1 conv is applied to inputs[1]
    first:   for "csplit": the size of the first piece
    """

    kind: str
    inputs: tuple[int, ...]
    out_channels: int
    kernel: int = 1
    depthwise: bool = False
    bias: bool = False
    with_bn: bool = False
    with_relu: bool = False
    proj: bool = False
    first: int = 0

    def __str__(self):
        ins = ",".join(f"t{i}" for i in self.inputs)
        if self.kind == "conv":
            extra = f"{'dw' if self.depthwise else ''}{self.kernel}x{self.kernel}"
            extra += "+b" if self.bias else ""
            extra += "+bn" if self.with_bn else ""
            extra += "+relu" if self.with_relu else ""
            return f"conv[{extra}]({ins})->{self.out_channels}"
        if self.kind == "add" and self.proj:
            return f"add_proj({ins})->{self.out_channels}"
        return f"{self.kind}({ins})->{self.out_channels}"


def _randomize_bn(bn: nn.BatchNorm2d):
    with torch.no_grad():
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0.0, 0.3)


class RandomDAGNet(nn.Module):
    """Generic DAG network evaluated from a static list of ``OpSpec``.

    ``self.layers[i]`` is the module for ``specs[i]`` (``nn.Identity`` for
    cat / plain add); ``self.projs`` holds projection convs for adds, keyed by
    op index.
    """

    def __init__(self, specs, in_channels=3, spatial=(8, 8), head="gap", num_classes=5):
        super().__init__()
        self.specs = list(specs)
        self.head_kind = head
        chans = [in_channels]
        layers = []
        projs = {}
        for i, s in enumerate(self.specs):
            if s.kind == "conv":
                cin = chans[s.inputs[0]]
                groups = cin if s.depthwise else 1
                mods = [
                    nn.Conv2d(cin, s.out_channels, s.kernel, padding=s.kernel // 2,
                              groups=groups, bias=s.bias)
                ]
                if s.with_bn:
                    mods.append(nn.BatchNorm2d(s.out_channels))
                if s.with_relu:
                    mods.append(nn.ReLU())
                layers.append(nn.Sequential(*mods))
            elif s.kind == "bn":
                layers.append(nn.BatchNorm2d(chans[s.inputs[0]]))
            elif s.kind == "relu":
                layers.append(nn.ReLU())
            elif s.kind == "add":
                a, b = s.inputs
                if chans[a] != chans[b]:
                    assert s.proj, 'add of unequal channel counts needs a projection'
                if s.proj:
                    mods = [nn.Conv2d(chans[b], chans[a], 1, bias=s.bias)]
                    if s.with_bn:
                        mods.append(nn.BatchNorm2d(chans[a]))
                    projs[str(i)] = nn.Sequential(*mods)
                layers.append(nn.Identity())
            elif s.kind == "cat":
                layers.append(nn.Identity())
            elif s.kind == "gate":
                layers.append(BufferGate(chans[s.inputs[0]]))
            elif s.kind == "scale":
                layers.append(BareScale(chans[s.inputs[0]]))
            elif s.kind == "smap":
                layers.append(SpatialMap(tuple(spatial)))
            elif s.kind == "deconv":
                mods = [nn.ConvTranspose2d(chans[s.inputs[0]], s.out_channels, 3, padding=1, bias=s.bias)]
                mods += [nn.BatchNorm2d(s.out_channels)] if s.with_bn else []
                mods += [nn.ReLU()] if s.with_relu else []
                layers.append(nn.Sequential(*mods))
            elif s.kind in ("hswap", "cchunk", "csplit"):
                layers.append(nn.Identity())
            else:  # pragma: no cover
                raise ValueError(s.kind)
            chans.append(s.out_channels)
        self.layers = nn.ModuleList(layers)
        self.projs = nn.ModuleDict(projs)

        consumed = {j for s in self.specs for j in s.inputs}
        # every unconsumed op output feeds the head (input excluded)
        self.sinks = [t for t in range(1, len(chans)) if t not in consumed]
        if not self.sinks:  # only possible with zero ops
            self.sinks = [len(chans) - 1]
        c_head = sum(chans[t] for t in self.sinks)
        self.head_in_channels = c_head
        if head == "gap":
            self.fc = nn.Linear(c_head, num_classes)
        elif head == "flatten":
            self.fc = nn.Linear(c_head * spatial[0] * spatial[1], num_classes)
        else:
            raise ValueError(head)

    def forward(self, x):
        ts = [x]
        for i, s in enumerate(self.specs):
            layer = self.layers[i]
            if s.kind in ("conv", "bn", "relu", "gate", "scale", "smap", "deconv"):
                y = layer(ts[s.inputs[0]])
            elif s.kind == "hswap":
                top, bottom = ts[s.inputs[0]].chunk(2, dim=2)
                y = torch.cat([bottom, top], dim=2)
            elif s.kind == "cchunk":
                first, second = ts[s.inputs[0]].chunk(2, dim=1)
                y = first + second
            elif s.kind == "csplit":
                first, second = ts[s.inputs[0]].split([s.first, s.out_channels - s.first], 1)
                y = torch.cat([second, first], dim=1)
            elif s.kind == "add":
                a, b = s.inputs
                tb = ts[b]
                if s.proj:
                    tb = self.projs[str(i)](tb)
                y = ts[a] + tb
            else:  # cat
                y = torch.cat([ts[j] for j in s.inputs], dim=1)
            ts.append(y)
        outs = [ts[t] for t in self.sinks]
        h = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if self.head_kind == "gap":
            h = F.adaptive_avg_pool2d(h, 1)
        return self.fc(torch.flatten(h, 1))

    def extra_repr(self):
        return "specs=[" + "; ".join(f"t{i + 1}={s}" for i, s in enumerate(self.specs)) + \
            f"], sinks={self.sinks}, head={self.head_kind}"


def build_dag_model(specs, head="gap", seed=0, input_shape=INPUT_SHAPE):
    """Deterministically build ``(model.eval(), example_input)`` from specs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RandomDAGNet(specs, in_channels=input_shape[1], spatial=input_shape[2:], head=head)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                _randomize_bn(m)
            elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.bias is not None:
                with torch.no_grad():
                    m.bias.normal_(0.0, 0.2)
        x = torch.randn(*input_shape)
    return model.eval(), x


@st.composite
def random_dag_specs(draw, min_ops=2, max_ops=7, max_channels=12, allow_depthwise=True,
                     allow_duplicate_inputs=True, extra=()):
    """Draw a list of ``OpSpec`` forming a valid DAG (see module docstring).

    ``allow_duplicate_inputs=False`` forbids ``x + x`` and ``cat([x, x, ...])``
    (the same tensor twice in one op), e.g. to separate that edge case from
    others when a test fails.
    """
    n_ops = draw(st.integers(min_ops, max_ops))
    chans = [3]  # tensor 0 = input
    specs = []
    for i in range(n_ops):
        # the first op is always a conv on the input so that there is at least
        # one prunable tensor for bn/relu/add/cat to work on
        produced = list(range(1, len(chans)))  # tensors other than the input
        if i == 0:
            kind = "conv"
        elif allow_duplicate_inputs or len(produced) >= 2:
            kind = draw(st.sampled_from(["conv", "conv", "conv", "bn", "relu", "add", "cat", *extra]))
        else:  # add / cat would need two distinct tensors
            kind = draw(st.sampled_from(["conv", "conv", "conv", "bn", "relu", *extra]))
        if (kind == "cchunk" and not any(chans[t] % 2 == 0 for t in produced)) or (
                kind == "csplit" and not any(chans[t] >= 2 for t in produced)):
            kind = "conv"
        if kind == "conv":
            src = draw(st.sampled_from(list(range(len(chans)))))
            cin = chans[src]
            depthwise = allow_depthwise and src != 0 and draw(st.booleans())
            if depthwise:
                k, cout = 3, cin
            else:
                k = draw(st.sampled_from([1, 3]))
                cout = draw(st.integers(2, max_channels))
            spec = OpSpec(
                "conv", (src,), cout, kernel=k, depthwise=depthwise,
                bias=draw(st.booleans()), with_bn=draw(st.booleans()),
                with_relu=draw(st.booleans()),
            )
        elif kind in ("bn", "relu", "gate", "scale", "smap", "hswap"):
            src = draw(st.sampled_from(produced))
            spec = OpSpec(kind, (src,), chans[src])
        elif kind == "cchunk":
            src = draw(st.sampled_from([t for t in produced if chans[t] % 2 == 0]))
            spec = OpSpec(kind, (src,), chans[src] // 2)
        elif kind == "csplit":
            src = draw(st.sampled_from([t for t in produced if chans[t] >= 2]))
            spec = OpSpec(kind, (src,), chans[src], first=draw(st.integers(1, chans[src] - 1)))
        elif kind == "deconv":
            spec = OpSpec("deconv", (draw(st.sampled_from(produced)),), draw(st.integers(2, max_channels)),
                          bias=draw(st.booleans()), with_bn=draw(st.booleans()), with_relu=draw(st.booleans()))
        elif kind == "add":
            a = draw(st.sampled_from(produced))
            b = draw(st.sampled_from([t for t in produced if allow_duplicate_inputs or t != a]))
            proj = chans[a] != chans[b]
            spec = OpSpec(
                "add", (a, b), chans[a], proj=proj,
                bias=proj and draw(st.booleans()), with_bn=proj and draw(st.booleans()),
            )
        else:  # cat
            k = draw(st.integers(2, 3))
            if allow_duplicate_inputs:
                srcs = tuple(draw(st.lists(st.sampled_from(produced), min_size=k, max_size=k)))
            else:
                k = min(k, len(produced))
                srcs = tuple(draw(st.lists(st.sampled_from(produced), min_size=k, max_size=k,
                                           unique=True)))
            spec = OpSpec("cat", srcs, sum(chans[j] for j in srcs))
        specs.append(spec)
        chans.append(spec.out_channels)
    return specs


@st.composite
def random_dag_models(draw, min_ops=2, max_ops=7, heads=("gap", "flatten"),
                      input_shape=INPUT_SHAPE, allow_duplicate_inputs=True, extra=()):
    """Hypothesis strategy: ``(model.eval(), example_input)`` of a random DAG CNN.

    ``heads`` restricts the head kinds drawn ("gap": avgpool+flatten+Linear,
    "flatten": flatten(C*H*W)+Linear). ``allow_duplicate_inputs``: see
    ``random_dag_specs``.
    """
    specs = draw(random_dag_specs(min_ops=min_ops, max_ops=max_ops,
                                  allow_duplicate_inputs=allow_duplicate_inputs, extra=extra))
    head = draw(st.sampled_from(list(heads)))
    seed = draw(st.integers(0, 2**31 - 1))
    return build_dag_model(specs, head=head, seed=seed, input_shape=input_shape)
