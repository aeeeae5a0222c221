"""A model's causal-loop diagram as a graph: its variables, its links with their polarity, a layout.

:func:`causal_diagram` builds the diagram as a :class:`networkx.DiGraph` (the graph a reader can
also analyse or export with networkx) and :func:`diagram_layout` places it; the figure kind
``model_diagram`` (:func:`armsdyn.figures.model_diagram`) draws it. The layout is networkx's
Kamada-Kawai layout (Kamada & Kawai 1989): linked variables sit close, variables many links apart
far, which keeps each feedback loop a ring a reader can follow around.

References
----------
Kamada, T. & Kawai, S. (1989). An algorithm for drawing general undirected graphs. *Information
Processing Letters* 31(1), 7-15. https://doi.org/10.1016/0020-0190(89)90102-6
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np

from armsdyn.errors import ModelError
from armsdyn.feedback import causal_graph, diagram_refusal, variable_link_polarities
from armsdyn.model import Model


def causal_diagram(model: Model, variables: Sequence[str] = ()) -> nx.DiGraph[str]:
    """The model's causal graph over the variables drawn, with each link's polarity.

    Parameters
    ----------
    model : Model
        The model.
    variables : sequence of str
        The variables (model names) to keep, with the links among them; by default every variable
        that is not a constant (nor time or a control variable).

    Returns
    -------
    networkx.DiGraph
        Nodes are model names with attribute ``kind`` (as :attr:`armsdyn.model.Variable.kind`);
        an edge is a link (an equation reading a variable; a stock's flows point into it) with
        attributes ``sign`` (+1, -1, or 0 where it is mixed or never acts over the model file's
        run, :func:`armsdyn.feedback.variable_link_polarities`) and ``on_loop`` (whether it closes a
        feedback loop of the whole model, drawn or not).

    Raises
    ------
    ModelError
        If a variable asked for is not in the model's causal graph (a constant, or not a variable).
    """
    graph = causal_graph(model)
    by_py = {v.py_name: v for v in model.variables.values()}
    whole: nx.DiGraph[str] = nx.DiGraph()
    whole.add_nodes_from(by_py[n].name for n in graph)
    whole.add_edges_from((by_py[a].name, by_py[b].name) for a, targets in graph.items() for b in targets if a != b)
    # Any case, or the Python-safe name, as everywhere in a config (an unknown one raises with a suggestion).
    nodes = sorted(whole) if not variables else list(dict.fromkeys(model.variable(n).name for n in variables))
    msg = diagram_refusal(model, nodes)
    if msg:
        raise ModelError(msg)
    # A link closes a loop when its target reaches its source: both in one strongly connected set.
    component = {n: i for i, members in enumerate(nx.strongly_connected_components(whole)) for n in members}
    drawn = whole.subgraph(nodes)
    links = sorted(drawn.edges)
    signs = variable_link_polarities(model, links)
    diagram: nx.DiGraph[str] = nx.DiGraph()
    for name in nodes:
        diagram.add_node(name, kind=model.variables[name].kind)
    for a, b in links:
        diagram.add_edge(a, b, sign=signs.get((a, b), 0), on_loop=component[a] == component[b])
    return diagram


def diagram_layout(diagram: nx.DiGraph[str]) -> dict[str, np.ndarray]:
    """Positions of the diagram's variables: Kamada-Kawai on its undirected path lengths, landscape.

    Variables in unconnected parts are kept one link further apart than the longest path, so the
    parts sit side by side instead of flying off. The layout starts from a circle of the variables
    in breadth-first order from the first name, so it is deterministic; it is then turned so its
    wider spread is horizontal, each axis oriented by its farthest variable.

    Parameters
    ----------
    diagram : networkx.DiGraph
        From :func:`causal_diagram`.

    Returns
    -------
    dict
        Variable name to its ``(x, y)`` position, centred on zero.
    """
    nodes = sorted(diagram)
    if len(nodes) < 2:
        return {name: np.zeros(2) for name in nodes}
    undirected: nx.Graph[str] = nx.Graph()
    undirected.add_nodes_from(nodes)
    undirected.add_edges_from(sorted(diagram.edges))
    lengths = dict(nx.all_pairs_shortest_path_length(undirected))
    apart = max(d for row in lengths.values() for d in row.values()) + 1
    dist = {a: {b: lengths[a].get(b, apart) for b in nodes} for a in nodes}
    # Started on a circle in breadth-first order, part by part, so linked variables start side by
    # side (in name order the circle can put them opposite, a saddle the solver stays in).
    order = [
        node
        for part in sorted(nx.connected_components(undirected), key=min)
        for node in nx.bfs_tree(undirected, min(part))
    ]
    start = nx.circular_layout(nx.path_graph(order))
    placed = nx.kamada_kawai_layout(undirected, dist=dist, pos=start)
    xy = np.array([placed[name] for name in nodes])
    xy -= xy.mean(axis=0)
    # Principal axes: the wider spread along x.
    _, _, axes = np.linalg.svd(xy, full_matrices=False)
    xy = xy @ axes.T
    far = np.argmax(np.abs(xy), axis=0)
    xy *= np.where(xy[far, [0, 1]] < 0, -1.0, 1.0)
    return dict(zip(nodes, xy, strict=True))
