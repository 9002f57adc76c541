"""The algorithm graph: model function calls (MFCs) and the data keys between them.

An algorithm is a list of `MFCDef`s. Each MFC runs one interface method
(`generate`, `inference` or `train_step`) on one model and names the data keys it
consumes and produces. `build_graph` turns the list into a `networkx.DiGraph` with
an edge wherever one MFC produces a key another consumes, and validates the wiring
before anything runs. The helpers below answer what a runner needs: a topological
order, the sources, the train MFC of each role and the full dependency list
(data edges plus the parameter-version rule, see `dependencies`).

This module runs nothing, holds no data and opens nothing; the scheduler state
machine lives in `realflow.api.scheduler`, drawing in `realflow.api.render`.
See docs/concepts.md for the full story.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

import networkx as nx

from realflow.api.data import MicroBatchSpec
from realflow.api.errors import GraphError


class FrozenDict(dict):
    """A read-only, picklable `dict` (shallow: nested values stay as given).

    Used for the mapping fields of `MFCDef` so that a definition cannot be changed
    after validation. It is a real `dict`, so `**args`, `json.dumps` and equality
    with plain dicts work.
    """

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("MFCDef mappings are read-only; build a new MFCDef with dataclasses.replace")

    __setitem__ = __delitem__ = __ior__ = _readonly  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"


@dataclass(frozen=True, order=True)
class ModelName:
    """A model role (``"actor"``) and the replica of its parameters (``0``).

    Parameter versions belong to the role; replicas of one role hold the same
    parameters in different layouts. ``str(ModelName("actor"))`` is ``"actor@0"``.
    """

    role: str
    replica_id: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or not self.role or "@" in self.role or self.role.strip() != self.role:
            raise GraphError(f"model role must be a non-empty string without '@' or outer spaces, got {self.role!r}")
        if not isinstance(self.replica_id, int) or isinstance(self.replica_id, bool) or self.replica_id < 0:
            raise GraphError(f"model '{self.role}': replica_id must be an int >= 0, got {self.replica_id!r}")

    def __str__(self) -> str:
        return f"{self.role}@{self.replica_id}"

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """``"actor"`` -> actor@0, ``"actor@1"`` -> actor@1."""
        role, sep, replica = text.partition("@")
        if not sep:
            return cls(role)
        if not replica.isdigit():
            raise GraphError(f"model name {text!r}: the replica after '@' must be a number")
        return cls(role, int(replica))


class MFCKind(str, enum.Enum):
    """What an MFC does to its model; the value is the interface method's name."""

    GENERATE = "generate"
    INFERENCE = "inference"
    TRAIN_STEP = "train_step"

    def __str__(self) -> str:
        return self.value


def _key_tuple(who: str, what: str, keys: Any) -> tuple[str, ...]:
    if isinstance(keys, str):
        raise GraphError(f"{who}: {what} must be a sequence of key names, got the string {keys!r} "
                         f"(write ({keys!r},))")
    try:
        keys = tuple(keys)
    except TypeError:
        raise GraphError(f"{who}: {what} must be a sequence of key names, got {keys!r}") from None
    for key in keys:
        if not isinstance(key, str) or not key:
            raise GraphError(f"{who}: {what} holds {key!r}; keys are non-empty strings")
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise GraphError(f"{who}: key '{key}' appears twice in {what} {keys}")
        seen.add(key)
    return keys


