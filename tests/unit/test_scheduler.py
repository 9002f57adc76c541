"""The scheduler core, table-driven in the style of CPython's test_graphlib."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realflow.api.dfg import MFCDef, MFCKind, build_graph, dependencies
from realflow.api.errors import GraphError
from realflow.api.scheduler import Scheduler, SchedulerError, Task, TaskState

GEN, INF, TRAIN = MFCKind.GENERATE, MFCKind.INFERENCE, MFCKind.TRAIN_STEP


def mfc(name, model, kind, inputs, outputs=()):
    return MFCDef(name=name, model_name=model, kind=kind, interface_type="i",
                  input_keys=inputs, output_keys=outputs, n_seqs=2)


SFT = [mfc("train", "actor", TRAIN, ("packed_input_ids",))]
CHAIN = [mfc("gen", "actor", GEN, ("prompt",), ("seq",)),
         mfc("score", "reward", INF, ("seq",), ("rewards",)),
         mfc("train", "actor", TRAIN, ("seq", "rewards"))]
ROLLOUT = ("seq", "logp", "ref_logp", "rewards", "values")
PPO = [mfc("actor_gen", "actor", GEN, ("prompt",), ("seq", "logp")),
       mfc("rew_inf", "reward", INF, ("seq",), ("rewards",)),
       mfc("ref_inf", "ref", INF, ("seq",), ("ref_logp",)),
       mfc("critic_inf", "critic", INF, ("seq",), ("values",)),
       mfc("actor_train", "actor", TRAIN, ROLLOUT),
       mfc("critic_train", "critic", TRAIN, ROLLOUT)]
# An inference on the trained role that feeds nothing: only the version rule orders it.
EVAL = [mfc("gen", "actor", GEN, ("prompt",), ("seq",)),
        mfc("train", "actor", TRAIN, ("seq",)),
        mfc("eval", "actor@1", INF, ("seq",), ("eval_score",))]
# No trained role: only data and step order constrain it.
FROZEN = [mfc("gen", "policy", GEN, ("prompt",), ("seq",)), mfc("score", "reward", INF, ("seq",), ("r",))]

PPO_STEP = [["actor_gen"], ["rew_inf", "ref_inf", "critic_inf"], ["actor_train", "critic_train"]]


def lockstep(mfcs, n_steps, window):
    """Start every READY task, then finish them all; the list of batches."""
    sched = Scheduler(build_graph(mfcs), n_steps, max_steps_in_flight=window)
    batches = []
    while sched.is_active():
        ready = sched.get_ready()
        assert ready, "deadlock"
        for task in ready:
            sched.start(*task)
        for task in ready:
            sched.done(*task)
        batches.append([tuple(t) for t in ready])
    assert sched.get_ready() == [] and sched.running() == []
    return batches


def steps(*per_step):
    """[[names of batch], ...] per step -> batches of (step, name)."""
    return [[(s, n) for n in batch] for s, batches in enumerate(per_step) for batch in batches]


@pytest.mark.parametrize("mfcs,n_steps,window,expected", [
    (SFT, 3, 1, [[(0, "train")], [(1, "train")], [(2, "train")]]),
    (SFT, 3, 3, [[(0, "train")], [(1, "train")], [(2, "train")]]),  # a train waits for its previous step
    (CHAIN, 2, 1, steps([["gen"], ["score"], ["train"]], [["gen"], ["score"], ["train"]])),
    (CHAIN, 2, 2, steps([["gen"], ["score"], ["train"]], [["gen"], ["score"], ["train"]])),
    (PPO, 2, 1, steps(PPO_STEP, PPO_STEP)),
    (PPO, 0, 1, []),
    (EVAL, 2, 1, steps([["gen"], ["eval"], ["train"]], [["gen"], ["eval"], ["train"]])),
    # Without a trained role the next step's generate overlaps this step's scoring.
    (FROZEN, 3, 1, steps([["gen"], ["score"]], [["gen"], ["score"]], [["gen"], ["score"]])),
    (FROZEN, 3, 2, [[(0, "gen")], [(0, "score"), (1, "gen")], [(1, "score"), (2, "gen")], [(2, "score")]]),
    (FROZEN, 3, 3, [[(0, "gen")], [(0, "score"), (1, "gen")], [(1, "score"), (2, "gen")], [(2, "score")]]),
])
def test_lockstep_batches(mfcs, n_steps, window, expected):
    assert lockstep(mfcs, n_steps, window) == expected


# Scripts: (action, step, mfc) then the READY list expected after it.
PPO_PIPELINED = [
    (None, None, None, [(0, "actor_gen")]),
    ("start", 0, "actor_gen", []),
    ("done", 0, "actor_gen", [(0, "rew_inf"), (0, "ref_inf"), (0, "critic_inf")]),
    ("start", 0, "rew_inf", [(0, "ref_inf"), (0, "critic_inf")]),
    ("start", 0, "ref_inf", [(0, "critic_inf")]),
    ("start", 0, "critic_inf", []),
    ("done", 0, "critic_inf", []),
    ("done", 0, "ref_inf", []),
    ("done", 0, "rew_inf", [(0, "actor_train"), (0, "critic_train")]),
    ("start", 0, "critic_train", [(0, "actor_train")]),
    ("start", 0, "actor_train", []),
    # Version rule: actor_gen of step 1 needs actor_train of step 0, not critic_train.
    ("done", 0, "actor_train", [(1, "actor_gen")]),
    ("start", 1, "actor_gen", []),
    ("done", 1, "actor_gen", [(1, "rew_inf"), (1, "ref_inf")]),  # critic_inf waits for critic_train
    ("start", 1, "rew_inf", [(1, "ref_inf")]),
    ("done", 0, "critic_train", [(1, "ref_inf"), (1, "critic_inf")]),  # step 0 finished
]
EVAL_VERSIONS = [
    (None, None, None, [(0, "gen")]),
    ("start", 0, "gen", []),
    ("done", 0, "gen", [(0, "eval")]),  # train's data is there, but eval must see version 0 first
    ("start", 0, "eval", []),
    ("done", 0, "eval", [(0, "train")]),
    ("start", 0, "train", []),
    ("done", 0, "train", [(1, "gen")]),
]


@pytest.mark.parametrize("mfcs,window,script", [(PPO, 3, PPO_PIPELINED), (EVAL, 3, EVAL_VERSIONS)])
def test_scripted_transitions(mfcs, window, script):
    sched = Scheduler(build_graph(mfcs), n_steps=4, max_steps_in_flight=window)
    for action, step, name, ready in script:
        if action is not None:
            getattr(sched, action)(step, name)
        assert [tuple(t) for t in sched.get_ready()] == ready, (action, step, name)


@pytest.mark.parametrize("n_steps", [10, None])
def test_stop_early_finishes_the_steps_begun_and_starts_no_more(n_steps):
    sched = Scheduler(build_graph(FROZEN), n_steps=n_steps, max_steps_in_flight=2)
    for step, name in ((0, "gen"), (0, "score"), (1, "gen")):
        sched.start(step, name)
        sched.done(step, name)
    assert sched.get_ready() == [Task(1, "score"), Task(2, "gen")]  # step 1 begun, step 2 open
    sched.stop_early()
    assert sched.n_steps == 2 and sched.open_steps() == range(1, 2)
    assert sched.get_ready() == [Task(1, "score")] and sched.is_active()
    sched.start(1, "score")
    assert sched.done(1, "score")
    assert not sched.is_active() and sched.completed_steps == 2


def test_stop_early_between_steps_ends_the_run_at_once():
    sched = Scheduler(build_graph(SFT), n_steps=5)
    sched.start(0, "train")
    sched.done(0, "train")
    sched.stop_early()
    assert not sched.is_active() and sched.get_ready() == []


def test_done_reports_the_end_of_a_step_and_states():
    sched = Scheduler(build_graph(CHAIN), n_steps=2)
    assert sched.state(0, "gen") is TaskState.READY and sched.state(0, "train") is TaskState.BLOCKED
    assert sched.state(1, "gen") is TaskState.BLOCKED  # step 1 is not open yet
    finished = []
    for name in ("gen", "score", "train"):
        sched.start(0, name)
        assert sched.state(0, name) is TaskState.RUNNING and sched.running() == [Task(0, name)]
        finished.append(sched.done(0, name))
    assert finished == [False, False, True]
    assert sched.completed_steps == 1 and sched.state(0, "gen") is TaskState.DONE
    assert sched.open_steps() == range(1, 2) and sched.is_active()


def test_unbounded_run_stays_active():
    sched = Scheduler(build_graph(SFT), None, max_steps_in_flight=2)
    for step in range(5):
        assert sched.get_ready() == [Task(step, "train")]
        sched.start(step, "train")
        assert sched.done(step, "train")
    assert sched.is_active() and sched.completed_steps == 5 and sched.n_steps is None


def _sched_at(mfcs=CHAIN, **kw):
    sched = Scheduler(build_graph(mfcs), n_steps=2, **kw)
    sched.start(0, "gen")
    return sched


@pytest.mark.parametrize("call,message", [
    (lambda s: s.start(0, "nope"), "no MFC named 'nope'; MFCs: gen, score, train"),
    (lambda s: s.start(2, "gen"), "MFC 'gen': step 2 is not in range(0, 2)"),
    (lambda s: s.start(-1, "gen"), "MFC 'gen': step -1 is not in range(0, 2)"),
    (lambda s: s.start(0, "gen"), "cannot start MFC 'gen' of step 0: it is already running"),
    (lambda s: s.start(0, "train"), "cannot start MFC 'train' of step 0: it waits for 'gen' of step 0, "
                                    "'score' of step 0"),
    (lambda s: s.start(1, "gen"), "cannot start MFC 'gen' of step 1: step 1 is not open "
                                  "(completed_steps=0, max_steps_in_flight=1)"),
    (lambda s: s.done(0, "score"), "cannot mark MFC 'score' of step 0 done: it was never started "
                                   "(it is blocked)"),
    (lambda s: (s.done(0, "gen"), s.done(0, "gen")), "cannot mark MFC 'gen' of step 0 done: it is already done"),
    (lambda s: (s.done(0, "gen"), s.start(0, "gen")), "cannot start MFC 'gen' of step 0: it is already done"),
    (lambda s: Scheduler(build_graph(EVAL), None).start(0, "train"),
     "cannot start MFC 'train' of step 0: it waits for 'gen' of step 0, 'eval' of step 0"),  # listed once each
    (lambda s: Scheduler(build_graph(SFT), None).start(-1, "train"), "MFC 'train': step -1 is not an int >= 0"),
])
def test_misuse_errors(call, message):
    with pytest.raises(SchedulerError, match=re.escape(message)):
        call(_sched_at())


@pytest.mark.parametrize("kw,message", [
    (dict(n_steps=-1), "n_steps must be an int >= 0 or None, got -1"),
    (dict(n_steps=1.5), "n_steps must be an int >= 0 or None, got 1.5"),
    (dict(n_steps=1, max_steps_in_flight=0), "max_steps_in_flight must be an int >= 1, got 0"),
])
def test_constructor_errors(kw, message):
    with pytest.raises(SchedulerError, match=re.escape(message)):
        Scheduler(build_graph(SFT), **kw)


# ----------------------------------------------------------------------------- checkpointing


def test_state_dict_format_and_running_tasks_become_ready():
    sched = Scheduler(build_graph(PPO), n_steps=3, max_steps_in_flight=2)
    for name in ("actor_gen", "rew_inf", "ref_inf", "critic_inf", "actor_train"):
        sched.start(0, name)
        sched.done(0, name)
    sched.start(1, "actor_gen")
    sched.start(0, "critic_train")
    state = sched.state_dict()
    assert state == {"format": 1, "mfcs": [m.name for m in PPO], "completed_steps": 0,
                     "done": [[0, ["actor_gen", "rew_inf", "ref_inf", "critic_inf", "actor_train"]]]}
    resumed = Scheduler(build_graph(PPO), n_steps=5, max_steps_in_flight=2)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert resumed.get_ready() == [Task(0, "critic_train"), Task(1, "actor_gen")]
    assert resumed.running() == []


def _random_run(sched: Scheduler, rng, stop_after: int | None = None) -> list[tuple]:
    """Drive `sched` with random choices; the log of transitions."""
    log = []
    while sched.is_active() and (stop_after is None or len(log) < stop_after):
        ready, running = sched.get_ready(), sched.running()
        assert ready or running, "deadlock"
        if ready and (not running or rng.random() < 0.5):
            task = ready[rng.randrange(len(ready))]
            sched.start(*task)
            log.append(("start", *task))
        else:
            task = running[rng.randrange(len(running))]
            sched.done(*task)
            log.append(("done", *task))
    return log


@pytest.mark.parametrize("seed", range(8))
def test_state_dict_round_trip_mid_run(seed):
    import random

    rng = random.Random(seed)
    graph = build_graph(PPO)
    original = Scheduler(graph, n_steps=4, max_steps_in_flight=1 + seed % 3)
    _random_run(original, rng, stop_after=rng.randrange(5, 40))
    twin = Scheduler(graph, n_steps=4, max_steps_in_flight=1 + seed % 3)
    twin.load_state_dict(original.state_dict())
    assert twin.state_dict() == original.state_dict()
    # The twin has the same progress; the original's running tasks are ready in the twin.
    assert set(twin.get_ready()) == set(original.get_ready()) | set(original.running())
    for task in original.running():  # finish what was in flight on the original, start+finish on the twin
        original.done(*task)
        twin.start(*task)
        twin.done(*task)
    assert twin.state_dict() == original.state_dict()
    rest = random.Random(seed + 100)
    assert _random_run(twin, random.Random(seed + 100)) == _random_run(original, rest)
    assert not twin.is_active() and twin.completed_steps == 4


def test_load_state_dict_errors():
    sched = Scheduler(build_graph(CHAIN), n_steps=2)
    with pytest.raises(SchedulerError, match=re.escape("not a scheduler state (format 1)")):
        sched.load_state_dict({"format": 99})
    good = {"format": 1, "mfcs": ["gen", "score", "train"], "completed_steps": 0, "done": []}
    with pytest.raises(GraphError, match=re.escape("scheduler state belongs to another graph: MFCs only in the "
                                                   "state: ['old']; only in this graph: ['train']")):
        sched.load_state_dict({**good, "mfcs": ["gen", "score", "old"]})
    with pytest.raises(SchedulerError, match=re.escape("scheduler state has completed_steps=3; need an int in 0..n_steps=2")):
        sched.load_state_dict({**good, "completed_steps": 3})
    with pytest.raises(SchedulerError, match=re.escape("scheduler state lists step 0 (completed_steps=1)")):
        sched.load_state_dict({**good, "completed_steps": 1, "done": [[0, ["gen"]]]})
    with pytest.raises(SchedulerError, match=re.escape("scheduler state marks MFC 'train' of step 0 done before "
                                                       "its dependencies: 'gen' of step 0, 'score' of step 0")):
        sched.load_state_dict({**good, "done": [[0, ["train"]]]})
    with pytest.raises(SchedulerError, match=re.escape("scheduler state lists unknown MFCs ['old'] at step 0")):
        sched.load_state_dict({**good, "done": [[0, ["gen", "old"]]]})
    assert sched.state_dict() == good  # a failed load leaves the scheduler as it was
    sched.load_state_dict({**good, "done": [[0, ["gen", "score", "train"]], [1, ["gen"]]]})  # normalised
    assert sched.state_dict() == {**good, "completed_steps": 1, "done": [[1, ["gen"]]]}


# ----------------------------------------------------------------------------- property: random graphs


@st.composite
def random_graph(draw):
    n = draw(st.integers(1, 6))
    roles = ["a", "b", "c"]
    trained: set[str] = set()
    produced: list[str] = []
    mfcs = []
    for i in range(n):
        role = draw(st.sampled_from(roles))
        kind = draw(st.sampled_from([GEN, INF, TRAIN] if role not in trained else [GEN, INF]))
        inputs = tuple(k for k in produced if draw(st.booleans())) or ("data",)
        outputs = () if kind is TRAIN else (f"k{i}",)
        if kind is TRAIN:
            trained.add(role)
        produced += outputs
        mfcs.append(mfc(f"m{i}", f"{role}@{draw(st.integers(0, 1))}", kind, inputs, outputs))
    return build_graph(mfcs)


@settings(max_examples=60, deadline=None)
@given(graph=random_graph(), window=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_random_runs_respect_every_rule(graph, window, seed):
    import random

    n_steps = 3
    log = _random_run(Scheduler(graph, n_steps, max_steps_in_flight=window), random.Random(seed))
    started = [(s, m) for a, s, m in log if a == "start"]
    finished_at = {(s, m): i for i, (a, s, m) in enumerate(log) if a == "done"}
    started_at = {(s, m): i for i, (a, s, m) in enumerate(log) if a == "start"}
    assert sorted(started) == sorted((s, m) for s in range(n_steps) for m in graph.nodes)  # each once
    for (step, name), at in started_at.items():
        for dep in dependencies(graph)[name]:
            if step - dep.lag >= 0:
                assert finished_at[(step - dep.lag, dep.before)] < at, (step, name, dep)
    # The version rule restated on roles: a role's train of step t sits between its other calls.
    for train in (n for n in graph.nodes if graph.nodes[n]["mfc"].kind is TRAIN):
        role = graph.nodes[train]["mfc"].role
        for other in (n for n in graph.nodes if n != train and graph.nodes[n]["mfc"].role == role):
            for step in range(n_steps):
                assert finished_at[(step, other)] < started_at[(step, train)]
                if step + 1 < n_steps:
                    assert finished_at[(step, train)] < started_at[(step + 1, other)]
    # At most `window` steps ever have tasks in flight at once.
    for i in range(len(log)):
        live = {s for (s, m), at in started_at.items() if at <= i and finished_at[(s, m)] > i}
        if live:
            assert max(live) - min(live) < window
