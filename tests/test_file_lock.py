"""Runs that need the same teacher or dataset at once: one makes it, the others wait."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from crossdistill.data.generators.written_once import write_once
from crossdistill.utils import teacher_store
from crossdistill.utils.file_lock import exclusive_lock


def test_a_second_holder_waits_until_the_first_releases(tmp_path: Path):
    order: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def first() -> None:
        with exclusive_lock(tmp_path / "teacher", "a teacher"):
            inside.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        with exclusive_lock(tmp_path / "teacher", "a teacher"):
            order.append("second in")

    one = threading.Thread(target=first)
    one.start()
    assert inside.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.5)
    assert order == [] and two.is_alive()  # blocked while the first holds the lock
    release.set()
    one.join(10)
    two.join(10)
    assert order == ["first out", "second in"]


def test_other_paths_do_not_wait(tmp_path: Path):
    entered = threading.Event()

    def other() -> None:
        with exclusive_lock(tmp_path / "b", "b"):
            entered.set()

    with exclusive_lock(tmp_path / "a", "a"):
        threading.Thread(target=other).start()
        assert entered.wait(10)


def test_ddp_ranks_above_zero_skip_the_teacher_lock(tmp_path: Path, monkeypatch):
    entry = tmp_path / "key"
    monkeypatch.setenv("LOCAL_RANK", "1")
    with exclusive_lock(entry, "rank 0's teacher"), teacher_store.training_lock(entry):
        pass  # rank 0 holds it; rank 1 must not wait for it (DDP would deadlock)
    monkeypatch.setenv("LOCAL_RANK", "0")
    held = threading.Event()
    with exclusive_lock(entry, "another run's teacher"):
        worker = threading.Thread(target=lambda: (teacher_store.training_lock(entry).__enter__(),
                                                  held.set()))
        worker.daemon = True
        worker.start()
        assert not held.wait(0.5)  # rank 0 of another run waits
    assert held.wait(10)


def test_concurrent_requests_for_one_dataset_generate_it_once(tmp_path: Path):
    calls: list[int] = []

    def write(folder: Path) -> dict:
        calls.append(1)
        time.sleep(0.3)  # long enough for every thread to ask meanwhile
        (folder / "x.txt").write_text("data")
        return {"n": 1}

    threads = [threading.Thread(target=write_once, args=(tmp_path / "set", {"v": 1}, write, "set"))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1 and (tmp_path / "set" / "x.txt").read_text() == "data"
