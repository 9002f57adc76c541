"""Name resolution: both backends behave alike; the file backend works across processes."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from realflow.api.errors import ConfigError, DeadlineError
from realflow.system import names
from realflow.system.name_resolve import (
    FileNameResolver,
    MemoryNameResolver,
    NameExistsError,
    NameResolveConfig,
    NameResolver,
    make_name_resolver,
)


@pytest.fixture(params=["memory", "file"])
def resolver(request, tmp_path: Path) -> NameResolver:
    return MemoryNameResolver() if request.param == "memory" else FileNameResolver(tmp_path / "nr")


def test_add_get_replace(resolver: NameResolver) -> None:
    resolver.add("a/b", "1")
    assert resolver.get("a/b") == "1"
    with pytest.raises(NameExistsError, match="name 'a/b' is already published"):
        resolver.add("a/b", "2")
    resolver.add("a/b", "2", replace=True)
    assert resolver.get("a/b") == "2"


def test_get_times_out_naming_key_and_seconds(resolver: NameResolver) -> None:
    t0 = time.monotonic()
    with pytest.raises(DeadlineError, match=r"name 'x/y' was not published within \d+\.\d\d s \(timeout 0\.1 s"):
        resolver.get("x/y", timeout=0.1)
    assert 0.1 <= time.monotonic() - t0 < 2.0
    with pytest.raises(DeadlineError, match="x/y"):
        resolver.wait("x/y", timeout=0)


def test_wait_sees_a_key_added_later(resolver: NameResolver) -> None:
    threading.Timer(0.05, resolver.add, args=("late/key", "v")).start()
    assert resolver.get("late/key", timeout=5) == "v"
    resolver.wait("late/key", timeout=0)


def test_ttl_expires_and_frees_the_key(resolver: NameResolver) -> None:
    resolver.add("t/k", "old", ttl=0.3)
    assert resolver.get("t/k") == "old"
    time.sleep(0.4)
    with pytest.raises(DeadlineError):
        resolver.get("t/k")
    assert resolver.get_subtree("t") == {}
    resolver.add("t/k", "new")  # an expired entry does not block add
    assert resolver.get("t/k") == "new"
    with pytest.raises(ConfigError, match="ttl must be > 0"):
        resolver.add("t/z", "v", ttl=0)


def test_subtree_delete_clear(resolver: NameResolver) -> None:
    for key, value in [("p/a", "1"), ("p/b/c", "2"), ("p/b", "3"), ("pq", "4"), ("q/a", "5")]:
        resolver.add(key, value)
    assert resolver.get_subtree("p") == {"p/a": "1", "p/b": "3", "p/b/c": "2"}
    assert resolver.get_subtree("p/b/c") == {"p/b/c": "2"}
    assert resolver.delete("p/a") is True
    assert resolver.delete("p/a") is False
    assert resolver.clear_subtree("p") == 2
    assert resolver.clear_subtree("p") == 0
    assert resolver.get_subtree("p") == {}
    assert resolver.get("pq") == "4" and resolver.get("q/a") == "5"


def test_reset_clears_only_that_trial(resolver: NameResolver) -> None:
    resolver.add(names.worker("exp", "t1", 0), "stale")
    resolver.add(names.worker("exp", "t1", 1), "stale")
    resolver.add(names.worker("exp", "t2", 0), "other trial")
    assert resolver.reset("exp", "t1") == 2
    assert resolver.get_subtree(names.workers("exp", "t1")) == {}
    assert resolver.get(names.worker("exp", "t2", 0)) == "other trial"


@pytest.mark.parametrize("bad", ["", "a//b", "../x", "a/.hidden", "a b", "/abs"])
def test_bad_keys_are_rejected(resolver: NameResolver, bad: str) -> None:
    with pytest.raises(ConfigError):
        resolver.add(bad, "v")


def test_name_helpers_validate() -> None:
    assert names.worker("ppo", "trial-1", 3) == "realflow/ppo/trial-1/worker/3"
    assert names.distributed_init("ppo", "t").endswith("/distributed_init")
    with pytest.raises(ConfigError, match="experiment name 'a/b'"):
        names.worker("a/b", "t", 0)
    with pytest.raises(ConfigError, match="worker index"):
        names.worker("e", "t", -1)


def test_values_must_be_strings(resolver: NameResolver) -> None:
    with pytest.raises(ConfigError, match="values are strings"):
        resolver.add("k", 3)  # type: ignore[arg-type]


def test_memory_resolver_is_thread_safe() -> None:
    r = MemoryNameResolver()
    wins = []

    def claim(i: int) -> None:
        try:
            r.add("lock", str(i))
            wins.append(i)
        except NameExistsError:
            pass

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(wins) == 1 and r.get("lock") == str(wins[0])


_CHILD = """
import sys
from realflow.system.name_resolve import FileNameResolver, NameExistsError
r = FileNameResolver(sys.argv[1])
r.add("x/from_child", r.get("x/from_parent", timeout=10))
try:
    r.add("x/claimed", "child")
except NameExistsError:
    pass
"""


def test_file_resolver_across_processes(tmp_path: Path) -> None:
    root = tmp_path / "nr"
    r = FileNameResolver(root)
    r.add("x/claimed", "parent")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(root)])
    try:
        r.add("x/from_parent", "hello")
        assert r.get("x/from_child", timeout=20) == "hello"
        assert child.wait(timeout=20) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    assert r.get("x/claimed") == "parent"
    assert (root.stat().st_mode & 0o777) == 0o700


def test_file_resolver_leaves_no_temporary_files(tmp_path: Path) -> None:
    r = FileNameResolver(tmp_path)
    r.add("a/b", "1")
    r.add("a/b", "2", replace=True)
    with pytest.raises(NameExistsError):
        r.add("a/b", "3")
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == [".value"]


def test_make_name_resolver(tmp_path: Path) -> None:
    assert isinstance(make_name_resolver(NameResolveConfig("memory")), MemoryNameResolver)
    fr = make_name_resolver(NameResolveConfig("file", str(tmp_path / "r")))
    assert isinstance(fr, FileNameResolver) and fr.root == tmp_path / "r"
    with pytest.raises(ConfigError, match="not available yet"):
        make_name_resolver(NameResolveConfig("ray"))
    with pytest.raises(ConfigError, match="unknown name_resolve.backend 'etcd'"):
        make_name_resolver(NameResolveConfig("etcd"))


def test_file_resolver_refuses_a_root_owned_by_someone_else(tmp_path: Path) -> None:
    if os.getuid() == 0:  # root can hand a directory to another user
        os.chown(tmp_path, 65534, -1)
        root, owner = tmp_path, 65534
    else:
        root, owner = Path("/"), 0
    with pytest.raises(ConfigError, match=f"belongs to uid {owner}, not to this user"):
        FileNameResolver(root)
