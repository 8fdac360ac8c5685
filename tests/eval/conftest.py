"""One intra-op thread per test: the 2-core dev box is shared, and OpenMP spin-waiting under
contention makes two threads many times slower than one."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
