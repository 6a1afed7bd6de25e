"""A stand-in for PyTorch, for ferry's Dynamo interop test only.

Dynamo 1.6.1's `dynamo.nixl_connect` does `import torch` at load time and later only asks
`isinstance(data, torch.Tensor)`; the `nixl` meta package reads `torch.version.cuda` to pick a
CUDA build (None: no CUDA, so it uses the installed `nixl_cu12`). The test moves bytes and numpy
buffers on the CPU, so nothing else of torch is touched, and installing the real one (gigabytes
of CUDA wheels) would prove nothing more. Any other use fails loudly.
"""


class Tensor:
    """Never instantiated: no test buffer is a tensor."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("the torch stand-in has no tensors")


class _Version:
    cuda = None


version = _Version()


def __getattr__(name):
    raise AttributeError(f"the torch stand-in for ferry's Dynamo interop test has no {name!r}")
