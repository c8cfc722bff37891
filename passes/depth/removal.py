"""Bypass blocks in a gs graph: users of each block's exit read its entry, then whatever that
leaves dead goes (the region, and shape computations only the region used).

Only nodes that were live before and are dead after are deleted, so the pass never removes
dead code it did not create (that is ``cleanup``'s job, and its change to report).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxopt.rewrite import detach, replace_all_uses

from .blocks import Block, Dataflow, _live_after_bypass, resolve


def remove_blocks(graph: gs.Graph, blocks: list[Block]) -> int:
    """Bypass ``blocks`` (found on this graph); returns the number of nodes deleted."""
    if not blocks:
        return 0
    flow = Dataflow.build(graph)
    rewire = {b.exit: b.entry for b in blocks}
    live_before = _live_after_bypass(flow, {})
    live_after = _live_after_bypass(flow, rewire)
    doomed = [flow.nodes[i] for i in sorted(live_before - live_after)]
    tensors = graph.tensors()
    outputs = list(graph.outputs)
    renames: list[tuple[int, str]] = []
    for exit_name in rewire:
        old = tensors[exit_name]
        new = tensors[resolve(rewire, exit_name)]
        replace_all_uses(old, new)
        for k, t in enumerate(outputs):
            if t is old:
                renames.append((k, exit_name))
    doomed_ids = {id(n) for n in doomed}
    for node in doomed:
        detach(node)
    graph.nodes = [n for n in graph.nodes if id(n) not in doomed_ids]
    for k, exit_name in renames:
        _keep_output_name(graph, k, tensors[resolve(rewire, exit_name)], tensors[exit_name])
    return len(doomed)


def _keep_output_name(graph: gs.Graph, k: int, entry: gs.Variable, old: gs.Variable) -> None:
    """Graph outputs keep their names: the entry tensor takes the output's name when it is an
    internal tensor, else an Identity carries it (an input or another output cannot be renamed)."""
    is_io = any(t is entry for t in graph.inputs) or any(t is entry for t in graph.outputs)
    if not is_io and not isinstance(entry, gs.Constant):
        name = old.name
        old.name = name + "__depth_removed"
        entry.name = name
        graph.outputs[k] = entry
        return
    old.inputs.clear()
    graph.nodes.append(gs.Node("Identity", name=f"depth_bypass_{old.name}", inputs=[entry], outputs=[old]))
