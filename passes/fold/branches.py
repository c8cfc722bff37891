"""If nodes whose condition is a constant: replaced by the branch they always take."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.rewrite import is_graph_io, replace_all_uses



def inline_constant_ifs(graph: gs.Graph) -> int:
    """Replace ``If(constant)`` by the branch it always takes.

    Besides saving the node, this keeps ORT from type-checking the dead branch against
    constants it was never meant to see (it rejects e.g. a Squeeze on a now-static axis).
    """
    inlined = 0
    nodes: list[gs.Node] = []
    for node in graph.nodes:
        branch = _taken_branch(node)
        if branch is not None and len(branch.outputs) == len(node.outputs):
            nodes.extend(_inline_branch(graph, node, branch))
            inlined += 1
        else:
            nodes.append(node)
    if inlined:
        graph.nodes = nodes
    return inlined


def _taken_branch(node: gs.Node) -> gs.Graph | None:
    if node.op != "If" or (node.domain or "") not in ("", "ai.onnx") or not node.inputs:
        return None
    cond = node.inputs[0]
    if not isinstance(cond, gs.Constant) or cond.dtype != np.bool_:
        return None
    values = np.asarray(cond.values)
    if values.size != 1:
        return None
    return node.attrs.get("then_branch" if bool(values.reshape(-1)[0]) else "else_branch")


def _inline_branch(graph: gs.Graph, node: gs.Node, branch: gs.Graph) -> list[gs.Node]:
    outs = list(node.outputs)
    node.inputs.clear()
    node.outputs.clear()
    body = list(branch.nodes)
    in_body = {id(n) for n in body}
    renamed: set[int] = set()
    for out, produced in zip(outs, list(branch.outputs)):
        producer = produced.inputs[0] if isinstance(produced, gs.Variable) and produced.inputs else None
        if (producer is not None and id(producer) in in_body and id(produced) not in renamed
                and not is_graph_io(graph, produced)):
            renamed.add(id(produced))
            replace_all_uses(produced, out)
            slot = next(i for i, t in enumerate(producer.outputs) if t is produced)
            producer.outputs[slot] = out
        else:
            body.append(gs.Node("Identity", name=f"{out.name}__branch", inputs=[produced], outputs=[out]))
    return body
