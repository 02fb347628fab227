"""Turn a ``torch.export`` program back into a module whose prunable layers are real nn.Modules.

An exported program calls ``aten.conv2d`` / ``aten.linear`` / ``aten.batch_norm`` /
``aten.layer_norm`` on attributes, so no nn.Conv2d exists for the channel analysis (which keys on
modules) or for physical pruning (which resizes modules). Each such call whose weights are
attributes is replaced by a call to an equivalent module that owns the very same tensors, so the
lifted module computes exactly what the program did.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from hwprune.errors import ModelSpecError

aten = torch.ops.aten


def lift_exported_program(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """Return ``program.module()`` with conv/linear/norm calls routed through nn.Modules."""
    gm = program.module()
    lifted = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        made = _module_for(gm, node)
        if made is None:
            continue
        path, module, data_input = made
        gm.add_submodule(path, module)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(path, (data_input,))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        lifted += 1
    if lifted == 0:
        raise ModelSpecError("the exported program has no conv/linear/norm layers with attribute weights to prune")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    # program.module() refuses .eval()/.train(); a plain GraphModule over the same graph does not.
    plain = fx.GraphModule(gm, gm.graph)
    for name in ("_in_spec", "_out_spec"):
        if hasattr(gm, name):
            setattr(plain, name, getattr(gm, name))
    return plain.eval()


def _attr(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    try:
        return gm.get_parameter(node.target)
    except AttributeError:
        return gm.get_buffer(node.target)


def _owner(node: fx.Node) -> str:
    return node.target.rsplit(".", 1)[0] if "." in node.target else f"lifted_{node.target}"


def _arg(node: fx.Node, index: int, default: object) -> object:
    return node.args[index] if len(node.args) > index else default


def _module_for(gm: fx.GraphModule, node: fx.Node) -> tuple[str, nn.Module, fx.Node] | None:
    if node.target is aten.conv2d.default:
        weight = _attr(gm, node.args[1])
        if not isinstance(weight, nn.Parameter):
            return None
        bias = _attr(gm, _arg(node, 2, None))
        groups = int(_arg(node, 6, 1))
        conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                         stride=tuple(_arg(node, 3, [1, 1])), padding=tuple(_arg(node, 4, [0, 0])),
                         dilation=tuple(_arg(node, 5, [1, 1])), groups=groups, bias=bias is not None)
        conv.weight = weight
        if bias is not None:
            conv.bias = bias
        return _owner(node.args[1]), conv, node.args[0]
    if node.target is aten.linear.default:
        weight = _attr(gm, node.args[1])
        if not isinstance(weight, nn.Parameter):
            return None
        bias = _attr(gm, _arg(node, 2, None))
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        linear.weight = weight
        if bias is not None:
            linear.bias = bias
        return _owner(node.args[1]), linear, node.args[0]
    if node.target is aten.batch_norm.default:
        weight = _attr(gm, node.args[1])
        mean = _attr(gm, node.args[3])
        if not isinstance(weight, nn.Parameter) or mean is None or node.args[5]:
            return None
        bn = nn.BatchNorm2d(weight.shape[0], eps=float(node.args[7]), momentum=float(node.args[6]))
        bn.weight, bn.bias = weight, _attr(gm, node.args[2])
        bn.running_mean, bn.running_var = mean, _attr(gm, node.args[4])
        return _owner(node.args[1]), bn.eval(), node.args[0]
    if node.target is aten.layer_norm.default:
        weight = _attr(gm, _arg(node, 2, None))
        if not isinstance(weight, nn.Parameter):
            return None
        norm = nn.LayerNorm(list(node.args[1]), eps=float(_arg(node, 4, 1e-5)))
        norm.weight, norm.bias = weight, _attr(gm, _arg(node, 3, None))
        return _owner(node.args[2]), norm, node.args[0]
    return None
