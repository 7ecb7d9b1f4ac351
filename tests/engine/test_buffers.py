"""buffers.keep_cuda_pool: every device's default pool keeps what is freed into it."""

from __future__ import annotations

import ctypes

from mlxd.engine import buffers


class FakeDriver:
    """libcuda's calls keep_cuda_pool makes, with two devices; ``fail`` names one that errs."""

    def __init__(self, fail: str = "") -> None:
        self.fail, self.thresholds = fail, {}

    def __getattr__(self, name):
        def call(*args):
            if name == self.fail:
                return 1
            if name == "cuDeviceGetCount":
                args[0]._obj.value = 2
            elif name == "cuDeviceGet":
                args[0]._obj.value = args[1] + 10
            elif name == "cuDeviceGetDefaultMemPool":
                args[0]._obj.value = 1000 + args[1].value
            elif name == "cuMemPoolSetAttribute":
                self.thresholds[(args[0].value, args[1])] = args[2]._obj.value
            return 0

        return call


def test_each_device_pool_keeps_all(monkeypatch):
    driver = FakeDriver()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: driver)
    assert buffers.keep_cuda_pool() == 2
    threshold = buffers.CU_MEMPOOL_ATTR_RELEASE_THRESHOLD
    assert driver.thresholds == {(1010, threshold): 2**64 - 1, (1011, threshold): 2**64 - 1}


def test_no_driver_or_a_failing_call_keeps_nothing(monkeypatch):
    def missing(name):
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert buffers.keep_cuda_pool() == 0
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeDriver(fail="cuInit"))
    assert buffers.keep_cuda_pool() == 0
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeDriver(fail="cuMemPoolSetAttribute"))
    assert buffers.keep_cuda_pool() == 0
