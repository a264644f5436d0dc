"""A torch.compile backend for tests: AOTAutograd's forward and backward graphs, run as
they are (no code generation: seconds to compile on 2 cores) and kept for inspection."""
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd


class Recorder:
    """A torch.compile backend: AOTAutograd's graphs, run as they are, and kept."""

    def __init__(self):
        self.forward, self.backward = [], []

        def keep(graphs):
            def compiler(gm, example_inputs):
                graphs.append(gm)
                return make_boxed_func(gm.forward)
            return compiler

        self.backend = aot_autograd(fw_compiler=keep(self.forward), bw_compiler=keep(self.backward))

    def conv_backward_masks(self) -> list[tuple[bool, bool, bool]]:
        """output_mask (input, weight, bias) of each convolution_backward in the backward graphs."""
        return [tuple(n.args[-1]) for gm in self.backward for n in gm.graph.nodes
                if n.op == "call_function" and "convolution_backward" in str(n.target)]