def _str_map(mfc: str, what: str, value: Any, *, str_values: bool) -> FrozenDict:
    if not isinstance(value, Mapping):
        raise GraphError(f"MFC '{mfc}': {what} must be a mapping, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise GraphError(f"MFC '{mfc}': {what} has key {k!r}; keys are non-empty strings")
        if str_values and (not isinstance(v, str) or not v):
            raise GraphError(f"MFC '{mfc}': {what} maps '{k}' to {v!r}; key names are non-empty strings")
    return FrozenDict(value)


@dataclass(frozen=True, kw_only=True)
class MFCDef:
    """One model function call of an algorithm graph.

    Keys and remaps. `input_keys` and `output_keys` are *graph* key names: they
    wire MFCs together and name dataset fields. An interface has its own names;
    the remaps translate at the boundary, each in the direction data flows:

    - `input_key_remap` maps graph key -> interface key (what the interface sees).
      Its keys must be in `input_keys`; unmapped keys keep their name.
    - `output_key_remap` maps interface key -> graph key (what the graph stores).
      Its values must be in `output_keys`; unmapped keys keep their name.

    So ``ref_inf`` running the ``ppo_actor`` interface's inference, which returns
    ``logprobs``, declares ``output_keys=("ref_logprobs",),
    output_key_remap={"logprobs": "ref_logprobs"}``. `input_rename` and
    `output_rename` give the complete translation tables for a runner.

    `n_seqs` is the batch size in sequences (samples: one prompt with several
    responses counts once) that one step feeds this MFC. `log_return_value` asks
    the runner to log the statistics the interface returns.
    """

    name: str
    model_name: ModelName
    kind: MFCKind
    interface_type: str
    input_keys: tuple[str, ...]
    n_seqs: int
    output_keys: tuple[str, ...] = ()
    interface_args: Mapping[str, Any] = field(default_factory=FrozenDict, hash=False)
    input_key_remap: Mapping[str, str] = field(default_factory=FrozenDict, hash=False)
    output_key_remap: Mapping[str, str] = field(default_factory=FrozenDict, hash=False)
    mb_spec: MicroBatchSpec = field(default_factory=MicroBatchSpec)
    log_return_value: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise GraphError(f"an MFC name must be a non-empty string, got {self.name!r}")
        name = self.name
        set_ = object.__setattr__  # frozen: normalise fields once, here
        if isinstance(self.model_name, str):
            set_(self, "model_name", ModelName.parse(self.model_name))
        elif not isinstance(self.model_name, ModelName):
            raise GraphError(f"MFC '{name}': model_name must be a ModelName or 'role@replica', "
                             f"got {self.model_name!r}")
        try:
            set_(self, "kind", MFCKind(self.kind))
        except ValueError:
            raise GraphError(f"MFC '{name}': kind {self.kind!r} is not one of "
                             f"{', '.join(k.value for k in MFCKind)}") from None
        if not isinstance(self.interface_type, str) or not self.interface_type:
            raise GraphError(f"MFC '{name}': interface_type must be a non-empty string, got {self.interface_type!r}")
        if isinstance(self.n_seqs, bool) or not isinstance(self.n_seqs, int) or self.n_seqs < 1:
            raise GraphError(f"MFC '{name}': n_seqs (batch size in sequences) must be an int >= 1, got {self.n_seqs!r}")
        if not isinstance(self.mb_spec, MicroBatchSpec):
            raise GraphError(f"MFC '{name}': mb_spec must be a MicroBatchSpec, got {type(self.mb_spec).__name__}")
        if not isinstance(self.log_return_value, bool):
            raise GraphError(f"MFC '{name}': log_return_value must be a bool, got {self.log_return_value!r}")
        set_(self, "interface_args", _str_map(name, "interface_args", self.interface_args, str_values=False))
        inputs = _key_tuple(f"MFC '{name}'", "input_keys", self.input_keys)
        outputs = _key_tuple(f"MFC '{name}'", "output_keys", self.output_keys)
        set_(self, "input_keys", inputs)
        set_(self, "output_keys", outputs)
        if not inputs:
            raise GraphError(f"MFC '{name}' has empty input_keys; every MFC consumes at least one key "
                             "(from the dataset or another MFC)")
        if self.kind is MFCKind.TRAIN_STEP and outputs:
            raise GraphError(f"MFC '{name}' is a train_step but declares output_keys {outputs}; "
                             "a train_step returns statistics, not data")
        both = [k for k in inputs if k in outputs]
        if both:
            raise GraphError(f"MFC '{name}' both consumes and produces key '{both[0]}'; "
                             "give the output another name")
        in_map = _str_map(name, "input_key_remap", self.input_key_remap, str_values=True)
        out_map = _str_map(name, "output_key_remap", self.output_key_remap, str_values=True)
        set_(self, "input_key_remap", in_map)
        set_(self, "output_key_remap", out_map)
        for graph_key in in_map:
            if graph_key not in inputs:
                raise GraphError(f"MFC '{name}': input_key_remap renames key '{graph_key}', "
                                 f"which is not in its input_keys {inputs}")
        for iface_key, graph_key in out_map.items():
            if graph_key not in outputs:
                raise GraphError(f"MFC '{name}': output_key_remap maps interface key '{iface_key}' to "
                                 f"'{graph_key}', which is not in its output_keys {outputs}")
        self._check_unique(name, "input", [in_map.get(k, k) for k in inputs], inputs)
        inverse = {g: i for i, g in out_map.items()}
        if len(inverse) != len(out_map):
            dup = next(g for g in out_map.values() if list(out_map.values()).count(g) > 1)
            raise GraphError(f"MFC '{name}': output_key_remap maps two interface keys to graph key '{dup}'")
        self._check_unique(name, "output", [inverse.get(k, k) for k in outputs], outputs)

    @staticmethod
    def _check_unique(name: str, side: str, iface: list[str], graph: tuple[str, ...]) -> None:
        seen: dict[str, str] = {}
        for i, g in zip(iface, graph):
            if i in seen:
                raise GraphError(f"MFC '{name}': {side} keys '{seen[i]}' and '{g}' both become interface "
                                 f"key '{i}' after {side}_key_remap")
            seen[i] = g

    @property
    def role(self) -> str:
        return self.model_name.role

    @property
    def input_rename(self) -> dict[str, str]:
        """Graph key -> interface key, for every input key (apply before calling the interface)."""
        return {k: self.input_key_remap.get(k, k) for k in self.input_keys}

    @property
    def output_rename(self) -> dict[str, str]:
        """Interface key -> graph key, for every output key (apply to what the interface returns)."""
        inverse = {g: i for i, g in self.output_key_remap.items()}
        return {inverse.get(k, k): k for k in self.output_keys}


class Dependency(NamedTuple):
    """`after` at step t waits for `before` at step t - `lag` (no wait when that is < 0).

    `reason` is ``"data"`` (a key edge), ``"version"`` (the parameter-version rule)
    or ``"order"`` (an MFC runs its steps in order).
    """

    before: str
    after: str
    lag: int
    reason: str


# ----------------------------------------------------------------------------- build


def build_graph(
    mfcs: Iterable[MFCDef],
    dataset_keys: Iterable[str] | None = None,
    known_interfaces: Iterable[str] | None = None,
    known_models: Iterable[ModelName | str] | None = None,
) -> nx.DiGraph:
    """Validate `mfcs` and return their data-flow graph.

    Nodes are MFC names (in declaration order) with attribute ``mfc`` (the MFCDef).
    There is an edge producer -> consumer for every key one MFC produces and another
    consumes; its attribute ``keys`` lists those keys (in the consumer's order).
    ``graph.graph["dataset_keys"]`` holds the keys nobody produces, which the dataset
    must provide (sorted).

    Checks, each raising one GraphError that names the MFC(s) and key: no MFCs,
    duplicate names, an unknown interface or model (when the known ones are given),
    a role trained by two MFCs, MFCs that disagree on n_seqs, a key produced twice
    (or produced by an MFC and the dataset), a consumed key provided by neither an
    MFC nor the dataset (when `dataset_keys` is given), and a cycle (with its path).
    """
    mfcs = list(mfcs)
    if not mfcs:
        raise GraphError("an algorithm graph needs at least one MFC, got none")
    for i, mfc in enumerate(mfcs):
        if not isinstance(mfc, MFCDef):
            raise GraphError(f"item {i} of the MFC list is a {type(mfc).__name__}, not an MFCDef")
    by_name: dict[str, MFCDef] = {}
    for mfc in mfcs:
        if mfc.name in by_name:
            raise GraphError(f"two MFCs are named '{mfc.name}' (on {by_name[mfc.name].model_name} and "
                             f"{mfc.model_name}); MFC names must be unique")
        by_name[mfc.name] = mfc
    if known_interfaces is not None:
        known = sorted(set(known_interfaces))
        for mfc in mfcs:
            if mfc.interface_type not in known:
                raise GraphError(f"MFC '{mfc.name}' uses unknown interface '{mfc.interface_type}'; "
                                 f"known interfaces: {', '.join(known) or '(none)'}")
    if known_models is not None:
        models = {ModelName.parse(m) if isinstance(m, str) else m for m in known_models}
        for mfc in mfcs:
            if mfc.model_name not in models:
                raise GraphError(f"MFC '{mfc.name}' runs on model '{mfc.model_name}', which is not declared; "
                                 f"declared models: {', '.join(sorted(map(str, models))) or '(none)'}")
    trainer: dict[str, str] = {}
    for mfc in mfcs:
        if mfc.kind is MFCKind.TRAIN_STEP:
            if mfc.role in trainer:
                raise GraphError(f"model role '{mfc.role}' is trained by two MFCs, '{trainer[mfc.role]}' and "
                                 f"'{mfc.name}'; a role has at most one train_step MFC")
            trainer[mfc.role] = mfc.name
    sizes = {mfc.n_seqs for mfc in mfcs}
    if len(sizes) > 1:
        listing = ", ".join(f"{m.name}={m.n_seqs}" for m in mfcs)
        raise GraphError(f"MFCs disagree on n_seqs ({listing}); one step feeds one batch through the graph")

    producer: dict[str, str] = {}
    for mfc in mfcs:
        for key in mfc.output_keys:
            if key in producer:
                raise GraphError(f"key '{key}' is produced by two MFCs, '{producer[key]}' and '{mfc.name}'")
            producer[key] = mfc.name
    provided = None if dataset_keys is None else set(_key_tuple("build_graph", "dataset_keys", dataset_keys))
    if provided is not None:
        for key, name in producer.items():
            if key in provided:
                raise GraphError(f"MFC '{name}' produces key '{key}', which the dataset also provides; "
                                 "rename the output with output_key_remap")
        for mfc in mfcs:
            for key in mfc.input_keys:
                if key not in producer and key not in provided:
                    raise GraphError(
                        f"MFC '{mfc.name}' consumes key '{key}', which no MFC produces and the dataset does not "
                        f"provide; dataset keys: {', '.join(sorted(provided)) or '(none)'}; MFC outputs: "
                        f"{', '.join(sorted(producer)) or '(none)'}")

    graph = nx.DiGraph()
    for mfc in mfcs:
        graph.add_node(mfc.name, mfc=mfc)
    from_dataset: set[str] = set()
    for mfc in mfcs:
        for key in mfc.input_keys:
            src = producer.get(key)
            if src is None:
                from_dataset.add(key)
            elif graph.has_edge(src, mfc.name):
                graph.edges[src, mfc.name]["keys"] += (key,)
            else:
                graph.add_edge(src, mfc.name, keys=(key,))
    graph.graph["dataset_keys"] = tuple(sorted(from_dataset))
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return graph
    path = cycle[0][0] + "".join(f" -[{','.join(graph.edges[u, v]['keys'])}]-> {v}" for u, v in cycle)
    raise GraphError(f"the graph has a cycle: {path}")


# ----------------------------------------------------------------------------- queries


def mfc_of(graph: nx.DiGraph, name: str) -> MFCDef:
    """The MFCDef of node `name`."""
    try:
        return graph.nodes[name]["mfc"]
    except KeyError:
        raise GraphError(f"no MFC named '{name}'; MFCs: {', '.join(graph.nodes)}") from None


def topological_order(graph: nx.DiGraph) -> list[str]:
    """MFC names, producers before consumers, ties broken by declaration order."""
    index = {name: i for i, name in enumerate(graph.nodes)}
    return list(nx.lexicographical_topological_sort(graph, key=index.__getitem__))


def iter_mfcs(graph: nx.DiGraph) -> Iterator[MFCDef]:
    """The MFCDefs in `topological_order`."""
    for name in topological_order(graph):
        yield graph.nodes[name]["mfc"]


def dataset_keys(graph: nx.DiGraph) -> tuple[str, ...]:
    """Keys no MFC produces; the dataset provides them each step."""
    return graph.graph["dataset_keys"]


def source_mfcs(graph: nx.DiGraph) -> list[str]:
    """MFCs that consume only dataset keys (no data predecessors), in topological order."""
    return [n for n in topological_order(graph) if graph.in_degree(n) == 0]


def train_mfc_by_role(graph: nx.DiGraph) -> dict[str, str]:
    """Model role -> the name of its train_step MFC (roles never trained are absent)."""
    return {m.role: m.name for m in iter_mfcs(graph) if m.kind is MFCKind.TRAIN_STEP}


def version_dependencies(graph: nx.DiGraph) -> list[Dependency]:
    """The parameter-version rule as dependencies.

    A role's parameter version counts its completed train steps; step t's calls
    must see version t. So for a role R with train MFC T, every other MFC M on R
    (any replica):
    - M at step t runs before T at step t (lag 0): M sees the weights T is about to
      change. This cannot form a cycle because a train_step produces no keys.
    - M at step t+1 runs after T at step t (lag 1): M sees T's update.
    """
    deps = []
    trainers = train_mfc_by_role(graph)
    for mfc in iter_mfcs(graph):
        train = trainers.get(mfc.role)
        if train is not None and train != mfc.name:
            deps.append(Dependency(mfc.name, train, 0, "version"))
            deps.append(Dependency(train, mfc.name, 1, "version"))
    return deps


def dependencies(graph: nx.DiGraph) -> dict[str, tuple[Dependency, ...]]:
    """Everything each MFC waits for, keyed by the waiting MFC (`after`).

    Data edges (lag 0), the parameter-version rule (`version_dependencies`) and
    step order: an MFC at step t+1 waits for itself at step t (lag 1), so each MFC
    runs its steps in order and a step finishes after the one before it.
    """
    deps: dict[str, list[Dependency]] = {name: [] for name in topological_order(graph)}
    for name in deps:
        deps[name].extend(Dependency(src, name, 0, "data") for src in graph.predecessors(name))
        deps[name].append(Dependency(name, name, 1, "order"))
    for dep in version_dependencies(graph):
        deps[dep.after].append(dep)
    return {name: tuple(ds) for name, ds in deps.items()}
