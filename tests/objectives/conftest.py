import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run many small tensor ops; on a shared 2-core machine torch's second intra-op
    thread makes them tens of times slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
