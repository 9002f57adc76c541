"""Pictures of an algorithm graph: DOT text and PNG/SVG/PDF images.

Nodes are MFCs, coloured by kind and labelled with the model and the interface;
edges carry the keys that flow along them; a "dataset" node feeds the keys no
MFC produces. `to_dot` needs nothing beyond the standard library; `render_png`
draws with matplotlib (the optional ``plot`` extra), imported when called so that
the graph API does not require it. `render_graph(graph, path)` picks by suffix and
is what the ``realflow graph`` command calls.
"""
from __future__ import annotations

from pathlib import Path

import networkx as nx

from realflow.api.dfg import MFCDef, MFCKind, dataset_keys, topological_order
from realflow.api.errors import ConfigError

KIND_COLORS = {
    MFCKind.GENERATE: "#8fd694",    # green
    MFCKind.INFERENCE: "#8ecae6",   # blue
    MFCKind.TRAIN_STEP: "#f4a261",  # orange
}
DATASET_COLOR = "#e0e0e0"
DATASET_NODE = "dataset"


def node_label(mfc: MFCDef) -> str:
    """Multi-line label: name, model and kind, interface."""
    return f"{mfc.name}\n{mfc.model_name} · {mfc.kind.value}\n[{mfc.interface_type}]"


def _edges(graph: nx.DiGraph) -> list[tuple[str, str, tuple[str, ...]]]:
    """(source, target, keys), with the dataset as a source node named DATASET_NODE."""
    edges = []
    from_data = set(dataset_keys(graph))
    for name in topological_order(graph):
        mfc: MFCDef = graph.nodes[name]["mfc"]
        keys = tuple(k for k in mfc.input_keys if k in from_data)
        if keys:
            edges.append((DATASET_NODE, name, keys))
    for u, v, keys in graph.edges(data="keys"):
        edges.append((u, v, keys))
    return edges


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: nx.DiGraph) -> str:
    """Graphviz DOT text of the graph (``dot -Tpng`` renders it)."""
    lines = [
        "digraph realflow {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    if dataset_keys(graph):
        lines.append(f"  {_quote(DATASET_NODE)} [shape=cylinder, fillcolor={_quote(DATASET_COLOR)}];")
    for name in topological_order(graph):
        mfc: MFCDef = graph.nodes[name]["mfc"]
        lines.append(f"  {_quote(name)} [label={_quote(node_label(mfc))}, "
                     f"fillcolor={_quote(KIND_COLORS[mfc.kind])}];")
    for u, v, keys in _edges(graph):
        lines.append(f"  {_quote(u)} -> {_quote(v)} [label={_quote(chr(10).join(keys))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _layout(graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Layered positions: the dataset on top, each topological generation a row."""
    pos: dict[str, tuple[float, float]] = {}
    rows = [[DATASET_NODE]] if dataset_keys(graph) else []
    index = {name: i for i, name in enumerate(graph.nodes)}
    rows += [sorted(gen, key=index.__getitem__) for gen in nx.topological_generations(graph)]
    for depth, row in enumerate(rows):
        for i, name in enumerate(row):
            pos[name] = (i - (len(row) - 1) / 2, -depth)
    return pos


def render_png(graph: nx.DiGraph, path: str | Path, *, dpi: int = 120) -> Path:
    """Draw the graph to `path` (format from the suffix: .png, .svg, .pdf)."""
    # matplotlib is optional (extra "plot"); only drawing needs it. A bare Figure
    # (no pyplot) leaves the user's backend and global figure state alone.
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, Patch
    from matplotlib.path import Path as MplPath

    pos = _layout(graph)
    width = max(sum(1 for p in pos.values() if p[1] == y) for y in {p[1] for p in pos.values()})
    depth = len({p[1] for p in pos.values()})
    fig = Figure(figsize=(max(6.0, 3.2 * width), max(4.0, 2.2 * depth)))
    ax = fig.add_subplot()
    ax.set_axis_off()
    for u, v, keys in _edges(graph):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        y0, y1 = y0 - 0.22, y1 + 0.22  # leave the boxes
        # Edges that skip rows bend sideways (a quadratic Bezier) to pass between nodes.
        span = round(pos[u][1] - pos[v][1])
        bend = 0.0 if span <= 1 else (0.35 * span) * (-1.0 if x1 <= x0 else 1.0)
        cx, cy = (x0 + x1) / 2 + bend, (y0 + y1) / 2
        curve = MplPath([(x0, y0), (cx, cy), (x1, y1)], [MplPath.MOVETO, MplPath.CURVE3, MplPath.CURVE3])
        ax.add_patch(FancyArrowPatch(path=curve, arrowstyle="->", mutation_scale=12, color="#555555"))
        lx, ly = 0.25 * x0 + 0.5 * cx + 0.25 * x1, 0.25 * y0 + 0.5 * cy + 0.25 * y1
        ax.text(lx, ly, "\n".join(keys), fontsize=7, ha="center", va="center", color="#333333",
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    for name, (x, y) in pos.items():
        if name == DATASET_NODE:
            label, color = "dataset", DATASET_COLOR
        else:
            mfc: MFCDef = graph.nodes[name]["mfc"]
            label, color = node_label(mfc), KIND_COLORS[mfc.kind]
        ax.text(x, y, label, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.4", fc=color, ec="#333333"))
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-(depth - 1) - 0.5, 0.5)
    ax.legend(handles=[Patch(color=c, label=k.value) for k, c in KIND_COLORS.items()],
              loc="lower right", fontsize=7, frameon=False)
    path = Path(path)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def render_graph(graph: nx.DiGraph, path: str | Path) -> Path:
    """Write the graph to `path`: DOT text for .dot/.gv, an image for .png/.svg/.pdf."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".dot", ".gv"):
        path.write_text(to_dot(graph))
        return path
    if suffix in (".png", ".svg", ".pdf"):
        return render_png(graph, path)
    raise ConfigError(f"cannot render a graph to '{path}': use a .png, .svg, .pdf, .dot or .gv file")
