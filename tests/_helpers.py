"""Small helpers shared by several test modules (imported as `from _helpers import ...`)."""

import os
import signal


class SigtermAtBatch:
    """A loop observer that sends this process SIGTERM at the n-th group, like SLURM would."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def on_batch_end(self, *args):
        self.seen += 1
        if self.seen == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
