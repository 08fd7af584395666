"""The CPU settings train.py applies: threads shared among local processes, and glibc's allocator."""

from __future__ import annotations

import os
import platform

import torch

from mnist_sum.distributed.cpu import keep_freed_memory, set_threads


def test_threads_are_the_cores_shared_by_local_processes(monkeypatch):
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        set_threads()
        assert torch.get_num_threads() == cores
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 2))  # more processes than cores: still one thread each
        set_threads()
        assert torch.get_num_threads() == 1
        set_threads(3)  # an explicit train.cpu_threads wins
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_allocator_setting_applies_on_glibc():
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
