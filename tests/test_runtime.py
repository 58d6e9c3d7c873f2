import pytest
import torch

from didr.errors import ConfigError
from didr.runtime import dtype_named, is_main_process, machine, process_pool, resolve_device


def test_machine_names_the_host_torch_and_threads():
    line = machine()
    assert torch.__version__ in line and "CPUs" in line and "GiB RAM" in line and "torch thread" in line


def test_dtypes_by_name_and_devices():
    assert dtype_named("bfloat16", "backbone.dtype") is torch.bfloat16
    with pytest.raises(ConfigError, match="backbone.dtype"):
        dtype_named("fp8", "backbone.dtype")
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda")


def test_main_process_follows_the_launchers_rank(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()


def test_a_process_pool_spawns_workers():
    with process_pool(1) as pool:
        assert pool.submit(abs, -3).result() == 3
