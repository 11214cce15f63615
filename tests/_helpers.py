"""Small helpers shared by several test modules (imported as `from _helpers import ...`)."""

import os
import signal


class SignalAtBatch:
    """A loop observer that sends this process ``signum`` at the n-th group (mid-iteration),
    as SLURM (SIGTERM/SIGUSR1) or a user (SIGINT) would."""

    def __init__(self, n, signum=signal.SIGTERM):
        self.n, self.signum, self.seen = n, signum, 0

    def on_batch_end(self, *args):
        self.seen += 1
        if self.seen == self.n:
            os.kill(os.getpid(), self.signum)
